"""The torch-free pipeline: runs a bundle's steps (host crops and stage graphs) on one image.

The manifest lists the steps in order. Each step reads named arrays from a shared table and writes
new ones: `body_crop` and `part_crops` cut crops on the host, `graph` runs a stage on a backend,
`pinhole` converts the weak-perspective camera. Nothing here knows ExPose beyond what the manifest
says, so other architectures run through the same code.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from bodyrt.errors import BundleError, InputError
from bodyrt.runtime.backends import make_runner
from bodyrt.runtime.bundle import read_bundle
from bodyrt.runtime.crops import body_crops, part_crops
from bodyrt.limits import check_threads


@dataclass
class Result:
    """outputs: name -> array with the person on the first axis; timings_ms: step name -> ms."""

    outputs: dict
    timings_ms: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def pinhole_camera(scale, translation, crop_transforms, focal_length: float, crop_size: int) -> dict:
    """The ExPose demo's pinhole conversion: z = 2 * focal / (scale * body box size).

    scale (N,), translation (N, 2), crop_transforms (N, 3, 3) with k = crop_size / box size on the
    diagonal. Returns focal_length (N,) pixels and pinhole_translation (N, 3) metres.
    """
    box_size = crop_size / crop_transforms[:, 0, 0]
    depth = 2.0 * focal_length / (scale * box_size)
    return {
        "focal_length": np.full(np.shape(scale), focal_length, dtype=np.float32),
        "pinhole_translation": np.concatenate([translation, depth[:, None]], axis=1).astype(np.float32),
    }


def stage_plan(bundle, precision: str = "fp32") -> dict:
    """stage name -> {"file", "precision"}: which graph each stage runs, at which precision.

    fp32: the exported graphs. bf16: the same graphs, except the manifest's `fp32_stages`, which stay
    fp32 (lower precision costs them fidelity out of proportion to its speed). int8: the graphs of the
    bundle's int8 variant (written by `bodyrt quantize`); stages it leaves out stay fp32.
    """
    if precision not in ("fp32", "bf16", "int8"):
        raise InputError(f"precision must be fp32, bf16 or int8, got {precision!r}")
    manifest = bundle.manifest
    keep_fp32 = set(manifest.get("fp32_stages", []))
    quantized = {}
    if precision == "int8":
        variant = manifest.get("variants", {}).get("int8")
        if not variant:
            raise BundleError(f"{bundle.path}: the bundle has no int8 variant; make one with "
                              f"bodyrt quantize --bundle {bundle.path} --calibration IMAGE_FOLDER")
        quantized = variant["stages"]
    plan = {}
    for stage in manifest["stages"]:
        name = stage["name"]
        if precision == "int8" and name in quantized:
            plan[name] = {"file": quantized[name], "precision": "int8"}
        elif precision == "bf16" and name not in keep_fp32:
            plan[name] = {"file": stage["file"], "precision": "bf16"}
        else:
            plan[name] = {"file": stage["file"], "precision": "fp32"}
    return plan


class Pipeline:
    """A bundle opened on a backend at a precision; call it with (image, person_boxes)."""

    def __init__(self, bundle, backend: str = "onnxruntime", threads: int = 2, precision: str = "fp32"):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        self.precision = precision
        self.plan = stage_plan(bundle, precision)
        preprocessing = self.manifest["preprocessing"]
        self.mean = np.asarray(preprocessing["mean"], dtype=np.float32)
        self.std = np.asarray(preprocessing["std"], dtype=np.float32)
        self.faces = np.asarray(self.manifest["mesh"]["faces"], dtype=np.int64)
        self.untrained = bool(self.manifest["source"].get("untrained", False))
        self.runners = {}
        for stage in self.manifest["stages"]:
            planned = self.plan[stage["name"]]
            runner = make_runner(backend, bundle.file(planned["file"]), threads=threads,
                                 precision=planned["precision"], input_specs=stage["inputs"],
                                 model_sha256=self.manifest["files"].get(planned["file"]))
            self.runners[stage["name"]] = runner.activate()
        # what each stage actually runs at, as the backend reports it when it can
        self.stage_precisions = {name: getattr(runner, "precision_ran", None) or self.plan[name]["precision"]
                                 for name, runner in self.runners.items()}

    def __call__(self, image: np.ndarray, person_boxes, channel_order: str = "rgb") -> Result:
        """image (H, W, 3) uint8; person_boxes (N, 4) x0, y0, x1, y1 pixels -> Result."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        tensors = {"person_boxes": np.asarray(person_boxes, dtype=np.float32).reshape(-1, 4)}
        timings = {}
        for step in self.manifest["steps"]:
            start = time.perf_counter()
            tensors.update(self._run_step(step, image, tensors, channel_order))
            timings[step["name"]] = timings.get(step["name"], 0.0) + (time.perf_counter() - start) * 1000.0
        self.last_tensors = tensors  # every intermediate of the last call (calibration reads the stage inputs)
        outputs = {name: tensors[name] for name in self.manifest["results"]}
        return Result(outputs=outputs, timings_ms=timings,
                      info={"backend": self.backend, "precision": self.precision,
                            "stage_precisions": dict(self.stage_precisions)})

    def _run_step(self, step: dict, image, tensors: dict, channel_order: str) -> dict:
        op = step["op"]
        if op == "body_crop":
            crops, transforms = body_crops(image, tensors[step["boxes"]], self.mean, self.std,
                                           crop_size=step["crop_size"], scale=step["box_scale"],
                                           channel_order=channel_order)
            return dict(zip(step["outputs"], (crops, transforms)))
        if op == "part_crops":
            boxes = tensors[step["boxes"]][:, step["parts"]]  # (N, P, 3) cx, cy, size
            people, parts = boxes.shape[:2]
            mirror = np.tile(np.asarray(step["mirror"], dtype=bool), people)
            crops = part_crops(image, boxes[..., :2].reshape(-1, 2), boxes[..., 2].reshape(-1),
                               step["crop_size"], mirror, self.mean, self.std, channel_order=channel_order)
            return {step["output"]: crops.reshape(people, parts, *crops.shape[1:])}
        if op == "graph":
            stage = self.bundle.stage(step["stage"])
            feeds = {spec["name"]: tensors[spec["name"]] for spec in stage["inputs"]}
            return self.runners[step["stage"]].infer(feeds)
        if op == "pinhole":
            return pinhole_camera(tensors[step["scale"]], tensors[step["translation"]],
                                  tensors[step["crop_transforms"]], step["focal_length"], step["crop_size"])
        raise BundleError(f"{self.bundle.path}: manifest step {step.get('name')!r} has unknown op {op!r}")

    def close(self):
        for runner in self.runners.values():
            runner.deactivate()


def open_bundle(path, backend: str = "onnxruntime", threads: int = 2, precision: str = "fp32") -> Pipeline:
    """Verify a bundle and open every stage on the backend at the precision (fp32, bf16, int8)."""
    check_threads(threads)
    return Pipeline(read_bundle(path), backend=backend, threads=threads, precision=precision)
