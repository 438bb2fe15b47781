"""Body-only SMPL architectures (HKMR, deform-and-learn): checkpoints, the PyTorch reference, the bundle.

Each architecture is one graph, "body": ImageNet-normalised body crops in, the SMPL mesh, joints,
parameters and weak-perspective camera out. The bundle runs it with the same runtime steps as ExPose
(body_crop, graph, pinhole) and no hand or face stages; the manifest says so, the runtime needs
nothing else.

Checkpoint files: bodyrt's format {"format": SMPL_REGRESSOR_FORMAT, "version": 1, "arch": ...,
"untrained": bool, "model": state dict}; or a training checkpoint, {"model": state dict},
{"state_dict": state dict} or the state dict itself (keys as the modules in bodyrt.export.hkmr /
bodyrt.export.deform_learn name them, an optional DataParallel `module.` prefix is stripped).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bodyrt.errors import BodyModelError, CheckpointError, InputError
from bodyrt.export import deform_learn, hkmr
from bodyrt.export.body_model import BodyModel, load_body_model
from bodyrt.export.bundle import (PINHOLE_OUTPUTS, body_crop_step, build_bundle, manifest_for, pinhole_step,
                                  sample_batch)
from bodyrt.export.checkpoint import check_format_header, read_checkpoint_file, take_tensor
from bodyrt.export.fixtures.checkpoints import randomise_
from bodyrt.export.reference import PREPROCESSING, ReferenceResult
from bodyrt.export.torch_executor import TorchStage, reference_manifest, torch_pipeline

log = logging.getLogger("bodyrt")

SMPL_REGRESSOR_FORMAT = "bodyrt-smpl-regressor-weights"
SMPL_REGRESSOR_FORMAT_VERSION = 1
PARITY_TOLERANCE = 1e-4  # largest |onnx - torch| of any output: metres, rotation entries, scales
MODEL_NAMES = {"smpl": "SMPL", "smplx": "SMPL-X"}


@dataclass(frozen=True)
class SmplArch:
    """How to build, initialise and wrap one architecture."""

    name: str
    build_model: Callable  # () -> the module whose state dict is the checkpoint
    build_stage: Callable  # (model, BodyModelData) -> the exported module (has OUTPUT_NAMES)
    adjust_untrained: Callable  # (model, generator) -> None, after bodyrt's generic random init
    input_size: int  # body crop side, pixels
    exporter: str = "dynamo"  # bundle.export_onnx's exporter for the stage


ARCHS = {
    "hkmr": SmplArch("hkmr", hkmr.HKMR, lambda model, data: hkmr.HKMRStage(model, BodyModel(data)),
                     hkmr.untrained_adjustments_, hkmr.INPUT_SIZE, exporter="torchscript"),
    "deform-and-learn": SmplArch(
        "deform-and-learn", deform_learn.DeformAndLearnNetwork,
        lambda model, data: deform_learn.DeformAndLearnStage(model, deform_learn.SegmentScaledBody(data)),
        deform_learn.untrained_adjustments_, deform_learn.INPUT_SIZE),
}


def arch_spec(arch: str) -> SmplArch:
    if arch not in ARCHS:
        raise InputError(f"unknown architecture {arch!r}; SMPL architectures: {', '.join(ARCHS)}")
    return ARCHS[arch]


# ------------------------------------------------------------------------------------- checkpoints

def write_random_smpl_checkpoint(path, arch: str, seed: int = 0) -> Path:
    """A seeded, randomly initialised, UNTRAINED checkpoint of `arch` in bodyrt's format."""
    spec = arch_spec(arch)
    generator = torch.Generator().manual_seed(seed)
    model = spec.build_model()
    randomise_(model, generator)
    spec.adjust_untrained(model, generator)
    path = Path(path)
    torch.save({"format": SMPL_REGRESSOR_FORMAT, "version": SMPL_REGRESSOR_FORMAT_VERSION, "arch": arch,
                "untrained": True, "model": model.state_dict()}, path)
    return path


def checkpoint_state_dict(contents, path: Path, arch: str) -> tuple[dict, bool]:
    """The state dict and untrained flag out of any accepted checkpoint layout."""
    if isinstance(contents, dict) and "format" in contents:
        check_format_header(contents, path, SMPL_REGRESSOR_FORMAT, SMPL_REGRESSOR_FORMAT_VERSION, arch)
        state, untrained = contents.get("model"), bool(contents.get("untrained", False))
    elif isinstance(contents, dict) and isinstance(contents.get("model", contents.get("state_dict")), dict):
        state, untrained = contents.get("model", contents.get("state_dict")), False
    else:
        state, untrained = contents, False
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(value) for value in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (expected bodyrt's format, "
                              "{'model': state_dict}, {'state_dict': ...} or a bare state dict)")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state, untrained


