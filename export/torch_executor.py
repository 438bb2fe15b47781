"""The steps in eager PyTorch: the executor of the reference pipelines (ExPose, the SMPL regressors).

The reference runs the same steps, from the same manifest description, as the runtime, through the
same Pipeline loop (bodyrt.runtime.pipeline): only what a step does differs.
    body_crop   the runtime's numpy body crop (cv2.resize semantics), as torch tensors
    part_crops  grid_sample on the normalised full image (the official code's sampling)
    graph       the stage's torch module
    pinhole     the shared host arithmetic
What proves the steps right is not the agreement between executors but the golden outputs of the
official code (tests/test_golden_expose.py) and the oracle tests.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bodyrt.runtime.crops import body_crops
from bodyrt.runtime.manifest import (FORMAT_NAME, FORMAT_VERSION, BodyCropStep, GraphStep, Manifest, Mesh,
                                     PartCropsStep, PinholeStep, Preprocessing, Source, Stage, TensorSpec,
                                     parse_steps)
from bodyrt.runtime.pipeline import Frame, Pipeline, pinhole_step


def normalise_image(image: np.ndarray, mean, std, pixel_scale: float) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32: pixel * pixel_scale, then (value - mean) / std."""
    rgb = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / (1.0 / pixel_scale)
    mean = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    return ((rgb - mean) / std)[None]


