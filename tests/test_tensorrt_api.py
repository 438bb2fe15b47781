"""API conformance without a GPU: every TensorRT and cuda-python name bodyrt uses exists in the real packages.

TensorRT cannot be imported here (its libnvinfer is not installable), but the string table of the
tensorrt.so in the tensorrt-cu13-bindings wheels (11.4, and 10.13 for the TensorRT 10 line) holds
every class, method, property and enum member name its pybind11 module registers, each as a
NUL-terminated C string. Names that only appear inside
docstrings (removed APIs such as BuilderFlag.FP16 or execute_async_v2 are still mentioned there) are
not NUL-terminated, so they do not count. cuda-python (cuda-bindings) imports without a driver: its
names are checked with getattr, and argument counts against each function's documented signature.
"""

import ast
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TENSORRT_WHEELS = {"11.4": "tensorrt-cu13-bindings==11.4.0.106", "10.13": "tensorrt-cu13-bindings==10.13.3.9"}
CUDA_BINDINGS_VERSIONS = ("12.9.4", "13.0.3")  # the last CUDA 12 line (older drivers) and CUDA 13
TENSORRT_SOURCES = ("export/tensorrt.py", "runtime/tensorrt_backend.py")
CUDA_SOURCES = ("runtime/device.py",)


def pip(*arguments, timeout=240):
    return subprocess.run([sys.executable, "-m", "pip", *arguments, "--disable-pip-version-check", "-q"],
                          capture_output=True, text=True, timeout=timeout)