def load_smpl_regressor(path, arch: str) -> tuple[torch.nn.Module, bool]:
    """Read a checkpoint of `arch` -> (model in eval mode, untrained flag). Every key and shape is checked."""
    path = Path(path)
    spec = arch_spec(arch)
    state, untrained = checkpoint_state_dict(read_checkpoint_file(path), path, arch)
    model = spec.build_model()
    used, loaded = set(), {}
    for key, tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked"):  # never matters in eval mode; frozen-BN files lack it
            loaded[key] = state.get(key, tensor)
            used.add(key)
            continue
        loaded[key] = take_tensor(state, key, tuple(tensor.shape), path, used)
    unexpected = sorted(key for key in state if key not in used)
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} tensors that a {arch} model does not have "
                              f"(first: {', '.join(unexpected[:3])}); is it a checkpoint of another architecture?")
    model.load_state_dict(loaded)
    if untrained:
        log.info("%s: UNTRAINED weights (generated by bodyrt for testing)", path)
    return model.eval(), untrained


# ----------------------------------------------------------------------------- reference pipeline

def load_smpl_body_model(path, arch: str):
    data = load_body_model(path)
    if data.kind != "smpl":
        raise BodyModelError(f"{path}: --arch {arch} needs an SMPL model file (6890 vertices); "
                             f"this one is {MODEL_NAMES.get(data.kind, data.kind)}")
    return data


class SmplRegressorPipeline:
    """A body-only SMPL architecture in eager PyTorch: the reference its bundle is checked against.

    Call it like ReferencePipeline: image (H, W, 3) uint8 RGB, person boxes (N, 4) -> ReferenceResult
    with the bundle's results (stage outputs, crop_transforms, focal_length, pinhole_translation).
    """

    def __init__(self, checkpoint_path, body_model_path, arch: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.arch = arch_spec(arch)
        self.body_model_data = load_smpl_body_model(body_model_path, arch)
        model, self.untrained = load_smpl_regressor(checkpoint_path, arch)
        self.stage = self.arch.build_stage(model, self.body_model_data).eval()
        self.faces = np.asarray(self.body_model_data.arrays["f"], dtype=np.int64)
        self.crop_size = self.arch.input_size

        stage = TorchStage("body", self.stage, ["body_crops"], list(self.stage.OUTPUT_NAMES))
        self.manifest = reference_manifest(
            self.arch.name, [stage], smpl_steps(self.crop_size),
            [*self.stage.OUTPUT_NAMES, "crop_transforms", *PINHOLE_OUTPUTS],
            PREPROCESSING, self.faces, int(self.body_model_data.arrays["v_template"].shape[0]), "smpl",
            checkpoint_path, body_model_path, self.untrained)
        self.pipeline = torch_pipeline(self.manifest, [stage])

    def __call__(self, image: np.ndarray, person_boxes) -> ReferenceResult:
        """The manifest's steps (body crop, the stage, pinhole) on the torch executor."""
        result = self.pipeline(image, person_boxes)
        self.last_intermediates = {"body_crops": self.pipeline.executor.tensors_torch["body_crops"]}
        return result


# --------------------------------------------------------------------------------------- the bundle

def smpl_steps(crop_size: int) -> list[dict]:
    """The runtime's steps: body crop, the one graph, the pinhole conversion."""
    return [body_crop_step(crop_size), {"name": "body", "op": "graph", "stage": "body"}, pinhole_step(crop_size)]


def smpl_manifest(pipeline: SmplRegressorPipeline, stage_files: dict, graph_specs: dict, checkpoint,
                  body_model) -> dict:
    """The common manifest (manifest_for) with this architecture's arch, steps, results and mesh."""
    manifest = manifest_for(pipeline, stage_files, graph_specs, checkpoint, body_model)
    manifest.update(arch=pipeline.arch.name, fp32_stages=[], steps=smpl_steps(pipeline.crop_size),
                    results=[*pipeline.stage.OUTPUT_NAMES, "crop_transforms", *PINHOLE_OUTPUTS])
    manifest["mesh"]["model"] = "smpl"
    return manifest


def export_smpl_bundle(checkpoint, body_model, out_dir, arch: str, threads: int = 2) -> Path:
    """Export `arch` to a bundle: one "body" graph checked against PyTorch within PARITY_TOLERANCE."""
    pipeline = SmplRegressorPipeline(checkpoint, body_model, arch, threads=threads)
    samples = {key: value.clone() for key, value in sample_batch(pipeline).items()}
    spec = {"name": "body", "module": pipeline.stage, "inputs": ["body_crops"],
            "outputs": list(pipeline.stage.OUTPUT_NAMES), "tolerance": PARITY_TOLERANCE,
            "exporter": pipeline.arch.exporter}
    return build_bundle(out_dir, [spec], samples, threads,
                        lambda files, graphs: smpl_manifest(pipeline, files, graphs, checkpoint, body_model))
