"""The `tensorrt` backend: a bundle's TensorRT engines, checked against this machine, then run.

Engines only load with the TensorRT version and on the GPU they were built for. The manifest
records both (bodyrt.export.tensorrt); the check compares them with this machine before anything is
deserialised and says how to rebuild. Execution is TensorRT 10/11's name-based API: set_input_shape,
set_tensor_address, execute_async_v3 on the caller's stream.

tensorrt and cuda-python are imported lazily; a missing one raises BackendUnavailableError naming it.
"""

import numpy as np

from bodyrt.errors import BackendUnavailableError, BundleError, InputError
from bodyrt.runtime.device import CudaDevice, host_array, import_cuda_driver
from bodyrt.runtime.packages import gpu_extra_hint

PLATFORM_KEYS = (("tensorrt_version", "TensorRT"), ("gpu_name", "GPU"), ("compute_capability", "compute capability"))


def import_tensorrt():
    """The tensorrt module, or BackendUnavailableError saying what to install."""
    try:
        import tensorrt
    except (ImportError, OSError) as error:  # OSError: the bindings without their libnvinfer
        raise BackendUnavailableError(f"the tensorrt backend needs the tensorrt package ({error}); "
                                      f"{gpu_extra_hint()}") from None
    return tensorrt


def current_platform(device=None) -> dict:
    """This machine as engine metadata: TensorRT version, GPU name, compute capability ("8.6")."""
    trt = import_tensorrt()
    device = device if device is not None else CudaDevice(0)
    return {"tensorrt_version": trt.__version__, "gpu_name": device.name,
            "compute_capability": device.compute_capability}


def platform_mismatch(recorded: dict, current: dict) -> list:
    """What differs between the platform an engine was built on and this one, as phrases ([] if nothing)."""
    return [f"{label} {recorded.get(key)} (this machine: {current.get(key)})"
            for key, label in PLATFORM_KEYS if str(recorded.get(key)) != str(current.get(key))]


def rebuild_command(bundle_path, precision: str) -> str:
    return f"python -m bodyrt.export.tensorrt --bundle {bundle_path} --precision {precision}"


def check_engine_platform(engine_path, recorded: dict, current: dict, bundle_path) -> None:
    """BundleError with the rebuild command when the engine was built for another TensorRT or GPU."""
    problems = platform_mismatch(recorded, current)
    if problems:
        raise BundleError(
            f"{engine_path}: this TensorRT engine was built for {'; '.join(problems)}, and engines only load "
            f"where they were built. Rebuild the bundle's engines on this machine: "
            f"{rebuild_command(bundle_path, recorded.get('precision', 'fp32'))} (or run its ONNX graphs with "
            "the cuda backend)")


def engine_entry(bundle):
    """The manifest's TensorRT section (manifest.Engines), or BundleError saying how to add engines."""
    entry = bundle.manifest.gpu.tensorrt if bundle.manifest.gpu is not None else None
    if entry is None:
        raise BundleError(f"{bundle.path}: the bundle has no TensorRT engines; export with --engine tensorrt or "
                          f"build them here: {rebuild_command(bundle.path, 'fp16')}")
    return entry


class TensorRTStage:
    """One stage engine on the device: inputs/outputs as {"name", "dtype", "per_person"} specs.

    The platform check runs before the engine file is deserialised.
    """

    def __init__(self, bundle, stage: str, device):
        trt = import_tensorrt()
        entry = engine_entry(bundle)
        if stage not in entry.engines:
            raise BundleError(f"{bundle.path}: the manifest lists no TensorRT engine for stage {stage!r}")
        engine_path = bundle.file(entry.engines[stage])
        recorded = {"tensorrt_version": entry.tensorrt_version, "gpu_name": entry.gpu_name,
                    "compute_capability": entry.compute_capability, "precision": entry.precision}
        check_engine_platform(engine_path, recorded, current_platform(device), bundle.path)
        self.stage = stage
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{engine_path}: TensorRT could not deserialise the engine (see its log above); "
                              f"rebuild it: {rebuild_command(bundle.path, entry.precision)}")
        self.context = self.engine.create_execution_context()
        self.device, self.trt = device, trt
        self.dedicated = {}  # person count -> execution context of the CUDA graphs captured for it
        self.scratch = None  # (pointer, bytes): device memory the dedicated contexts share
        self.inputs, self.outputs = [], []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            spec = {"name": name, "dtype": np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name,
                    "per_person": tuple(self.engine.get_tensor_shape(name))[1:]}
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)
        self._check_against(bundle.manifest.gpu_graph(stage), engine_path)

    def _check_against(self, graph, engine_path) -> None:
        """The engine's tensors must be the graph's (names and dtypes), or the bundle is inconsistent."""
        expected = {(spec.name, spec.dtype) for spec in [*graph.inputs, *graph.outputs]}
        found = {(spec["name"], spec["dtype"]) for spec in [*self.inputs, *self.outputs]}
        if expected != found:
            raise BundleError(f"{engine_path}: engine tensors {sorted(found)} differ from the manifest's graph "
                              f"{graph.file} {sorted(expected)}; rebuild the engines")

    def dedicated_context(self, people: int):
        """The execution context of the CUDA graphs for `people` persons, created at first use.

        TensorRT captures a context's kernels for its shapes of the moment: a graph must keep a context
        whose shapes no other person count changes. These contexts share one block of device memory
        (USER_MANAGED), enough for the largest profile: one frame runs at a time on one stream.
        """
        if people not in self.dedicated:
            trt = self.trt
            if self.scratch is None:
                size = int(self.engine.device_memory_size_v2)
                self.scratch = (self.device.allocate(size), size)
            context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is None:
                raise BackendUnavailableError(f"stage {self.stage}: TensorRT could not create an execution context "
                                              f"for {people} persons (see its log)")
            context.set_device_memory(*self.scratch)
            self.dedicated[people] = context
        return self.dedicated[people]

    def enqueue(self, people: int, addresses: dict, stream: int, dedicated_context: bool = False) -> None:
        """Queue the engine for `people` persons on `stream`; addresses: tensor name -> device pointer.

        dedicated_context: run on the context kept for this person count (for CUDA graph capture).
        """
        if dedicated_context:
            context = self.dedicated_context(people)
        else:
            context = self.context
        for spec in self.inputs:
            if not context.set_input_shape(spec["name"], (people, *spec["per_person"])):
                raise InputError(f"stage {self.stage}: TensorRT rejected {people} persons for input {spec['name']} "
                                 "(outside the engine's optimisation profile)")
        for name, address in addresses.items():
            if not context.set_tensor_address(name, address):
                raise BackendUnavailableError(f"stage {self.stage}: TensorRT refused the address {address:#x} for "
                                              f"tensor {name} (not a tensor of the engine, or a null pointer)")
        if not context.execute_async_v3(stream):
            raise BackendUnavailableError(f"stage {self.stage}: TensorRT execute_async_v3 failed (see its log)")

    def close(self) -> None:
        """Drop the contexts and the engine, then free the shared context memory (the caller synchronised)."""
        self.dedicated, self.context = {}, None
        self.engine = self.runtime = None
        if self.scratch is not None:
            self.device.free(self.scratch[0])
            self.scratch = None


