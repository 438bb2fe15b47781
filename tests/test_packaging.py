"""Packaging: the install extras give one consistent set of libraries per CUDA major, and never both
ONNX Runtime builds (onnxruntime and onnxruntime-gpu install the same import name).

The static tests read pyproject.toml. The resolution tests ask pip to resolve each GPU extra against
the package index without installing anything (`pip install --dry-run --report`, wheel metadata
only) and check the resolved set: every CUDA library of the extra's major, none of the other, the
`cuda.bindings` package present, onnxruntime-gpu without onnxruntime. TensorRT's `-libs` packages
are placeholders that download from NVIDIA's own index when built, which is unreachable here, so
TensorRT is resolved one level deep: the meta package's pins, and the bindings wheel they name.
"""

import json
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
GPU_EXTRAS = {"gpu-cu12": 12, "gpu-cu13": 13}
ORT_NAMES = ("onnxruntime", "onnxruntime-gpu")


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def requirements(extras=(), base: bool = True) -> list:
    """The Requirements `pip install ".[extras]"` asks for: the base list and the extras, self-references expanded."""
    metadata = project()
    found, pending, seen = [], list(extras), set()
    if base:
        found += [Requirement(text) for text in metadata["dependencies"]]
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in metadata["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if normalised(requirement.name) == metadata["name"]:
                pending += sorted(requirement.extras)
            else:
                found.append(requirement)
    return found


def names(found) -> set:
    return {normalised(requirement.name) for requirement in found}


def by_name(found, name: str) -> Requirement:
    return next(requirement for requirement in found if normalised(requirement.name) == name)


# ---------------------------------------------------------------------------------------------
# pyproject.toml


def test_base_dependencies_name_no_onnxruntime_build():
    """A base dependency cannot be withdrawn by an extra: ONNX Runtime must come with the extras."""
    assert not names(requirements()) & set(ORT_NAMES)


@pytest.mark.parametrize("extras, expected", [
    (("cpu",), {"onnxruntime"}),
    (("test",), {"onnxruntime"}),
    (("gpu-cu12",), {"onnxruntime-gpu"}),
    (("gpu-cu13",), {"onnxruntime-gpu"}),
    (("test-tools", "gpu-cu12"), {"onnxruntime-gpu"}),
    (("export", "gpu-cu13"), {"onnxruntime-gpu"}),
    (("export",), set()),
    (("check",), set()),
    (("capi",), set()),
])
def test_each_install_command_gets_exactly_one_onnxruntime_build(extras, expected):
    assert names(requirements(extras)) & set(ORT_NAMES) == expected


def test_readme_install_commands_get_onnxruntime():
    """Every `pip install ".[...]"` in the README brings one ONNX Runtime build (the quick start included)."""
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r'pip install "(?:\.|bodyrt)\[([a-z0-9,-]+)\]"', readme)
    assert commands, "the README has no pip install command"
    for extras in commands:
        found = names(requirements(extras.split(","))) & set(ORT_NAMES)
        assert len(found) == 1, f'pip install ".[{extras}]" brings {sorted(found) or "no ONNX Runtime"}'


@pytest.mark.parametrize("extra, major", GPU_EXTRAS.items())
def test_gpu_extra_pins_admit_only_its_cuda_major(extra, major):
    found = requirements([extra], base=False)
    cuda_python = by_name(found, "cuda-python").specifier
    # 12.6.x wheels are monolithic, without the cuda.bindings package; 12.8 is built on cuda-bindings
    assert not cuda_python.contains("12.6.0") and not cuda_python.contains("12.6.2.post1")
    assert all(Version(v).major == major for v in ["12.8.0", "12.9.4", "13.0.0", "13.4.4"] if cuda_python.contains(v))
    assert cuda_python.contains(f"{major}.9.0" if major == 12 else "13.4.4")
    nvrtc = by_name(found, "nvidia-cuda-nvrtc-cu12" if major == 12 else "nvidia-cuda-nvrtc")
    assert not nvrtc.specifier.contains(f"{25 - major}.0.0")  # the other major's release numbers
    tensorrt = [requirement for requirement in found if normalised(requirement.name).startswith("tensorrt")]
    assert [normalised(requirement.name) for requirement in tensorrt] == [f"tensorrt-cu{major}"]
    assert tensorrt[0].specifier.contains("10.13.3.9") and tensorrt[0].specifier.contains("11.4.0.106")
    ort = by_name(found, "onnxruntime-gpu")
    assert ort.extras == {"cuda", "cudnn"}
    # onnxruntime-gpu on PyPI: 1.21 - 1.26 are CUDA 12 builds, 1.27 on CUDA 13 (checked by the resolution below)
    admitted = {version for version in ["1.21.0", "1.26.0", "1.27.0", "1.31.1"] if ort.specifier.contains(version)}
    assert admitted == ({"1.21.0", "1.26.0"} if major == 12 else {"1.27.0", "1.31.1"})
    assert "polygraphy" in names(found)


# ---------------------------------------------------------------------------------------------
# resolution against the index


