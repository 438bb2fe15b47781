"""The GPU runtime: a bundle's steps on the device, for the `tensorrt` and `cuda` backends.

    pipeline = open_device_pipeline("bundle/", backend="tensorrt")
    result = pipeline(image_rgb_uint8, [[x0, y0, x1, y1]])          # host image in, numpy out

    # zero copy: an image already on the GPU (PyTorch, CuPy, pycuda), its row pitch and stream
    pipeline.enqueue(frame.data_ptr(), height, width, frame.stride(0), boxes,
                     stream=torch.cuda.current_stream().cuda_stream)
    result = pipeline.result()                                     # the only synchronisation

Device buffers for every tensor are allocated once, for the largest person batch; everything runs
on one stream (the user's stream waits for it, not the host); nothing is synchronised until
result() reads the outputs. The crops are cut by the CUDA kernel (bodyrt.kernels) straight from
the image and from the body engine's part boxes. With cuda_graphs=True the consecutive engine
runs of each step group are captured once per person count and replayed as one CUDA graph (the
crop kernels stay outside: their image pointer changes every frame).

Pointers and streams are plain ints (tensor.data_ptr(), cupy_array.data.ptr, int(pycuda buffer);
torch.cuda.current_stream().cuda_stream, cupy stream .ptr, pycuda stream .handle). They must live in
the device's primary context, which PyTorch and CuPy use (pycuda: import pycuda.autoprimaryctx).

cuda-python is imported lazily; a missing package or driver raises BackendUnavailableError.
"""

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from bodyrt.errors import BackendUnavailableError, BundleError, InputError
from bodyrt.runtime.bundle import read_bundle
from bodyrt.runtime.crops import check_person_boxes
from bodyrt.runtime.packages import gpu_extra_hint, import_onnxruntime
from bodyrt.runtime.pipeline import Result, pinhole_camera

GPU_BACKENDS = ("tensorrt", "cuda")
DEFAULT_MAX_PEOPLE = 8


def import_cuda_driver():
    """cuda.bindings.driver, or BackendUnavailableError saying what to install."""
    try:
        from cuda.bindings import driver
    except ImportError as error:
        raise BackendUnavailableError(f"the GPU runtime needs the cuda-python package ({error}); "
                                      f"{gpu_extra_hint()}") from None
    return driver


