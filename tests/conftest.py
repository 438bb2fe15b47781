"""Shared, session-scoped artefacts: synthetic body models, a checkpoint and a bundle, built once per run."""

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


def pytest_collection_modifyitems(config, items):
    from bodyrt.kernels import gpu_available_reason

    reason = gpu_available_reason()
    if reason is None:
        return
    skip_gpu = pytest.mark.skip(reason=f"needs a GPU: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def synthetic_smplx_path(tmp_path_factory):
    """A synthetic SMPLX_NEUTRAL.npz (v1.1 layout), seed 0."""
    from bodyrt.export.fixtures.body_models import write_smplx_model

    return write_smplx_model(tmp_path_factory.mktemp("smplx"), seed=0)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """One directory per session for the demo artefacts, shared with benchmarks/ when run together."""
    return tmp_path_factory.getbasetemp() / "demo-artefacts"


@pytest.fixture(scope="session")
def demo_files(demo_dir):
    """(checkpoint, body model): a seeded untrained checkpoint in the official layout and its SMPL-X file."""
    from bodyrt.export.demo import demo_inputs

    return demo_inputs(demo_dir)


@pytest.fixture(scope="session")
def reference_pipeline(demo_files):
    from bodyrt.export.reference import ReferencePipeline

    return ReferencePipeline(*demo_files, threads=2)


@pytest.fixture(scope="session")
def bundle_dir(demo_dir, demo_files):
    """The demo checkpoint exported to a bundle (once per session)."""
    from bodyrt.export.demo import demo_bundle

    return demo_bundle(demo_dir, threads=2)
