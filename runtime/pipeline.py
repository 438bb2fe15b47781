"""The pipeline: a bundle's steps, in the manifest's order, on one executor.

    pipeline = open_bundle("bundle/", backend="onnxruntime")     # or "openvino", "tensorrt", "cuda"
    result = pipeline(image_rgb_uint8, [[x0, y0, x1, y1]])

Pipeline owns the one step loop, the results, the faces, the timings and the run info. What a step
does is the executor's: HostExecutor (here) cuts crops with numpy and runs stage graphs on CPU
runners; DeviceExecutor (bodyrt.runtime.device_executor) cuts them with the CUDA kernel into
device buffers and runs device stages on one stream; bodyrt.export.torch_executor runs the steps in
PyTorch. Steps (bodyrt.runtime.manifest): body_crop, part_crops, graph, pinhole. Nothing here knows
ExPose beyond what the manifest says.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from bodyrt.errors import BundleError, InputError
from bodyrt.runtime.bundle import read_bundle
from bodyrt.runtime.crops import body_crops, check_person_boxes, part_crops
from bodyrt.runtime.manifest import BodyCropStep, GraphStep, PartCropsStep, PinholeStep
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


def pinhole_step(step: PinholeStep, tensors: dict) -> dict:
    """A pinhole step on numpy tensors (every executor's: it is three lines of host arithmetic)."""
    values = pinhole_camera(np.asarray(tensors[step.scale], dtype=np.float32),
                            np.asarray(tensors[step.translation], dtype=np.float32),
                            np.asarray(tensors[step.crop_transforms], dtype=np.float32),
                            step.focal_length, step.crop_size)
    return {step.focal_length_output: values["focal_length"], step.translation_output: values["pinhole_translation"]}


def check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return image


@dataclass
class Frame:
    """One image and its person boxes as an executor receives them.

    image: a numpy (H, W, 3) uint8 array (host) or an int device pointer to rows `pitch` bytes apart.
    boxes: (N, 4) float32 x0, y0, x1, y1 pixels, checked. stream: the caller's CUDA stream or None.
    """

    image: object
    height: int
    width: int
    pitch: int
    boxes: np.ndarray
    channel_order: str = "rgb"
    stream: object = None


class HostExecutor:
    """Numpy crops and CPU runners (onnxruntime, openvino; a GPU backend's numpy runners too)."""

    def __init__(self, bundle, runners: dict, backend: str, precision: str, stage_precisions: dict):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.runners = runners
        self.backend = backend
        self.precision = precision
        self.stage_precisions = stage_precisions
        preprocessing = self.manifest.preprocessing
        self.mean = np.asarray(preprocessing.mean, dtype=np.float32)
        self.std = np.asarray(preprocessing.std, dtype=np.float32)
        self.pixel_scale = preprocessing.pixel_scale
        self.max_people = None

    def host_frame(self, image: np.ndarray, boxes, channel_order: str, stream=None) -> Frame:
        height, width, _ = image.shape
        return Frame(image, height, width, 3 * width, boxes, channel_order, stream)

    def begin(self, frame: Frame) -> None:
        if not isinstance(frame.image, np.ndarray):
            raise InputError(f"the {self.backend} backend runs on the host: give a numpy image, not a device pointer")
        self.frame = frame
        self.tensors = {"person_boxes": frame.boxes}
        self.timings = {}

    def run(self, step) -> None:
        start = time.perf_counter()
        self.tensors.update(self._outputs(step))
        self.timings[step.name] = (time.perf_counter() - start) * 1000.0

    def _outputs(self, step) -> dict:
        image, tensors, order = self.frame.image, self.tensors, self.frame.channel_order
        if isinstance(step, BodyCropStep):
            crops, transforms = body_crops(image, tensors[step.boxes], self.mean, self.std, crop_size=step.crop_size,
                                           scale=step.box_scale, channel_order=order, pixel_scale=self.pixel_scale)
            return {step.crops: crops, step.transforms: transforms}
        if isinstance(step, PartCropsStep):
            boxes = tensors[step.boxes][:, list(step.parts)]  # (N, P, 3) cx, cy, size
            people, parts = boxes.shape[:2]
            mirror = np.tile(np.asarray(step.mirror, dtype=bool), people)
            crops = part_crops(image, boxes[..., :2].reshape(-1, 2), boxes[..., 2].reshape(-1), step.crop_size,
                               mirror, self.mean, self.std, channel_order=order, pixel_scale=self.pixel_scale)
            return {step.output: crops.reshape(people, parts, *crops.shape[1:])}
        if isinstance(step, GraphStep):
            feeds = {spec.name: tensors[spec.name] for spec in self.manifest.stage(step.stage).inputs}
            return self.runners[step.stage].infer(feeds)
        if isinstance(step, PinholeStep):
            return pinhole_step(step, tensors)
        raise BundleError(f"{self.bundle.path}: step {step.name!r} has no host implementation")

    def end(self) -> None:
        pass

    def collect(self) -> tuple:
        return self.tensors, self.timings

    def info(self) -> dict:
        return {"backend": self.backend, "precision": self.precision,
                "stage_precisions": dict(self.stage_precisions)}

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()


class Pipeline:
    """A bundle opened on an executor; call it with (image, person_boxes), or enqueue()/result().

    The one loop over the manifest's steps is enqueue(); result() waits for the executor and returns
    the manifest's results.
    """

    def __init__(self, bundle, executor):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.executor = executor
        self.backend = executor.backend
        self.precision = executor.precision
        self.faces = np.asarray(self.manifest.mesh.faces, dtype=np.int64)
        self.untrained = self.manifest.source.untrained
        self.box_scale = self.manifest.body_crop.box_scale
        self._pending = False
        self.last_tensors = {}

    @property
    def runners(self) -> dict:
        """stage -> Runner, for a host executor (benchmarks time them one by one)."""
        return self.executor.runners

    @property
    def stage_precisions(self) -> dict:
        """stage -> the precision it actually runs at, as the backend reports it."""
        return dict(getattr(self.executor, "stage_precisions", {}))

    def __call__(self, image: np.ndarray, person_boxes, channel_order: str = "rgb") -> Result:
        """image (H, W, 3) uint8 on the host; person_boxes (N, 4) x0, y0, x1, y1 pixels -> Result."""
        image = check_image(image)
        height, width, _ = image.shape
        boxes = self._boxes(person_boxes, width, height)
        self._enqueue(self.executor.host_frame(image, boxes, channel_order))
        return self.result()

    def enqueue(self, image: int, height: int, width: int, pitch: int, person_boxes, channel_order: str = "rgb",
                stream=None) -> None:
        """Queue one frame already on the device: image is a pointer to (height, width, 3) uint8 rows
        `pitch` bytes apart; stream (int) the one it was produced on. Device executors only."""
        boxes = self._boxes(person_boxes, width, height)
        self._enqueue(Frame(int(image), height, width, pitch, boxes, channel_order, stream))

    def _boxes(self, person_boxes, width: int, height: int) -> np.ndarray:
        if self._pending:
            raise InputError("a frame is already queued: call result() before enqueueing the next one")
        boxes = np.asarray(person_boxes, dtype=np.float64).reshape(-1, 4)
        boxes = check_person_boxes(boxes, width, height, self.box_scale).astype(np.float32)
        limit = self.executor.max_people
        if limit is not None and len(boxes) > limit:
            raise InputError(f"{len(boxes)} person boxes, but this pipeline takes at most {limit} per call "
                             "(max_people; TensorRT engines: rebuild with --max-people)")
        return boxes

    def _enqueue(self, frame: Frame) -> None:
        self.executor.begin(frame)
        for step in self.manifest.steps:
            self.executor.run(step)
        self.executor.end()
        self._pending = True

    def result(self) -> Result:
        """Wait for the queued frame; its results (numpy), per-step timings and run info."""
        if not self._pending:
            raise InputError("no frame queued: call enqueue() first")
        self._pending = False
        tensors, timings = self.executor.collect()
        self.last_tensors = tensors  # every intermediate of the last call (calibration reads the stage inputs)
        outputs = {name: tensors[name] for name in self.manifest.results}
        return Result(outputs=outputs, timings_ms=timings, info=self.executor.info())

    def close(self) -> None:
        self.executor.close()


def open_bundle(path, backend: str = "onnxruntime", threads: int = 2, precision: str = "fp32", **options) -> Pipeline:
    """Verify a bundle and open it on a backend (bodyrt.runtime.backends.BACKENDS) at a precision.

    options: device executors' (device, stream, max_people, cuda_graphs).
    """
    from bodyrt.runtime.backends import open_executor

    check_threads(threads)
    bundle = read_bundle(path)
    return Pipeline(bundle, open_executor(bundle, backend, threads=threads, precision=precision, **options))