def download_tensorrt_wheel(tmp_path_factory, version: str):
    """(tensorrt.so bytes, identifiers of the wheel's Python files); skipped when PyPI is unreachable."""
    directory = tmp_path_factory.mktemp(f"tensorrt-wheel-{version}")
    done = pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
               "--platform", "manylinux_2_28_x86_64", "-d", str(directory), TENSORRT_WHEELS[version])
    wheels = list(directory.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"could not download {TENSORRT_WHEELS[version]} (PyPI unreachable?): {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        library = next(name for name in wheel.namelist() if name.endswith("/tensorrt.so"))
        python_names = set()
        for name in wheel.namelist():
            if name.endswith(".py"):
                python_names |= python_identifiers(wheel.read(name).decode())
        return wheel.read(library), python_names


def python_identifiers(source: str) -> set:
    """Names a Python module defines or assigns (functions, classes, module variables, attributes set)."""
    names = set()
    with warnings.catch_warnings():  # the wheel's regular expressions trip invalid-escape warnings
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def registered_in_library(library: bytes, name: str) -> bool:
    """True when `name` is a NUL-terminated string of the library (possibly the merged tail of a longer one)."""
    return name.encode() + b"\0" in library


def _root(node):
    """The variable an expression hangs from: "trt", "config", "self.engine" ... or None."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return f"self.{node.attr}"
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _chain(node) -> list:
    """Attribute names from the root outwards: trt.Logger.WARNING -> ["Logger", "WARNING"]."""
    names = []
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                break
            names.append(node.attr)
        node = node.func if isinstance(node, ast.Call) else node.value
    return names[::-1]


def _assigned_name(target):
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
        return f"self.{target.attr}"
    return None


def names_used_on(source: str, roots: set) -> dict:
    """Attribute chains used on `roots` and on every variable assigned from them, by data flow.

    Local variables flow within their function, self.<attribute> across the module. Returns
    {variable: [chain, ...]}: a variable holding a TensorRT object (builder = trt.Builder(...)) makes
    builder.create_network(...) a use of create_network.
    """
    functions = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)]
    shared = {root for root in roots if root.startswith("self.")}
    local = {id(function): {root for root in roots if not root.startswith("self.")} for function in functions}
    changed = True
    while changed:  # variables assigned from derived expressions are derived (to a fixed point)
        changed = False
        for function in functions:
            derived = local[id(function)] | shared
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and _root(node.value) in derived:
                    for target in node.targets:
                        name = _assigned_name(target)
                        if name and name not in derived:
                            (shared if name.startswith("self.") else local[id(function)]).add(name)
                            derived.add(name)
                            changed = True
    uses = {}
    for function in functions:
        derived = local[id(function)] | shared
        for node in ast.walk(function):
            if isinstance(node, ast.Attribute) and _root(node) in derived:
                chain = _chain(node)
                if chain:
                    uses.setdefault(_root(node), []).append(chain)
    return uses


# Besides the module: the TensorRT objects Polygraphy's loaders hand back (export/tensorrt.py's
# `network` and builder `config`), on which bodyrt calls TensorRT itself.
TENSORRT_ROOTS = {"trt", "network", "config"}


def tensorrt_names_used() -> set:
    names = set()
    for path in TENSORRT_SOURCES:
        for chains in names_used_on((REPO / path).read_text(), TENSORRT_ROOTS).values():
            for chain in chains:
                names.update(chain)
    return names


def test_collector_sees_the_tensorrt_calls():
    """Guards against a vacuous conformance test: the collector must find the calls that matter."""
    used = tensorrt_names_used()
    # engine builds call TensorRT through Polygraphy (test_polygraphy_build.py); bodyrt sets the timing cache
    assert {"WORKSPACE", "num_inputs", "get_input", "create_timing_cache", "set_timing_cache", "deserialize_cuda_engine",
            "set_input_shape", "set_tensor_address", "execute_async_v3", "get_tensor_mode"} <= used
    assert not {"inputs", "outputs", "stage", "file"} & used  # bodyrt's own attributes are not collected


@pytest.fixture(scope="session", params=list(TENSORRT_WHEELS))
def tensorrt_wheel(request, tmp_path_factory):
    return request.param, download_tensorrt_wheel(tmp_path_factory, request.param)


def test_every_tensorrt_name_is_in_tensorrt_10_and_11(tensorrt_wheel):
    version, (library, python_names) = tensorrt_wheel
    used = tensorrt_names_used()
    missing = sorted(name for name in used if not registered_in_library(library, name) and name not in python_names)
    assert not missing, f"TensorRT {version} has no {missing}"


def test_removed_tensorrt_apis_are_absent(tmp_path_factory):
    """The check tells removed APIs apart from docstring mentions (these names all occur in docstrings)."""
    library, python_names = download_tensorrt_wheel(tmp_path_factory, "11.4")
    for removed in ["execute_async_v2", "build_engine", "max_workspace_size", "FP16", "EXPLICIT_BATCH",
                    "PREFER_PRECISION_CONSTRAINTS", "get_binding_index"]:
        assert not registered_in_library(library, removed) and removed not in python_names, removed
    assert not {"execute_async_v2", "build_engine", "max_workspace_size", "FP16"} & tensorrt_names_used()


def argument_count(arguments):
    """How many arguments a call passes; *launch.grid and *launch.block are 3 each, other stars unknown."""
    count = 0
    for argument in arguments:
        if not isinstance(argument, ast.Starred):
            count += 1
        elif isinstance(argument.value, ast.Attribute) and argument.value.attr in ("grid", "block"):
            count += 3
        else:
            return None
    return count


def cuda_names_used() -> dict:
    """{"attributes": [chain...], "calls": [(function, argument count or None)]} for runtime/device.py."""
    attributes, calls = [], []
    for path in CUDA_SOURCES:
        source = (REPO / path).read_text()
        tree = ast.parse(source)
        for root, chains in names_used_on(source, {"self.driver", "driver"}).items():
            if root in ("self.driver", "driver"):  # aliases are followed below, with their prefix
                attributes += chains
        for node in ast.walk(tree):  # CudaDevice.call("cuX", *args) names the driver function as a string
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call"
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                calls.append((node.args[0].value, argument_count(node.args[1:])))
        # `attribute = self.driver.CUdevice_attribute; attribute.CU_...` : follow that alias too
        for node in ast.walk(tree):
            is_alias = isinstance(node, ast.Assign) and isinstance(node.value, ast.Attribute)
            if is_alias and _root(node.value) == "self.driver":
                alias = _assigned_name(node.targets[0])
                for chains in names_used_on(source, {alias}).values():
                    attributes += [_chain(node.value) + chain for chain in chains]
    return {"attributes": sorted(set(map(tuple, attributes))), "calls": sorted(set(calls))}


CUDA_CHECK = textwrap.dedent("""
    import json, re, sys
    from cuda.bindings import driver
    import cuda.bindings
    wanted = json.loads(sys.argv[1])
    missing, arity = [], []
    for chain in wanted["attributes"]:
        value = driver
        for name in chain:
            if not hasattr(value, name):
                missing.append(".".join(chain))
                break
            value = getattr(value, name)
    for function, count in wanted["calls"]:
        if not hasattr(driver, function):
            missing.append(function)
            continue
        signature = (getattr(driver, function).__doc__ or "").splitlines()[0]
        parameters = [p for p in re.sub(r"^[^(]*\\(|\\)[^)]*$", "", signature).split(",") if p.strip()]
        if count is not None and count != len(parameters):
            arity.append(f"{function}: bodyrt passes {count}, the signature is {signature}")
    # without a driver, CudaDevice must say so as bodyrt's error, not crash
    from bodyrt.errors import BackendUnavailableError
    from bodyrt.runtime.device import CudaDevice
    try:
        CudaDevice(0)
        driverless = "no error"
    except BackendUnavailableError as error:
        driverless = str(error)
    print(json.dumps({"version": cuda.bindings.__version__, "missing": missing, "arity": arity,
                      "driverless": driverless}))
""")


@pytest.fixture(scope="session", params=CUDA_BINDINGS_VERSIONS)
def cuda_bindings(request, tmp_path_factory):
    """A directory with cuda-bindings==<version> installed (not into this environment)."""
    target = tmp_path_factory.mktemp(f"cuda-bindings-{request.param}")
    done = pip("install", "--only-binary=:all:", "--target", str(target), f"cuda-bindings=={request.param}")
    if done.returncode != 0:
        pytest.skip(f"could not install cuda-bindings=={request.param} (PyPI unreachable?): "
                    f"{done.stderr.strip()[-300:]}")
    return request.param, target


def test_every_cuda_python_name_exists(cuda_bindings):
    version, target = cuda_bindings
    wanted = cuda_names_used()
    assert ("cuLaunchKernel", 11) in wanted["calls"] and ("cuStreamWaitEvent", 3) in wanted["calls"]
    assert ("CUstreamCaptureMode", "CU_STREAM_CAPTURE_MODE_THREAD_LOCAL") in wanted["attributes"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CUDA_CHECK, json.dumps(wanted)], capture_output=True, text=True,
                          timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"] == version
    assert report["missing"] == [], f"cuda-bindings {version} has no {report['missing']}"
    assert report["arity"] == [], report["arity"]
    from bodyrt.kernels import gpu_available_reason

    if gpu_available_reason() is not None:
        assert "no usable CUDA driver" in report["driverless"], report