def pip_report(arguments, timeout=480) -> dict:
    """`pip install --dry-run --ignore-installed --report` of `arguments`: the report, or AssertionError with pip's words."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--disable-pip-version-check", "--report", "-", *arguments],
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise AssertionError(f"pip could not resolve {arguments}:\n" + "\n".join(errors[-20:]))
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def index_reachable():
    try:
        pip_report(["--no-deps", "--only-binary=:all:", "polygraphy==0.53.6"], timeout=120)
    except (AssertionError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"the package index is unreachable, so the extras cannot be resolved: {str(error)[-300:]}")


@pytest.fixture(scope="module")
def resolved(index_reachable) -> dict:
    """extra -> {"set": {name: Version}, "tensorrt": metadata of tensorrt-cuNN, "bindings": its bindings wheel}.

    Each extra is resolved with the base dependencies (all wheels) except TensorRT, whose
    meta package is resolved alone, without dependencies; the two extras in parallel.
    """
    def split(extra):
        found = requirements([extra])
        tensorrt = next(requirement for requirement in found if normalised(requirement.name).startswith("tensorrt"))
        return [str(requirement) for requirement in found if requirement is not tensorrt], str(tensorrt)

    def resolve_set(extra):
        report = pip_report(["--only-binary=:all:", *split(extra)[0]])
        return {normalised(item["metadata"]["name"]): Version(item["metadata"]["version"]) for item in report["install"]}

    def resolve_tensorrt(extra):
        metadata = pip_report(["--no-deps", split(extra)[1]])["install"][0]["metadata"]
        pins = [Requirement(text) for text in metadata.get("requires_dist", [])]
        bindings = next(pin for pin in pins if normalised(pin.name).endswith("-bindings"))
        bindings_report = pip_report(["--no-deps", "--only-binary=:all:", str(bindings)])
        return {"tensorrt": metadata, "tensorrt_pins": pins, "bindings": bindings_report["install"][0]["metadata"]}

    with ThreadPoolExecutor(2 * len(GPU_EXTRAS)) as pool:  # the index's latency, not the CPU, bounds this
        sets = {extra: pool.submit(resolve_set, extra) for extra in GPU_EXTRAS}
        tensorrt = {extra: pool.submit(resolve_tensorrt, extra) for extra in GPU_EXTRAS}
        return {extra: {"set": sets[extra].result(), **tensorrt[extra].result()} for extra in GPU_EXTRAS}


@pytest.mark.parametrize("extra, major", GPU_EXTRAS.items())
def test_gpu_extra_resolves_to_one_cuda_major(resolved, extra, major):
    found = resolved[extra]["set"]
    assert "onnxruntime-gpu" in found and "onnxruntime" not in found, sorted(found)
    assert found["cuda-bindings"].major == major and found["cuda-python"].major == major  # cuda.bindings is there
    nvidia = {name: version for name, version in found.items() if name.startswith("nvidia-")}
    assert {"nvidia-cuda-runtime", "nvidia-cudnn", "nvidia-cublas", "nvidia-cuda-nvrtc"} <= {
        re.sub(r"-cu\d+$", "", name) for name in nvidia}, sorted(nvidia)
    for name, version in nvidia.items():
        suffix = re.search(r"-cu(\d+)$", name)
        if major == 12:  # the CUDA 12 line is published with a -cu12 suffix only
            assert suffix and suffix.group(1) == "12", f"{extra} resolves to {name} {version}"
        else:  # the CUDA 13 line: unsuffixed names, or -cu13 (cuDNN)
            assert not suffix or suffix.group(1) == "13", f"{extra} resolves to {name} {version}"
        if re.sub(r"-cu\d+$", "", name) in ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink"):
            assert version.major == major, f"{extra} resolves to {name} {version}"


@pytest.mark.parametrize("extra, major", GPU_EXTRAS.items())
def test_gpu_extra_tensorrt_pins_its_cuda_major(resolved, extra, major):
    tensorrt = resolved[extra]["tensorrt"]
    assert normalised(tensorrt["name"]) == f"tensorrt-cu{major}"
    assert Version(tensorrt["version"]).major in (10, 11)
    pins = {normalised(pin.name): pin for pin in resolved[extra]["tensorrt_pins"] if not pin.marker}
    assert set(pins) == {f"tensorrt-cu{major}-libs", f"tensorrt-cu{major}-bindings"}
    assert all(pin.specifier.contains(tensorrt["version"]) for pin in pins.values())
    assert resolved[extra]["bindings"]["version"] == tensorrt["version"]


# ---------------------------------------------------------------------------------------------
# what the runtime says about the installed packages


def fake_installed(monkeypatch, installed: dict):
    import importlib.metadata

    from bodyrt.runtime import packages

    def version(name):
        if name in installed:
            return installed[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packages.importlib.metadata, "version", version)


def test_both_onnxruntime_builds_installed_are_refused_with_the_fix(monkeypatch, tmp_path):
    from bodyrt.errors import BackendUnavailableError
    from bodyrt.runtime.backends import OnnxRuntimeRunner

    fake_installed(monkeypatch, {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    with pytest.raises(BackendUnavailableError, match="both onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1.*"
                                                      "pip uninstall -y onnxruntime onnxruntime-gpu"):
        OnnxRuntimeRunner(tmp_path / "stage.onnx").activate()


def test_missing_onnxruntime_names_the_extras(monkeypatch, tmp_path):
    from bodyrt.errors import BackendUnavailableError
    from bodyrt.runtime.backends import OnnxRuntimeRunner

    fake_installed(monkeypatch, {})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(BackendUnavailableError, match=r'bodyrt\[cpu\].*bodyrt\[gpu-cu13\].*bodyrt\[gpu-cu12\]'):
        OnnxRuntimeRunner(tmp_path / "stage.onnx").activate()


@pytest.mark.parametrize("driver_version, extra", [(12000, "gpu-cu12"), (12090, "gpu-cu12"), (13000, "gpu-cu13"),
                                                   (13020, "gpu-cu13")])
def test_gpu_extra_follows_the_driver_cuda_major(driver_version, extra):
    from bodyrt.runtime.packages import gpu_extra, gpu_extra_hint

    assert gpu_extra(driver_version) == extra
    assert f"bodyrt[{extra}]" in gpu_extra_hint(driver_version)
    assert extra in project()["optional-dependencies"]