class TensorRTRunner:
    """A stage engine behind the runner interface (numpy in, numpy out), for bodyrt.runtime.Pipeline.

    Device and page-locked host buffers are allocated once, for the engine's largest person batch.
    """

    name = "tensorrt"

    def __init__(self, bundle, stage: str, device_ordinal: int = 0):
        import_tensorrt()  # fail at once, naming the missing package
        import_cuda_driver()
        self.bundle, self.stage_name = bundle, stage
        self.device_ordinal = device_ordinal
        self.stage = None
        self.precision_ran = None

    def activate(self):
        bundle, stage = self.bundle, self.stage_name
        self.device = CudaDevice(self.device_ordinal)
        self.stream = self.device.create_stream()
        self.event = self.device.create_event()
        self.stage = TensorRTStage(bundle, stage, self.device)
        self.max_people = engine_entry(bundle).max_people
        self.precision_ran = bundle.manifest.gpu_graph(stage).precision
        self.buffers = {}
        for spec in [*self.stage.inputs, *self.stage.outputs]:
            per_person = int(np.prod(spec["per_person"], dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
            nbytes = self.max_people * per_person
            self.buffers[spec["name"]] = (self.device.allocate(nbytes), self.device.allocate_host(nbytes))
        return self

    def infer(self, feeds: dict) -> dict:
        people = len(next(iter(feeds.values())))
        if people == 0:  # nobody in the frame: what the CPU backends return, without touching the engine
            return {spec["name"]: np.zeros((0, *spec["per_person"]), spec["dtype"]) for spec in self.stage.outputs}
        if not 1 <= people <= self.max_people:
            raise InputError(f"stage {self.stage.stage}: {people} persons; the engine takes 1 to {self.max_people}")
        self.device.make_current()  # infer may run on another thread than activate
        for spec in self.stage.inputs:
            device_pointer, host_pointer = self.buffers[spec["name"]]
            staged = host_array(host_pointer, spec["dtype"], (people, *spec["per_person"]))
            staged[...] = feeds[spec["name"]]  # casts float32 crops to a float16 engine's input
            self.device.copy_to_device(device_pointer, host_pointer, staged.nbytes, self.stream)
        self.stage.enqueue(people, {name: pointers[0] for name, pointers in self.buffers.items()}, self.stream)
        results = {}
        for spec in self.stage.outputs:
            device_pointer, host_pointer = self.buffers[spec["name"]]
            results[spec["name"]] = host_array(host_pointer, spec["dtype"], (people, *spec["per_person"]))
            self.device.copy_to_host(host_pointer, device_pointer, results[spec["name"]].nbytes, self.stream)
        self.device.record_event(self.event, self.stream)
        self.device.synchronize_event(self.event)
        return {name: array.copy() for name, array in results.items()}

    def deactivate(self):
        if self.stage is None:
            return
        self.device.make_current()
        self.stage.close()
        for device_pointer, host_pointer in self.buffers.values():
            self.device.free(device_pointer)
            self.device.free_host(host_pointer)
        self.device.destroy_event(self.event)
        self.device.destroy_stream(self.stream)
        self.device.close()  # the runner opened the device: release its primary context
        self.stage = None
