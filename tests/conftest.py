"""Shared, session-scoped artefacts: synthetic body models, a checkpoint and a bundle, built once per run."""

import hashlib
import os
import shutil

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


def linked_copy(bundle_dir, target):
    """The bundle as hard links: cheap, and quantizing the copy leaves the session bundle untouched
    (the manifest is replaced by a new file, never written through the link)."""
    shutil.copytree(bundle_dir, target, copy_function=os.link)
    return target


@pytest.fixture(scope="session")
def quantized_bundle(bundle_dir, demo_files, tmp_path_factory):
    """A copy of the session bundle with an int8 variant, calibrated on three one-person images."""
    from bodyrt.export.fixtures.scenes import sample_scene
    from bodyrt.export.quantize import quantize_bundle
    from bodyrt.images import save_png

    calibration = tmp_path_factory.mktemp("calibration")
    for seed in (2, 3, 4):
        image, box = sample_scene(demo_files[1], seed=seed, size=(360, 640))
        x0, y0, x1, y1 = box[0].astype(int)
        save_png(calibration / f"person{seed}.png", image[max(0, y0 - 10):y1 + 10, max(0, x0 - 20):x1 + 20])
    (calibration / "readme.txt").write_text("not an image")
    bundle = linked_copy(bundle_dir, tmp_path_factory.mktemp("quantized") / "bundle")
    quantize_bundle(bundle, calibration, threads=2)
    return bundle


# ---- the golden ExPose cases (tests/data/golden_expose): test_golden_expose.py, test_capi_native.py

SEED = 11
REGRESSOR_OUTPUT_GAIN = 30.0
# sha256 over (key bytes, tensor bytes in C order) for the sorted keys of the regenerated state dict
STATE_DICT_SHA256 = "a25dd4aa146a9c5baf67c789a10eb9d8a137e1a85b8bb59ad264833bc90c5ffc"


def state_dict_sha256(model: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(model):
        digest.update(key.encode())
        digest.update(model[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def golden_inputs(tmp_path_factory):
    """(checkpoint, body model) the official code ran: regenerated, edited as the golden README says,
    and checked against the hash of the file the official code loaded."""
    import torch

    from bodyrt.export.fixtures.checkpoints import write_random_checkpoint
    from bodyrt.export.fixtures.body_models import smplx_arrays, write_smplx_model

    folder = tmp_path_factory.mktemp("golden-expose")
    body_model = write_smplx_model(folder, seed=SEED)
    checkpoint = folder / "golden.ckpt"
    write_random_checkpoint(checkpoint, seed=SEED, body_model_arrays=smplx_arrays(seed=SEED))
    contents = torch.load(checkpoint, weights_only=True)
    model = contents["model"]
    for key in model:
        if key.endswith(("output_layer.weight", "output_layer.bias")):
            model[key] = model[key] * REGRESSOR_OUTPUT_GAIN
    assert state_dict_sha256(model) == STATE_DICT_SHA256, \
        "the regenerated checkpoint is not the one the official code ran: did the random writer change?"
    torch.save(contents, checkpoint)
    return checkpoint, body_model


@pytest.fixture(scope="session")
def golden_bundle(golden_inputs, tmp_path_factory):
    from bodyrt.export.bundle import export_bundle

    return export_bundle(*golden_inputs, tmp_path_factory.mktemp("golden-bundle") / "bundle", threads=2)


# ---- libbodyrt builds: each kind built at most once per session (the native one takes ~30 s)

def build_capi_once(basetemp, kind: str):
    """The directory of a libbodyrt build from the documented command, under the session's base
    directory, so that tests/ and benchmarks/ (two conftests, one session) share it.

    native: `bodyrt build-capi --out DIR`; embedded: `... --embedded`; sanitize: `... --sanitize`."""
    from pathlib import Path

    from bodyrt.cli import main

    out = Path(basetemp) / f"capi-{kind}"
    if not (out / ".complete").is_file():
        flags = {"native": [], "embedded": ["--embedded"], "sanitize": ["--sanitize"]}[kind]
        assert main(["build-capi", "--out", str(out), *flags]) == 0
        (out / ".complete").write_text("")
    return out


@pytest.fixture(scope="session")
def capi_build(tmp_path_factory):
    """kind -> the directory of that libbodyrt build (see build_capi_once), built on first use."""
    return lambda kind: build_capi_once(tmp_path_factory.getbasetemp(), kind)