def sample_part_crops(normalised_image: torch.Tensor, boxes: torch.Tensor, crop_size: int,
                      mirror: torch.Tensor) -> torch.Tensor:
    """Bilinear crops of square boxes from the normalised full image, zero outside it.

    normalised_image (1, 3, H, W); boxes (K, 3) (cx, cy, size) full-image pixels; mirror (K,) bool.
    Crop pixel (u, v) samples x = cx - S/2 + S*u/(n-1), y = cy - S/2 + S*v/(n-1). Returns (K, 3, n, n).
    """
    _, _, height, width = normalised_image.shape
    steps = torch.arange(crop_size, dtype=torch.float64) / (crop_size - 1)
    boxes = boxes.double()
    left = boxes[:, 0:1] - boxes[:, 2:3] / 2
    top = boxes[:, 1:2] - boxes[:, 2:3] / 2
    xs = left + boxes[:, 2:3] * steps  # (K, n)
    ys = top + boxes[:, 2:3] * steps
    xs = torch.where(mirror[:, None], xs.flip(1), xs)
    grid_x = (2 * xs / (width - 1) - 1)[:, None, :].expand(-1, crop_size, -1)
    grid_y = (2 * ys / (height - 1) - 1)[:, :, None].expand(-1, -1, crop_size)
    grid = torch.stack([grid_x, grid_y], dim=-1).float()
    source = normalised_image.expand(len(boxes), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@dataclass
class TorchStage:
    """A stage as a torch module with its input and output tensor names (export's stage specs)."""

    name: str
    module: torch.nn.Module
    inputs: list
    outputs: list


@dataclass
class InMemoryBundle:
    """What Pipeline needs of a bundle, for a pipeline that has no files: its manifest."""

    path: Path
    manifest: Manifest


def reference_manifest(arch: str, stages: list, steps: list, results: list, preprocessing: dict, faces: np.ndarray,
                       num_vertices: int, model: str, checkpoint, body_model, untrained: bool) -> Manifest:
    """The manifest the export writes, in memory: steps, results, preprocessing and mesh (no files,
    no graph shapes: the torch stages take any person count)."""
    return Manifest(
        format=FORMAT_NAME, format_version=FORMAT_VERSION, arch=arch, created="", tools={},
        source=Source(checkpoint=Path(checkpoint).name, checkpoint_sha256="", body_model=Path(body_model).name,
                      body_model_sha256="", untrained=untrained),
        preprocessing=Preprocessing(mean=tuple(preprocessing["mean"]), std=tuple(preprocessing["std"]),
                                    pixel_scale=float(preprocessing["pixel_scale"])),
        fp32_stages=(),
        stages=tuple(Stage(name=stage.name, file="", inputs=tuple(TensorSpec(n, ("people",), "float32")
                                                                  for n in stage.inputs),
                           outputs=tuple(TensorSpec(n, ("people",), "float32") for n in stage.outputs))
                     for stage in stages),
        steps=parse_steps(steps), results=tuple(results),
        mesh=Mesh(model=model, num_vertices=num_vertices, faces=tuple(map(tuple, np.asarray(faces).tolist()))),
        files={})


class TorchExecutor:
    """Pipeline's executor in eager PyTorch; `tensors_torch` keeps the last frame's tensors as torch
    tensors (the export traces its stages with them)."""

    backend = "pytorch"
    precision = "fp32"
    max_people = None

    def __init__(self, manifest: Manifest, stages: dict):
        self.manifest = manifest
        self.stages = stages
        preprocessing = manifest.preprocessing
        self.mean, self.std, self.pixel_scale = preprocessing.mean, preprocessing.std, preprocessing.pixel_scale
        self.stage_precisions = {name: "fp32" for name in stages}

    def host_frame(self, image: np.ndarray, boxes, channel_order: str) -> Frame:
        if channel_order != "rgb":
            image = image[..., ::-1]
        height, width, _ = image.shape
        return Frame(image, height, width, 3 * width, boxes, "rgb", None)

    def begin(self, frame: Frame) -> None:
        self.frame = frame
        self.tensors_torch = {"person_boxes": torch.from_numpy(np.asarray(frame.boxes, dtype=np.float32))}
        self.normalised = None
        self.timings = {}

    @torch.inference_mode()
    def run(self, step) -> None:
        start = time.perf_counter()
        self.tensors_torch.update(self._outputs(step))
        self.timings[step.name] = (time.perf_counter() - start) * 1000.0

    def _outputs(self, step) -> dict:
        tensors = self.tensors_torch
        if isinstance(step, BodyCropStep):
            crops, transforms = body_crops(self.frame.image, tensors[step.boxes].numpy(), self.mean, self.std,
                                           crop_size=step.crop_size, scale=step.box_scale,
                                           pixel_scale=self.pixel_scale)
            return {step.crops: torch.from_numpy(crops), step.transforms: torch.from_numpy(transforms)}
        if isinstance(step, PartCropsStep):
            if self.normalised is None:
                self.normalised = normalise_image(self.frame.image, self.mean, self.std, self.pixel_scale)
            boxes = tensors[step.boxes][:, list(step.parts)]  # (N, P, 3)
            people, parts = boxes.shape[:2]
            mirror = torch.tensor(list(step.mirror) * people, dtype=torch.bool)
            crops = sample_part_crops(self.normalised, boxes.reshape(people * parts, 3), step.crop_size, mirror)
            return {step.output: crops.reshape(people, parts, *crops.shape[1:])}
        if isinstance(step, GraphStep):
            stage = self.stages[step.stage]
            values = stage.module(*(tensors[name] for name in stage.inputs))
            values = values if isinstance(values, tuple) else (values,)
            return dict(zip(stage.outputs, values, strict=True))
        if isinstance(step, PinholeStep):
            numpy = {name: tensors[name].numpy() for name in step.inputs()}
            return {name: torch.from_numpy(value) for name, value in pinhole_step(step, numpy).items()}
        raise TypeError(f"step {step.name!r} of kind {type(step).__name__} has no torch implementation")

    def end(self) -> None:
        pass

    def collect(self) -> tuple:
        return {name: value.numpy() for name, value in self.tensors_torch.items()}, self.timings

    def info(self) -> dict:
        return {"backend": self.backend, "precision": self.precision,
                "stage_precisions": dict(self.stage_precisions)}

    def close(self) -> None:
        pass


def torch_pipeline(manifest: Manifest, stages: list) -> Pipeline:
    """A Pipeline running `manifest`'s steps with the torch stages (TorchStage list)."""
    executor = TorchExecutor(manifest, {stage.name: stage for stage in stages})
    return Pipeline(InMemoryBundle(Path("<reference>"), manifest), executor)
