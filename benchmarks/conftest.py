"""Benchmark fixtures. The demo artefacts live in the same session directory as the tests' ones,
so a run over tests/ and benchmarks/ builds the checkpoint and the bundle once.

Short mode (the default, and what CI runs): one person, 720p, a few rounds. Full mode:
BODYRT_BENCH_FULL=1 pytest benchmarks --benchmark-json=bench.json
"""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def run_outside_the_source_tree(tmp_path_factory):
    """Subprocesses start in a scratch directory: from the repository root, the top-level `bodyrt/`
    folder would shadow the installed package (which holds bodyrt.export, .runtime and .kernels)."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())
    yield
    os.chdir(previous)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "demo-artefacts"


@pytest.fixture(scope="session")
def demo_files(demo_dir):
    from bodyrt.export.demo import demo_inputs

    return demo_inputs(demo_dir)


@pytest.fixture(scope="session")
def bundle_dir(demo_dir, demo_files):
    from bodyrt.export.demo import demo_bundle

    return demo_bundle(demo_dir, threads=2)


@pytest.fixture(scope="session")
def candidates(demo_files, bundle_dir):
    """The PyTorch reference and every runtime backend this machine has, opened once."""
    import torch

    from bodyrt.bench import open_candidates
    from bodyrt.runtime.backends import available_backends

    torch.set_num_threads(2)
    return open_candidates(bundle_dir, available_backends(), demo_files, threads=2)


@pytest.fixture(scope="session")
def capi_build(tmp_path_factory):
    """kind -> a libbodyrt build directory ("native", "embedded"), shared with tests/ (same session
    base directory: see tests/conftest.py, build_capi_once, which this repeats)."""
    from pathlib import Path

    from bodyrt.cli import main

    def build(kind: str):
        out = Path(tmp_path_factory.getbasetemp()) / f"capi-{kind}"
        if not (out / ".complete").is_file():
            assert main(["build-capi", "--out", str(out), *(["--embedded"] if kind == "embedded" else [])]) == 0
            (out / ".complete").write_text("")
        return out

    return build