class CudaDevice:
    """One GPU through the CUDA driver API, in its primary context (the one PyTorch and CuPy use).

    Every handle it hands out (pointers, streams, events) is a plain int.
    """

    def __init__(self, ordinal: int = 0):
        self.driver = import_cuda_driver()
        self.ordinal = ordinal
        try:
            self.call("cuInit", 0)
        except RuntimeError as error:  # cuda-python opens libcuda at the first call
            raise BackendUnavailableError(f"no usable CUDA driver ({error}); the GPU backends need an NVIDIA "
                                          "GPU with its driver") from None
        self.device = self.call("cuDeviceGet", ordinal)
        self.context = self.call("cuDevicePrimaryCtxRetain", self.device)
        self.call("cuCtxSetCurrent", self.context)
        self.name = self.call("cuDeviceGetName", 256, self.device).split(b"\0", 1)[0].decode()
        attribute = self.driver.CUdevice_attribute
        major = self.call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device)
        minor = self.call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device)
        self.compute_capability = f"{major}.{minor}"
        self._kernels = None

    def call(self, function: str, *args):
        """driver.function(*args), whose (CUresult, values...) becomes the values or an exception."""
        status, *values = getattr(self.driver, function)(*args)
        if status != self.driver.CUresult.CUDA_SUCCESS:
            _, name = self.driver.cuGetErrorName(status)
            raise BackendUnavailableError(f"CUDA {function} failed on GPU {self.ordinal}: "
                                          f"{name.decode() if name else int(status)}")
        return values[0] if len(values) == 1 else values

    def _stream(self, stream: int):
        return self.driver.CUstream(stream)

    def _event(self, event: int):
        return self.driver.CUevent(event)

    def allocate(self, nbytes: int) -> int:
        return int(self.call("cuMemAlloc", max(nbytes, 1)))

    def free(self, pointer: int) -> None:
        self.call("cuMemFree", self.driver.CUdeviceptr(pointer))

    def allocate_host(self, nbytes: int) -> int:
        """Page-locked host memory, so asynchronous copies stay asynchronous."""
        return int(self.call("cuMemHostAlloc", max(nbytes, 1), 0))

    def free_host(self, pointer: int) -> None:
        self.call("cuMemFreeHost", pointer)

    def create_stream(self) -> int:
        return int(self.call("cuStreamCreate", int(self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING)))

    def destroy_stream(self, stream: int) -> None:
        self.call("cuStreamDestroy", self._stream(stream))

    def create_event(self) -> int:
        return int(self.call("cuEventCreate", int(self.driver.CUevent_flags.CU_EVENT_DEFAULT)))

    def destroy_event(self, event: int) -> None:
        self.call("cuEventDestroy", self._event(event))

    def record_event(self, event: int, stream: int) -> None:
        self.call("cuEventRecord", self._event(event), self._stream(stream))

    def wait_event(self, stream: int, event: int) -> None:
        """Work queued on `stream` from now on waits for `event`; the host does not wait."""
        self.call("cuStreamWaitEvent", self._stream(stream), self._event(event), 0)

    def synchronize_event(self, event: int) -> None:
        self.call("cuEventSynchronize", self._event(event))

    def elapsed_ms(self, start: int, end: int) -> float:
        return float(self.call("cuEventElapsedTime", self._event(start), self._event(end)))

    def copy_to_device(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        self.call("cuMemcpyHtoDAsync", self.driver.CUdeviceptr(destination), source, nbytes, self._stream(stream))

    def copy_to_host(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        self.call("cuMemcpyDtoHAsync", destination, self.driver.CUdeviceptr(source), nbytes, self._stream(stream))

    def kernels(self) -> dict:
        """The crop kernels by entry point name, from the shipped fatbin or NVRTC (bodyrt.kernels.module)."""
        if self._kernels is None:
            from bodyrt.kernels.launch import KERNEL_NAMES
            from bodyrt.kernels.module import crop_kernel_image

            major, minor = (int(part) for part in self.compute_capability.split("."))
            image, _ = crop_kernel_image((major, minor), int(self.call("cuDriverGetVersion")))
            module = self.call("cuModuleLoadData", image)
            self._kernels = {name: self.call("cuModuleGetFunction", module, name.encode()) for name in KERNEL_NAMES}
        return self._kernels

    def launch(self, launch, stream: int) -> None:
        """One bodyrt.kernels.launch.KernelLaunch on `stream`."""
        params = launch.kernel_params()  # points into `launch`: both alive until cuLaunchKernel returns
        self.call("cuLaunchKernel", self.kernels()[launch.kernel], *launch.grid, *launch.block,
                  launch.shared_memory_bytes, self._stream(stream), ctypes.addressof(params), 0)

    def begin_capture(self, stream: int) -> None:
        mode = self.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self.call("cuStreamBeginCapture", self._stream(stream), mode)

    def end_capture(self, stream: int):
        """The work captured since begin_capture, as an executable graph."""
        graph = self.call("cuStreamEndCapture", self._stream(stream))
        executable = self.call("cuGraphInstantiate", graph, 0)
        self.call("cuGraphDestroy", graph)
        return executable

    def launch_graph(self, executable, stream: int) -> None:
        self.call("cuGraphLaunch", executable, self._stream(stream))

    def destroy_graph(self, executable) -> None:
        self.call("cuGraphExecDestroy", executable)

    def close(self) -> None:
        self.call("cuDevicePrimaryCtxRelease", self.device)


def host_array(pointer: int, dtype, shape) -> np.ndarray:
    """A numpy view of host memory at `pointer` (page-locked buffers)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buffer = (ctypes.c_byte * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


@dataclass
class DeviceTensor:
    """A device buffer for up to max_people persons of one tensor: (people, *per_person) of dtype."""

    pointer: int
    dtype: np.dtype
    per_person: tuple

    def nbytes(self, people: int) -> int:
        return people * int(np.prod(self.per_person, dtype=np.int64)) * self.dtype.itemsize


def gpu_graph(manifest: dict, stage: str) -> dict:
    """The graph a GPU backend runs for a stage: the manifest's GPU graph (fp16), else the stage's own."""
    graphs = manifest.get("gpu", {}).get("graphs", {})
    if stage in graphs:
        return graphs[stage]
    for entry in manifest["stages"]:
        if entry["name"] == stage:
            return {"file": entry["file"], "inputs": entry["inputs"], "outputs": entry["outputs"]}
    raise BundleError(f"manifest has no stage {stage!r}")


def per_person_shape(spec: dict, where: str) -> tuple:
    """A manifest tensor spec's shape without its person axis; BundleError unless axis 0 is the only free one."""
    shape = spec["shape"]
    if not shape or isinstance(shape[0], int) or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise BundleError(f"{where}: tensor {spec['name']} has shape {shape}; the GPU runtime needs a person "
                          "axis first and fixed sizes after it")
    return tuple(shape[1:])


def make_stage(backend: str, bundle, stage: str, device, stream: int):
    """The device-side executor of one stage graph on the named backend."""
    if backend == "tensorrt":
        from bodyrt.runtime.tensorrt_backend import TensorRTStage

        return TensorRTStage(bundle, stage, device)
    if backend == "cuda":
        from bodyrt.runtime.cuda_backend import OnnxRuntimeCudaStage

        return OnnxRuntimeCudaStage(bundle, stage, device, stream)
    raise BackendUnavailableError(f"unknown GPU backend {backend!r}; GPU backends: {', '.join(GPU_BACKENDS)}")


class DevicePipeline:
    """A bundle opened on a GPU backend; call it like bodyrt.runtime.Pipeline, or enqueue()/result().

    bundle: a read_bundle() Bundle. device: a CudaDevice (default: GPU 0); stream: an int stream to
    run on (default: a new one). max_people: buffers and engines are sized for this many persons per
    call (TensorRT: the engines' own limit). One frame is in flight at a time.
    """

    def __init__(self, bundle, backend: str = "tensorrt", device=None, stream=None, max_people=None,
                 cuda_graphs: bool = False):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        self.device = device if device is not None else CudaDevice(0)
        self.own_stream = stream is None
        self.stream = self.device.create_stream() if stream is None else int(stream)
        self.max_people = self._max_people(max_people)
        if cuda_graphs and backend != "tensorrt":
            raise InputError("cuda_graphs is available with the tensorrt backend only (ONNX Runtime's CUDA "
                             "provider allocates during runs, which a graph capture forbids)")
        self.cuda_graphs = cuda_graphs
        preprocessing = self.manifest["preprocessing"]
        self.mean = [float(value) for value in preprocessing["mean"]]
        self.std = [float(value) for value in preprocessing["std"]]
        self.tensors = {}
        self._allocations = []
        self.stages = {stage["name"]: make_stage(backend, bundle, stage["name"], self.device, self.stream)
                       for stage in self.manifest["stages"]}
        for name, stage in self.stages.items():
            for spec in [*stage.inputs, *stage.outputs]:
                self._tensor(spec["name"], spec["dtype"], spec["per_person"], f"stage {name}")
        self.segments = self._segments()
        self._allocate_host_side()
        self._graphs = {}
        self._pending = None
        self._staging = {"image": (0, 0), "device_image": (0, 0)}

    def _max_people(self, requested):
        engines = self.manifest.get("gpu", {}).get("tensorrt", {})
        if self.backend == "tensorrt" and engines:
            limit = int(engines["max_people"])
            if requested is not None and requested > limit:
                raise InputError(f"max_people={requested} exceeds the {limit} persons the bundle's engines were "
                                 f"built for; rebuild them with --max-people {requested}")
            return limit if requested is None else int(requested)
        return DEFAULT_MAX_PEOPLE if requested is None else int(requested)

    def _tensor(self, name: str, dtype, per_person: tuple, where: str) -> DeviceTensor:
        """The device buffer of tensor `name`, allocated on first use; its dtype and shape must agree."""
        dtype = np.dtype(dtype)
        tensor = self.tensors.get(name)
        if tensor is None:
            tensor = DeviceTensor(0, dtype, tuple(per_person))
            tensor.pointer = self.device.allocate(tensor.nbytes(self.max_people))
            self._allocations.append(tensor.pointer)
            self.tensors[name] = tensor
        elif tensor.dtype != dtype or tensor.per_person != tuple(per_person):
            raise BundleError(f"{self.bundle.path}: {where} sees tensor {name} as {dtype} {per_person}, elsewhere "
                              f"it is {tensor.dtype} {tensor.per_person}")
        return tensor

    def _dtype_of(self, name: str) -> np.dtype:
        """The dtype a stage graph expects for `name` (crops: float16 in fp16 graphs), else float32."""
        return self.tensors[name].dtype if name in self.tensors else np.dtype(np.float32)

    def _segments(self) -> list:
        """The steps grouped for launching: [(kind, [steps])]; kind is kernel, graphs or host."""
        segments = []
        for step in self.manifest["steps"]:
            op = step["op"]
            if op == "body_crop":
                crops, transforms = step["outputs"]
                size = step["crop_size"]
                self._tensor(crops, self._dtype_of(crops), (3, size, size), f"step {step['name']}")
                self._tensor(transforms, np.float32, (3, 3), f"step {step['name']}")
                self._tensor(step["boxes"], np.float32, (4,), f"step {step['name']}")
                segments.append(("kernel", [step]))
            elif op == "part_crops":
                size = step["crop_size"]
                self._tensor(step["output"], self._dtype_of(step["output"]), (len(step["parts"]), 3, size, size),
                             f"step {step['name']}")
                segments.append(("kernel", [step]))
            elif op == "graph":
                if self.cuda_graphs and segments and segments[-1][0] == "graphs":
                    segments[-1][1].append(step)
                else:
                    segments.append(("graphs", [step]))
            elif op == "pinhole":
                segments.append(("host", [step]))
            else:
                raise BundleError(f"{self.bundle.path}: manifest step {step.get('name')!r} has unknown op {op!r}")
        return segments

    def _allocate_host_side(self) -> None:
        """Page-locked buffers for the person boxes and every result read back, and the step events."""
        self.downloads = [name for name in dict.fromkeys(self.manifest["results"]) if name in self.tensors]
        for _, steps in self.segments:
            for step in steps:
                if step["op"] == "pinhole":
                    self.downloads += [step[key] for key in ("scale", "translation", "crop_transforms")
                                       if step[key] not in self.downloads]
        self.host = {}
        for name in ["person_boxes", *self.downloads]:
            tensor = self.tensors[name]
            self.host[name] = self.device.allocate_host(tensor.nbytes(self.max_people))
        self.events = [self.device.create_event() for _ in range(len(self.segments) + 1)]
        self.input_ready = self.device.create_event()

    # -- running -------------------------------------------------------------------------------

    def __call__(self, image: np.ndarray, person_boxes, channel_order: str = "rgb") -> Result:
        """image (H, W, 3) uint8 on the host; person_boxes (N, 4) x0, y0, x1, y1 pixels -> Result."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        image = np.ascontiguousarray(image)
        staging = self._grow("image", image.nbytes, host=True)
        host_array(staging, np.uint8, image.shape)[...] = image
        device_image = self._grow("device_image", image.nbytes, host=False)
        self.device.copy_to_device(device_image, staging, image.nbytes, self.stream)
        height, width, _ = image.shape
        self.enqueue(device_image, height, width, 3 * width, person_boxes, channel_order)
        return self.result()

    def _grow(self, key: str, nbytes: int, host: bool) -> int:
        pointer, size = self._staging[key]
        if size < nbytes:
            if pointer:
                self.device.synchronize_event(self.events[-1])  # an earlier frame may still read it
                (self.device.free_host if host else self.device.free)(pointer)
            pointer = (self.device.allocate_host if host else self.device.allocate)(nbytes)
            self._staging[key] = (pointer, nbytes)
        return pointer

    def enqueue(self, image: int, height: int, width: int, pitch: int, person_boxes, channel_order: str = "rgb",
                stream=None) -> None:
        """Queue one frame: image is a device pointer to (height, width, 3) uint8 rows `pitch` bytes apart.

        stream (int): the stream the image was produced on; this frame waits for it, and work queued
        on it afterwards waits for this frame. Nothing here blocks the host except the box checks.
        """
        if self._pending is not None:
            raise InputError("a frame is already queued: call result() before enqueueing the next one")
        boxes = self._check_boxes(person_boxes, width, height)
        people = len(boxes)
        device, stream_in = self.device, self.stream
        if stream is not None and int(stream) != stream_in:
            device.record_event(self.input_ready, int(stream))
            device.wait_event(stream_in, self.input_ready)
        device.record_event(self.events[0], stream_in)
        if people:
            host_array(self.host["person_boxes"], np.float32, (people, 4))[...] = boxes
            device.copy_to_device(self.tensors["person_boxes"].pointer, self.host["person_boxes"],
                                  self.tensors["person_boxes"].nbytes(people), stream_in)
        image_arguments = dict(image=int(image), height=height, width=width, pitch=pitch,
                               channel_order=channel_order, mean=self.mean, std=self.std)
        for index, (kind, steps) in enumerate(self.segments):
            if people and kind == "kernel":
                device.launch(self._crop_launch(steps[0], people, image_arguments), stream_in)
            elif people and kind == "graphs":
                self._run_graphs(steps, people)
            device.record_event(self.events[index + 1], stream_in)
        if people:
            for name in self.downloads:
                tensor = self.tensors[name]
                device.copy_to_host(self.host[name], tensor.pointer, tensor.nbytes(people), stream_in)
        device.record_event(self.events[-1], stream_in)
        if stream is not None and int(stream) != stream_in:
            device.wait_event(int(stream), self.events[-1])
        self._pending = people

    def _check_boxes(self, person_boxes, width: int, height: int) -> np.ndarray:
        scale = next(step["box_scale"] for step in self.manifest["steps"] if step["op"] == "body_crop")
        boxes = np.asarray(person_boxes, dtype=np.float64).reshape(-1, 4)
        boxes = check_person_boxes(boxes, width, height, scale)
        if len(boxes) > self.max_people:
            raise InputError(f"{len(boxes)} person boxes, but this pipeline takes at most {self.max_people} per "
                             "call (max_people; TensorRT engines: rebuild with --max-people)")
        return boxes.astype(np.float32)

    def _crop_launch(self, step: dict, people: int, image_arguments: dict):
        from bodyrt.kernels.launch import body_crops_launch, part_crops_launch

        if step["op"] == "body_crop":
            crops, transforms = (self.tensors[name] for name in step["outputs"])
            return body_crops_launch(**image_arguments, person_boxes=self.tensors[step["boxes"]].pointer,
                                     people=people, box_scale=step["box_scale"], crop_size=step["crop_size"],
                                     out=crops.pointer, transforms=transforms.pointer, dtype=crops.dtype.name)
        boxes, crops = self.tensors[step["boxes"]], self.tensors[step["output"]]
        return part_crops_launch(**image_arguments, part_boxes=boxes.pointer, people=people,
                                 boxes_per_person=boxes.per_person[0], parts=step["parts"], mirror=step["mirror"],
                                 crop_size=step["crop_size"], out=crops.pointer, dtype=crops.dtype.name)

    def _enqueue_graphs(self, steps: list, people: int) -> None:
        for step in steps:
            stage = self.stages[step["stage"]]
            addresses = {spec["name"]: self.tensors[spec["name"]].pointer for spec in [*stage.inputs, *stage.outputs]}
            stage.enqueue(people, addresses, self.stream)

    def _run_graphs(self, steps: list, people: int) -> None:
        if not self.cuda_graphs:
            self._enqueue_graphs(steps, people)
            return
        key = (tuple(step["stage"] for step in steps), people)
        if key in self._graphs:
            self.device.launch_graph(self._graphs[key], self.stream)
            return
        # The first run with this person count executes normally (TensorRT settles its shapes outside a
        # capture), then the same launches are captured, not executed, for the following frames.
        self._enqueue_graphs(steps, people)
        self.device.begin_capture(self.stream)
        try:
            self._enqueue_graphs(steps, people)
        finally:
            self._graphs[key] = self.device.end_capture(self.stream)

    def result(self) -> Result:
        """Wait for the queued frame and return its outputs (numpy copies) and per-step GPU times."""
        if self._pending is None:
            raise InputError("no frame queued: call enqueue() first")
        people, self._pending = self._pending, None
        start = time.perf_counter()
        self.device.synchronize_event(self.events[-1])
        tensors = {name: host_array(self.host[name], self.tensors[name].dtype,
                                    (people, *self.tensors[name].per_person)).copy() for name in self.downloads}
        timings = {}
        for index, (kind, steps) in enumerate(self.segments):
            if kind == "host":
                step = steps[0]
                tensors.update(pinhole_camera(tensors[step["scale"]], tensors[step["translation"]],
                                              tensors[step["crop_transforms"]], step["focal_length"],
                                              step["crop_size"]))
                continue
            name = "+".join(dict.fromkeys(step["name"] for step in steps))
            timings[name] = timings.get(name, 0.0) + self.device.elapsed_ms(self.events[index], self.events[index + 1])
        timings["wait"] = (time.perf_counter() - start) * 1000.0
        outputs = {name: tensors[name] for name in self.manifest["results"]}
        precision = self.manifest.get("gpu", {}).get("precision", "fp32")
        return Result(outputs=outputs, timings_ms=timings,
                      info={"backend": self.backend, "precision": precision, "device": self.device.name})

    def close(self) -> None:
        for executable in self._graphs.values():
            self.device.destroy_graph(executable)
        for stage in self.stages.values():
            stage.close()
        for pointer in self._allocations:
            self.device.free(pointer)
        for pointer in self.host.values():
            self.device.free_host(pointer)
        for key, (pointer, _) in self._staging.items():
            if pointer:
                (self.device.free_host if key == "image" else self.device.free)(pointer)
        for event in [*self.events, self.input_ready]:
            self.device.destroy_event(event)
        if self.own_stream:
            self.device.destroy_stream(self.stream)
        self._graphs, self._allocations, self.host, self.stages = {}, [], {}, {}


def open_device_pipeline(path, backend: str = "tensorrt", device=None, stream=None, max_people=None,
                         cuda_graphs: bool = False) -> DevicePipeline:
    """Verify a bundle (engine files included) and open it on a GPU backend."""
    return DevicePipeline(read_bundle(path), backend=backend, device=device, stream=stream, max_people=max_people,
                          cuda_graphs=cuda_graphs)


def available_gpu_backends() -> list:
    """The GPU backends usable here: a GPU with its driver, plus tensorrt or onnxruntime-gpu."""
    import importlib.util

    from bodyrt.kernels import gpu_available_reason

    if gpu_available_reason() is not None:
        return []
    found = []
    if importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None:
        found.append("tensorrt")
    try:
        onnxruntime = import_onnxruntime()
    except BackendUnavailableError:
        return found
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        found.append("cuda")
    return found


def make_gpu_runner(backend: str, model_path, threads: int = 2):
    """A per-stage runner with numpy in and out (the Pipeline interface) on a GPU backend."""
    if backend == "tensorrt":
        from bodyrt.runtime.tensorrt_backend import TensorRTRunner

        return TensorRTRunner(model_path)
    if backend == "cuda":
        from bodyrt.runtime.cuda_backend import OnnxRuntimeCudaRunner

        return OnnxRuntimeCudaRunner(model_path)
    raise BackendUnavailableError(f"unknown GPU backend {backend!r}; GPU backends: {', '.join(GPU_BACKENDS)}")


def bundle_of(model_path):
    """(bundle, stage name) for a stage ONNX file inside a bundle, as make_runner receives it."""
    from pathlib import Path

    model_path = Path(model_path)
    bundle = read_bundle(model_path.parent, verify_hashes=False)  # the Pipeline has verified it already
    for stage in bundle.manifest["stages"]:
        if stage["file"] == model_path.name:
            return bundle, stage["name"]
    raise BundleError(f"{model_path}: not a stage graph of the bundle in {model_path.parent}")
