"""The device executor: a bundle's steps on a GPU, for the `tensorrt` and `cuda` backends.

    pipeline = open_bundle("bundle/", backend="tensorrt")
    result = pipeline(image_rgb_uint8, [[x0, y0, x1, y1]])          # host image in, numpy out

    # zero copy: an image already on the GPU (PyTorch, CuPy, pycuda), its row pitch and stream
    pipeline.enqueue(frame.data_ptr(), height, width, frame.stride(0), boxes,
                     stream=torch.cuda.current_stream().cuda_stream)
    result = pipeline.result()                                     # the only synchronisation

Device buffers for every tensor are allocated once, for the largest person batch; everything runs
on one stream (the user's stream waits for it, not the host); nothing is synchronised until
collect() reads the outputs. The crops are cut by the CUDA kernel (bodyrt.kernels) straight from
the image and from the body engine's part boxes. With cuda_graphs=True the consecutive graph steps
are captured once per person count and replayed as one CUDA graph (the crop kernels stay outside:
their image pointer changes every frame). Pinhole steps run on the host after the read-back.
"""

import time

import numpy as np

from bodyrt.errors import BundleError, InputError
from bodyrt.errors import BodyrtError
from bodyrt.runtime.device import CudaDevice, DeviceTensor, host_array
from bodyrt.runtime.kernel_check import check_crop_kernel
from bodyrt.runtime.manifest import BodyCropStep, GraphStep, PartCropsStep, PinholeStep
from bodyrt.runtime.pipeline import Frame, pinhole_step

DEFAULT_MAX_PEOPLE = 8


class DeviceExecutor:
    """The steps on a device. make_stage(bundle, stage name, device, stream) -> a device stage with
    inputs/outputs ({"name", "dtype", "per_person"}), enqueue(people, addresses, stream), close().

    device: a CudaDevice (default: GPU 0); stream: an int stream to run on (default: a new one).
    max_people: buffers and engines are sized for this many persons per call (TensorRT: the engines'
    own limit). One frame is in flight at a time.
    """

    def __init__(self, bundle, backend: str, make_stage, device=None, stream=None, max_people=None,
                 cuda_graphs: bool = False):
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.backend = backend
        if cuda_graphs and backend != "tensorrt":
            raise InputError("cuda_graphs is available with the tensorrt backend only (ONNX Runtime's CUDA "
                             "provider allocates during runs, which a graph capture forbids)")
        self.own_device = device is None
        self.device = device if device is not None else CudaDevice(0)
        check_crop_kernel(self.device)  # a kernel this GPU or driver cannot load fails here, not at a frame
        self.own_stream = stream is None
        self.stream = self.device.create_stream() if stream is None else int(stream)
        self.max_people = self._max_people(max_people)
        self.cuda_graphs = cuda_graphs
        gpu = self.manifest.gpu
        self.precision = gpu.precision if gpu is not None else "fp32"
        self.stage_precisions = {stage.name: self.manifest.gpu_graph(stage.name).precision
                                 for stage in self.manifest.stages}
        preprocessing = self.manifest.preprocessing
        self.mean = [float(value) for value in preprocessing.mean]
        self.std = [float(value) for value in preprocessing.std]
        self.pixel_scale = float(preprocessing.pixel_scale)
        self.tensors = {}
        self._allocations = []
        self.stages = {stage.name: make_stage(bundle, stage.name, self.device, self.stream)
                       for stage in self.manifest.stages}
        for name, stage in self.stages.items():
            for spec in [*stage.inputs, *stage.outputs]:
                self._tensor(spec["name"], spec["dtype"], spec["per_person"], f"stage {name}")
        self._allocate_steps()
        self._allocate_host_side()
        self._graphs = {}
        self._staging = {"image": (0, 0), "device_image": (0, 0)}
        self.in_flight = False  # a frame queued by end() and not yet synchronised by collect()
        self.closed = False

    def _max_people(self, requested):
        engines = self.manifest.gpu.tensorrt if self.manifest.gpu is not None else None
        if self.backend == "tensorrt" and engines is not None:
            limit = engines.max_people
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

    def _allocate_steps(self) -> None:
        """Buffers for what the crop steps write; the tensors pinhole steps read are read back."""
        self.host_reads = []
        for step in self.manifest.steps:
            where = f"step {step.name}"
            if isinstance(step, BodyCropStep):
                size = step.crop_size
                self._tensor(step.crops, self._dtype_of(step.crops), (3, size, size), where)
                self._tensor(step.transforms, np.float32, (3, 3), where)
                self._tensor(step.boxes, np.float32, (4,), where)
            elif isinstance(step, PartCropsStep):
                boxes = self.tensors.get(step.boxes)
                if boxes is None or boxes.dtype != np.float32 or len(boxes.per_person) != 2 \
                        or boxes.per_person[1] != 3:
                    found = "no stage writes it" if boxes is None else f"it is {boxes.dtype} {boxes.per_person}"
                    raise BundleError(f"{self.bundle.path}: {where} reads {step.boxes} as float32 (people, boxes, 3) "
                                      f"cx, cy, size (the crop kernel's const float*), but {found}")
                size = step.crop_size
                self._tensor(step.output, self._dtype_of(step.output), (len(step.parts), 3, size, size), where)
            elif isinstance(step, PinholeStep):
                self.host_reads += [name for name in step.inputs() if name not in self.host_reads]
            elif not isinstance(step, GraphStep):
                raise BundleError(f"{self.bundle.path}: step {step.name!r} has no device implementation")

    def _allocate_host_side(self) -> None:
        """Page-locked buffers for the person boxes and every result read back, and the step events."""
        self.downloads = [name for name in dict.fromkeys([*self.manifest.results, *self.host_reads])
                          if name in self.tensors]
        self.host = {}
        for name in ["person_boxes", *self.downloads]:
            self.host[name] = self.device.allocate_host(self.tensors[name].nbytes(self.max_people))
        self.events = [self.device.create_event() for _ in range(len(self.manifest.steps) + 2)]
        self.input_ready = self.device.create_event()

    # -- frames --------------------------------------------------------------------------------

    def host_frame(self, image: np.ndarray, boxes, channel_order: str) -> Frame:
        """Copy a host image to the device (through page-locked staging) as a frame."""
        self.device.make_current()  # the caller's thread may not be the one that opened the device
        image = np.ascontiguousarray(image)
        staging = self._grow("image", image.nbytes, host=True)
        host_array(staging, np.uint8, image.shape)[...] = image
        device_image = self._grow("device_image", image.nbytes, host=False)
        self.device.copy_to_device(device_image, staging, image.nbytes, self.stream)
        height, width, _ = image.shape
        return Frame(device_image, height, width, 3 * width, boxes, channel_order, None)

    def _grow(self, key: str, nbytes: int, host: bool) -> int:
        pointer, size = self._staging[key]
        if size < nbytes:
            if pointer:
                self.device.synchronize_event(self.events[-1])  # an earlier frame may still read it
                (self.device.free_host if host else self.device.free)(pointer)
            pointer = (self.device.allocate_host if host else self.device.allocate)(nbytes)
            self._staging[key] = (pointer, nbytes)
        return pointer

    # -- steps ---------------------------------------------------------------------------------

    def begin(self, frame: Frame) -> None:
        """Wait for the caller's stream, upload the boxes; nothing here blocks the host."""
        if isinstance(frame.image, np.ndarray):
            raise InputError("the device executor takes a device pointer; use host_frame() for a numpy image")
        self.frame, self.people = frame, len(frame.boxes)
        self.marks, self.group, self.deferred = [], [], []
        device, stream = self.device, self.stream
        device.make_current()  # the caller's thread may not be the one that opened the device
        if frame.stream is not None and int(frame.stream) != stream:
            device.record_event(self.input_ready, int(frame.stream))
            device.wait_event(stream, self.input_ready)
        device.record_event(self.events[0], stream)
        if self.people:
            host_array(self.host["person_boxes"], np.float32, (self.people, 4))[...] = frame.boxes
            device.copy_to_device(self.tensors["person_boxes"].pointer, self.host["person_boxes"],
                                  self.tensors["person_boxes"].nbytes(self.people), stream)
        self.image_arguments = dict(image=int(frame.image), height=frame.height, width=frame.width,
                                    pitch=frame.pitch, channel_order=frame.channel_order, mean=self.mean,
                                    std=self.std, pixel_scale=self.pixel_scale)

    def run(self, step) -> None:
        if isinstance(step, GraphStep):
            self.group.append(step)
            if not self.cuda_graphs:
                self._flush()
            return
        self._flush()
        if isinstance(step, PinholeStep):
            self.deferred.append(step)  # host arithmetic on read-back tensors: in collect()
            return
        if self.people:
            self.device.launch(self._crop_launch(step), self.stream)
        self._mark(step.name)

    def _mark(self, label: str) -> None:
        self.device.record_event(self.events[len(self.marks) + 1], self.stream)
        self.marks.append(label)

    def _flush(self) -> None:
        """Run the graph steps gathered so far (one CUDA graph when cuda_graphs) and time them together."""
        if not self.group:
            return
        steps, self.group = self.group, []
        if self.people:
            self._run_graphs(steps, self.people)
        self._mark("+".join(step.name for step in steps))

    def end(self) -> None:
        self._flush()
        device, stream = self.device, self.stream
        if self.people:
            for name in self.downloads:
                tensor = self.tensors[name]
                device.copy_to_host(self.host[name], tensor.pointer, tensor.nbytes(self.people), stream)
        device.record_event(self.events[-1], stream)
        self.in_flight = True
        if self.frame.stream is not None and int(self.frame.stream) != stream:
            device.wait_event(int(self.frame.stream), self.events[-1])

    def _crop_launch(self, step):
        from bodyrt.kernels.launch import body_crops_launch, part_crops_launch

        if isinstance(step, BodyCropStep):
            crops, transforms = self.tensors[step.crops], self.tensors[step.transforms]
            return body_crops_launch(**self.image_arguments, person_boxes=self.tensors[step.boxes].pointer,
                                     people=self.people, box_scale=step.box_scale, crop_size=step.crop_size,
                                     out=crops.pointer, transforms=transforms.pointer, dtype=crops.dtype.name)
        boxes, crops = self.tensors[step.boxes], self.tensors[step.output]
        return part_crops_launch(**self.image_arguments, part_boxes=boxes.pointer, people=self.people,
                                 boxes_per_person=boxes.per_person[0], parts=list(step.parts),
                                 mirror=list(step.mirror), crop_size=step.crop_size, out=crops.pointer,
                                 dtype=crops.dtype.name)

    def _enqueue_graphs(self, steps: list, people: int, for_graph: bool = False) -> None:
        for step in steps:
            stage = self.stages[step.stage]
            addresses = {spec["name"]: self.tensors[spec["name"]].pointer for spec in [*stage.inputs, *stage.outputs]}
            if for_graph:  # its own execution context per person count: a captured graph keeps its shapes
                stage.enqueue(people, addresses, self.stream, dedicated_context=True)
            else:
                stage.enqueue(people, addresses, self.stream)

    def _run_graphs(self, steps: list, people: int) -> None:
        if not self.cuda_graphs:
            self._enqueue_graphs(steps, people)
            return
        key = (tuple(step.stage for step in steps), people)
        if key in self._graphs:
            self.device.launch_graph(self._graphs[key], self.stream)
            return
        # The first run with this person count executes normally (TensorRT settles its shapes outside a
        # capture), then the same launches are captured, not executed, for the following frames.
        # Each graph gets the stages' execution contexts of its person count (TensorRT: one context per
        # captured graph); a frame with another count would otherwise change the shapes under a graph.
        self._enqueue_graphs(steps, people, for_graph=True)
        self.device.begin_capture(self.stream)
        try:
            self._enqueue_graphs(steps, people, for_graph=True)
        except BaseException:
            try:  # a failure invalidates the capture; ending it reports only that, so the failure is raised
                self.device.end_capture(self.stream)
            except BodyrtError:
                pass
            raise
        self._graphs[key] = self.device.end_capture(self.stream)

    def collect(self) -> tuple:
        """Wait for the frame; (tensors read back + the deferred host steps' outputs, step timings)."""
        start = time.perf_counter()
        people = self.people
        self.device.synchronize_event(self.events[-1])
        self.in_flight = False
        tensors = {name: host_array(self.host[name], self.tensors[name].dtype,
                                    (people, *self.tensors[name].per_person)).copy() for name in self.downloads}
        for step in self.deferred:
            tensors.update(pinhole_step(step, tensors))
        timings = {}
        for index, label in enumerate(self.marks):
            timings[label] = self.device.elapsed_ms(self.events[index], self.events[index + 1])
        timings["wait"] = (time.perf_counter() - start) * 1000.0
        return tensors, timings

    def info(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "device": self.device.name}

    def close(self) -> None:
        """Wait for a frame still in flight, then free everything; release the device if it opened it."""
        if self.closed:
            return
        self.closed = True
        self.device.make_current()
        # Whatever was queued (a frame without result(), or one that failed half-way) finishes before
        # its buffers are freed.
        self.device.record_event(self.events[-1], self.stream)
        self.device.synchronize_event(self.events[-1])
        self.in_flight = False
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
        self._staging = {"image": (0, 0), "device_image": (0, 0)}
        if self.own_device:
            self.device.close()
