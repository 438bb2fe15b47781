"""The GPU export and runtime paths: on the CPU wherever they can run, on a GPU where there is one.

On the CPU:
- the fp16 graphs run in ONNX Runtime against the fp32 ones (per stage and end to end);
- the device executor (the GPU runtime's orchestration (device buffers, crop kernel launches, engine
  calls, read-back, pinhole), runs on HostDevice: CudaDevice's interface on host memory, whose kernel
  launches go to the host build of crops.cu, with a stand-in `tensorrt` module whose "engines" run
  the bundle's (fp32 or fp16) graphs in ONNX Runtime. TensorRT's real names are checked separately
  (test_tensorrt_api.py);
- the engine platform check, ONNX Runtime's silent CPU fallback (for real), missing packages, the
  manifest entries and the engine build calls.
On a GPU (pytest.mark.gpu; skipped elsewhere): the same pipelines on real engines and the real kernel.

Tolerances. fp32 on the GPU: 1e-4 m, the bundle's own CPU-vs-PyTorch bound. fp16: 1e-3 m on
vertices and joints, 1e-3 on parameters and 0.5 px on part boxes. Only the convolutional backbones
run in float16 (11-bit significand, 4.9e-4 relative per stored activation; regressors and SMPL-X stay
float32), so the pooled features carry about 1e-3 relative error; through the regressor that moves
rotations by well under 1e-3 rad, and 1e-3 rad at the end of a 0.9 m kinematic chain moves a
vertex by under 0.9 mm. Measured here with the demo weights: 5.7e-5 m on vertices, 5.3e-5 on
parameters, 0.015 px on part boxes. The untrained demo weights are less sensitive than trained
ones, which is why the bound is the analytical one, not a multiple of the measurement.
"""

import ctypes
import itertools
import json
import shutil
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from bodyrt.errors import BackendUnavailableError, BundleError, ExportError, InputError
from bodyrt.runtime.bundle import read_bundle

FP32_TOLERANCE_M = 1e-4
FP16_TOLERANCE_M = 1e-3
FP16_PARAMETER_TOLERANCE = 1e-3
FP16_BOX_TOLERANCE_PX = 0.5
HOST_PLATFORM = {"tensorrt_version": "11.4.0.106", "gpu_name": "Host Emulation", "compute_capability": "0.0"}
MAX_PEOPLE = 4


def scene(demo_files, size=(480, 640), people=2, seed=2):
    from bodyrt.export.fixtures.scenes import sample_scene

    image, box = sample_scene(demo_files[1], seed=seed, size=size)
    shifts = np.array([[0, 0, 0, 0], [-60, 20, -60, 20], [90, -10, 90, -10]], dtype=np.float32)[:people]
    return image, box + shifts


# ---------------------------------------------------------------------------------------------
# Stand-ins: a device on host memory and a `tensorrt` module whose engines run in ONNX Runtime.


class EmulationError(AssertionError):
    """What CUDA or TensorRT would refuse (or do wrong, silently) on a real GPU, caught by the emulation."""


# CUDA's launch limits (compute capability >= 3.0): threads per block, block and grid dimensions.
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


class HostDevice:
    """CudaDevice's interface on host memory: pointers are numpy buffer addresses, work runs at once.

    Strict where CUDA is (EmulationError, or BackendUnavailableError worded as CudaDevice.call's):
    - the context is current only on the thread that opened the device, as cuCtxSetCurrent makes it,
      until make_current() on another thread: any call elsewhere is CUDA_ERROR_INVALID_CONTEXT;
    - fresh buffers are filled with 0xFF bytes (NaN as floats), so reading what nothing wrote shows up;
      freed ones are poisoned the same way and kept, and any later use of them is refused, as is
      freeing while queued work has not been synchronised (an event synchronised after the work);
    - a launch over CUDA's grid or block limits is refused;
    - work on a capturing stream is recorded, not run; end_capture gives a graph that replays it, and a
      failure during the capture invalidates it (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED at end_capture).
    The emulation runs each call at once, so "pending" means: queued since the last synchronisation.
    """

    ordinal = 0
    name = HOST_PLATFORM["gpu_name"]
    compute_capability = HOST_PLATFORM["compute_capability"]
    driver_version = 13000
    handles = itertools.count(1)  # streams, events and graphs: unique across devices
    instances = []  # every device opened: HostContext finds its memory and captures among them

    def __init__(self):
        self.buffers, self.freed = {}, {}
        self.launches = []
        self.current = threading.local()
        self.current.flag = True  # CudaDevice.__init__ makes the primary context current on its thread
        self.pending = False
        self.capture = None  # (stream, [recorded work], invalid?) while a capture runs
        self.graphs, self.replays, self.closed = {}, [], False
        HostDevice.instances.append(self)

    @classmethod
    def capturing(cls, stream):
        """The device capturing `stream`, or None."""
        return next((device for device in cls.instances if device.capture and device.capture[0] == stream), None)

    @classmethod
    def holding(cls, pointer: int, nbytes: int = 1):
        """The live buffer of any device holding [pointer, pointer + nbytes); EmulationError if none."""
        errors = []
        for device in cls.instances:
            try:
                return device.owner(pointer, nbytes)
            except EmulationError as error:
                errors.append(str(error))
        raise EmulationError("; ".join(error for error in errors if "freed" in error) or
                             f"{pointer:#x} (+{nbytes} bytes) is not memory of any device")

    def _require_context(self, function: str) -> None:
        if not getattr(self.current, "flag", False):
            raise BackendUnavailableError(f"CUDA {function} failed on GPU 0: CUDA_ERROR_INVALID_CONTEXT")

    def make_current(self) -> None:
        self.current.flag = True

    def call(self, function, *args):
        self._require_context(function)
        if function == "cuDriverGetVersion":
            return self.driver_version
        raise EmulationError(f"HostDevice does not emulate {function}")

    def kernels(self):
        from bodyrt.kernels.launch import KERNEL_NAMES

        self._require_context("cuModuleLoadData")
        return {name: name for name in KERNEL_NAMES}

    def owner(self, pointer: int, nbytes: int = 1):
        """The live buffer holding [pointer, pointer + nbytes), or EmulationError (freed or unknown)."""
        for start, buffer in self.buffers.items():
            if start <= pointer and pointer + nbytes <= start + buffer.nbytes:
                return buffer
        for start, buffer in self.freed.items():
            if start <= pointer < start + buffer.nbytes:
                raise EmulationError(f"use of freed memory at {pointer:#x}")
        raise EmulationError(f"{pointer:#x} (+{nbytes} bytes) is not memory of this device")

    def allocate(self, nbytes):
        self._require_context("cuMemAlloc")
        buffer = np.full(max(nbytes, 1), 0xFF, dtype=np.uint8)
        self.buffers[buffer.ctypes.data] = buffer
        return buffer.ctypes.data

    def free(self, pointer):
        self._require_context("cuMemFree")
        if self.pending:
            raise EmulationError("memory freed while queued work may still use it (synchronise first)")
        buffer = self.buffers.pop(pointer, None)
        if buffer is None:
            raise EmulationError(f"free of {pointer:#x}, which is not a live allocation")
        buffer[...] = 0xFF  # poisoned
        self.freed[pointer] = buffer

    allocate_host, free_host = allocate, free

    def create_stream(self):
        self._require_context("cuStreamCreate")
        return next(HostDevice.handles)

    create_event = create_stream

    def destroy_stream(self, handle):
        self._require_context("cuStreamDestroy")

    destroy_event = destroy_stream

    def _queue(self, stream, work, *pointers) -> None:
        """Run `work` now, or record it when `stream` is being captured; pointers must be live."""
        for pointer, nbytes in pointers:
            self.owner(pointer, nbytes)
        if self.capture is not None and self.capture[0] == stream:
            self.capture[1].append(work)
            return
        self.pending = True
        work()

    def record_event(self, event, stream):
        self._require_context("cuEventRecord")
        if self.capture is None or self.capture[0] != stream:
            self.pending = True

    def wait_event(self, stream, event):
        self._require_context("cuStreamWaitEvent")

    def synchronize_event(self, event):
        self._require_context("cuEventSynchronize")
        self.pending = False

    def elapsed_ms(self, start, end):
        self._require_context("cuEventElapsedTime")
        return 0.0

    def copy_to_device(self, destination, source, nbytes, stream):
        self._require_context("cuMemcpyAsync")
        self._queue(stream, lambda: ctypes.memmove(destination, source, nbytes), (destination, nbytes),
                    (source, nbytes))

    copy_to_host = copy_to_device

    def launch(self, launch, stream):
        from bodyrt.kernels.host import host_launch
        from bodyrt.kernels.launch import KERNEL_PARAMETERS

        self._require_context("cuLaunchKernel")
        threads = launch.block[0] * launch.block[1] * launch.block[2]
        if threads > MAX_THREADS_PER_BLOCK or any(b > m or b < 1 for b, m in zip(launch.block, MAX_BLOCK)) \
                or any(g > m or g < 1 for g, m in zip(launch.grid, MAX_GRID)):
            raise BackendUnavailableError(f"CUDA cuLaunchKernel failed on GPU 0: CUDA_ERROR_INVALID_VALUE "
                                          f"(grid {launch.grid}, block {launch.block})")
        for (name, ctype), value in zip(KERNEL_PARAMETERS[launch.kernel], launch.arguments):
            if ctype is ctypes.c_void_p and name != "image":  # the image may be the caller's own memory
                self.owner(value.value)
            elif ctype is ctypes.c_void_p and value.value in self.freed:
                raise EmulationError(f"{launch.kernel}: image at freed memory {value.value:#x}")
        self.launches.append(launch.kernel)
        self._queue(stream, lambda: host_launch(launch))

    def begin_capture(self, stream):
        self._require_context("cuStreamBeginCapture")
        if self.capture is not None:
            raise BackendUnavailableError("CUDA cuStreamBeginCapture failed on GPU 0: CUDA_ERROR_ILLEGAL_STATE")
        self.capture = (stream, [], [False])

    def invalidate_capture(self) -> None:
        """A failure inside a capture: CUDA invalidates the whole capture."""
        if self.capture is not None:
            self.capture[2][0] = True

    def end_capture(self, stream):
        self._require_context("cuStreamEndCapture")
        capture, self.capture = self.capture, None
        if capture is None or capture[0] != stream or capture[2][0]:
            raise BackendUnavailableError("CUDA cuStreamEndCapture failed on GPU 0: "
                                          "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED")
        handle = next(HostDevice.handles)
        self.graphs[handle] = capture[1]
        return handle

    def launch_graph(self, executable, stream):
        self._require_context("cuGraphLaunch")
        if executable not in self.graphs:
            raise EmulationError(f"graph {executable} was destroyed or never captured")
        self.replays.append(executable)
        self.pending = True
        for work in self.graphs[executable]:
            work()

    def destroy_graph(self, executable):
        self._require_context("cuGraphExecDestroy")
        del self.graphs[executable]

    def close(self):
        self._require_context("cuDevicePrimaryCtxRelease")
        self.closed = True


_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


class HostEngine:
    """An 'engine' that is an ONNX graph run by ONNX Runtime on host pointers, with one optimisation
    profile over the person axis: 1 .. max_people."""

    def __init__(self, graph_path, max_people: int):
        from bodyrt.runtime.backends import OnnxRuntimeRunner

        self.runner = OnnxRuntimeRunner(graph_path).activate()
        self.max_people = max_people
        session = self.runner.session
        self.modes = {value.name: "input" for value in session.get_inputs()}
        self.modes.update({value.name: "output" for value in session.get_outputs()})
        self.values = {value.name: value for value in [*session.get_inputs(), *session.get_outputs()]}
        self.num_io_tensors = len(self.values)
        self.contexts = []

    def get_tensor_name(self, index):
        return list(self.values)[index]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return _ORT_DTYPES[self.values[name].type]

    def get_tensor_shape(self, name):
        return (-1, *self.values[name].shape[1:])

    device_memory_size_v2 = 4096

    def create_execution_context(self, *strategy):
        self.contexts.append(HostContext(self, user_managed=strategy == ("user_managed",)))
        return self.contexts[-1]


class HostContext:
    """TensorRT's execution context, strictly: set_input_shape refuses shapes outside the profile,
    set_tensor_address unknown tensors and null pointers, execute_async_v3 runs with what was set.

    Inside a capture (HostDevice.capturing) the run is recorded with the shapes it was captured with. A
    replay after this context's shapes changed is an EmulationError: TensorRT captures its kernels
    for the shapes of the moment, and a graph replayed after the context moved on runs stale work
    (TensorRT's rule: one execution context per captured graph, or recapture).
    """

    def __init__(self, engine, user_managed: bool = False):
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.user_managed, self.device_memory = user_managed, None

    def set_device_memory(self, pointer, size):
        if not self.user_managed or size < self.engine.device_memory_size_v2:
            raise EmulationError("set_device_memory on a context that is not USER_MANAGED, or too small")
        HostDevice.holding(pointer, size)
        self.device_memory = pointer

    def set_input_shape(self, name, shape):
        engine = self.engine
        if engine.modes.get(name) != "input" or tuple(shape)[1:] != tuple(engine.get_tensor_shape(name))[1:] \
                or not 1 <= shape[0] <= engine.max_people:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        if name not in self.engine.modes or not address:
            return False
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        engine, device = self.engine, HostDevice.capturing(stream)
        if self.user_managed and self.device_memory is None:
            raise EmulationError("execute_async_v3 on a USER_MANAGED context without device memory")
        missing = [name for name, mode in engine.modes.items()
                   if name not in self.addresses or (mode == "input" and name not in self.shapes)]
        if missing:
            if device is not None:
                device.invalidate_capture()
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)

        def run():
            if self.shapes != shapes:
                raise EmulationError(f"a CUDA graph captured for shapes {shapes} replayed after its execution "
                                     f"context moved to {self.shapes}")
            self._run(shapes, addresses)

        if device is not None:
            device.capture[1].append(run)
        else:
            run()
        return True

    def _run(self, shapes, addresses):
        from bodyrt.runtime.device import host_array

        engine = self.engine
        feeds = {}
        for name, mode in engine.modes.items():
            if mode == "input":
                HostDevice.holding(addresses[name], 1)
                feeds[name] = host_array(addresses[name], engine.get_tensor_dtype(name), shapes[name]).copy()
        people = len(next(iter(feeds.values())))
        for name, value in engine.runner.infer(feeds).items():
            shape = (people, *engine.get_tensor_shape(name)[1:])
            assert value.shape == shape and value.dtype == engine.get_tensor_dtype(name), (name, value.shape)
            HostDevice.holding(addresses[name], value.nbytes)
            host_array(addresses[name], value.dtype, shape)[...] = value


def host_tensorrt(bundle_path, version=HOST_PLATFORM["tensorrt_version"], deserialised=None):
    """A `tensorrt` module for HostEngine files ({"graph": file name} JSON inside the bundle)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC="static", USER_MANAGED="user_managed")
    trt.nptype = lambda dtype: dtype

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if deserialised is not None:
                deserialised.append(data)
            description = json.loads(data)
            return HostEngine(Path(bundle_path) / description["graph"], description["max_people"])

    trt.Runtime = Runtime
    return trt


def fake_build_engine(onnx_path, engine_path, max_people, opt_people=1, timing_cache=b"", workspace_bytes=0):
    Path(engine_path).write_text(json.dumps({"graph": Path(onnx_path).name, "max_people": max_people}))
    return timing_cache + b"+"


def copy_of_bundle(bundle_dir, directory: Path) -> Path:
    """The bundle's files as symlinks (the manifest as a real copy) in `directory`."""
    directory.mkdir()
    for path in Path(bundle_dir).iterdir():
        if path.name == "manifest.json":
            shutil.copy(path, directory / path.name)
        elif path.is_file():
            (directory / path.name).symlink_to(path.resolve())
    return directory


@pytest.fixture(scope="module")
def emulated_bundles(bundle_dir, tmp_path_factory):
    """{"fp32": bundle, "fp16": bundle}: the session bundle plus GPU graphs and HostEngine 'engines'."""
    from bodyrt.export import tensorrt as export_tensorrt

    root = tmp_path_factory.mktemp("gpu-bundles")
    bundles = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(root / "cache"))
        patch.setattr(export_tensorrt, "build_engine", fake_build_engine)
        for precision in ("fp32", "fp16"):
            path = copy_of_bundle(bundle_dir, root / precision)
            export_tensorrt.build_gpu_artefacts(path, "tensorrt", precision, max_people=MAX_PEOPLE,
                                                platform=HOST_PLATFORM)
            bundles[precision] = path
    return bundles


@pytest.fixture(scope="module")
def cpu_runtime(bundle_dir):
    from bodyrt.runtime import open_bundle

    return open_bundle(bundle_dir, threads=2)


def emulated_pipeline(monkeypatch, bundle_path, **options):
    from bodyrt.runtime import open_bundle

    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(bundle_path))
    return open_bundle(bundle_path, "tensorrt", device=HostDevice(), **options)


def emulated_tensors(pipeline, people: int) -> dict:
    """Every tensor of the last frame, read from HostDevice memory: crops, stage inputs and outputs."""
    from bodyrt.runtime.device import host_array

    return {name: host_array(tensor.pointer, tensor.dtype, (people, *tensor.per_person)).astype(np.float32)
            for name, tensor in pipeline.executor.tensors.items()}


def assert_close_intermediates(ours, reference, crops, parameters, pixels,
                               crop_names=("body_crops", "hand_crops", "face_crops")):
    """The crops the kernel cut and each stage's outputs, against the CPU pipeline's."""
    for name in crop_names:
        np.testing.assert_allclose(ours[name], reference[name], atol=crops, rtol=0, err_msg=name)
    for name in ["body_params", "hand_starts", "face_starts", "hand_params", "face_params"]:
        np.testing.assert_allclose(ours[name], reference[name], atol=parameters, rtol=0, err_msg=name)
    np.testing.assert_allclose(ours["part_boxes"], reference["part_boxes"], atol=pixels, rtol=0)


def assert_close_outputs(ours, reference, metres, parameters, pixels):
    assert set(ours) == set(reference)
    for key in ["vertices", "joints"]:
        np.testing.assert_allclose(ours[key], reference[key], atol=metres, rtol=0, err_msg=key)
    # the pinhole depth, 2 * 5000 px / (scale * box), is 10-20 m: it carries the scale's relative error
    np.testing.assert_allclose(ours["pinhole_translation"], reference["pinhole_translation"], atol=50 * metres, rtol=0)
    for key in ["global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas",
                "expression", "camera_scale", "camera_translation"]:
        np.testing.assert_allclose(ours[key], reference[key], atol=parameters, rtol=0, err_msg=key)
    np.testing.assert_allclose(ours["part_boxes"], reference["part_boxes"], atol=pixels, rtol=0)
    np.testing.assert_allclose(ours["crop_transforms"], reference["crop_transforms"], atol=1e-5, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# fp16 graphs


def tiny_graph():
    """x (N, 2, 4, 4) -> Conv -> Relu -> Resize x2 -> ReduceMean (scope net.backbone) -> Gemm (net.head)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def node(op, inputs, outputs, scope, **attributes):
        made = helper.make_node(op, inputs, outputs, name=f"{op}_{outputs[0]}", **attributes)
        made.metadata_props.add(key="pkg.torch.onnx.name_scopes", value=repr(["", "net", scope]))
        return made

    initializers = [numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "conv_w"),
                    numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                    numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "gemm_w")]
    nodes = [node("Conv", ["x", "conv_w"], ["conv"], "net.backbone", pads=[1, 1, 1, 1]),
             node("Relu", ["conv"], ["relu"], "net.backbone"),
             node("Resize", ["relu", "", "scales"], ["resized"], "net.backbone", mode="linear"),
             node("ReduceMean", ["resized"], ["pooled"], "net.backbone", axes=[2, 3], keepdims=0),
             node("Gemm", ["pooled", "gemm_w"], ["y"], "net.head")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_fp16_conversion_types_casts_and_values():
    import onnxruntime as ort
    from onnx import TensorProto

    from bodyrt.export.tensorrt import convert_to_fp16

    model = tiny_graph()
    converted, count = convert_to_fp16(model, scopes=("net.backbone",), half_inputs=["x"])
    assert count == 4
    graph = converted.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    types_ = {init.name: init.data_type for init in graph.initializer}
    assert types_ == {"conv_w": TensorProto.FLOAT16, "scales": TensorProto.FLOAT, "gemm_w": TensorProto.FLOAT}
    casts = [node for node in graph.node if node.op_type == "Cast"]
    assert [(cast.input[0], cast.attribute[0].i) for cast in casts] == [("pooled", TensorProto.FLOAT)]
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # the input model is untouched

    x = np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32)
    def run(graph, feeds):
        return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]

    reference, half = run(model, {"x": x}), run(converted, {"x": x.astype(np.float16)})
    assert half.dtype == np.float32
    np.testing.assert_allclose(half, reference, atol=5e-3 * np.abs(reference).max(), rtol=0)


def test_fp16_stages_match_fp32_in_onnx_runtime(emulated_bundles, cpu_runtime, demo_files):
    """Each converted stage on real inputs (the CPU pipeline's intermediates), fp16 vs fp32, on the CPU."""
    from bodyrt.runtime.backends import OnnxRuntimeRunner

    image, boxes = scene(demo_files)
    cpu_runtime(image, boxes)
    tensors = cpu_runtime.last_tensors
    manifest = read_bundle(emulated_bundles["fp16"]).manifest
    converted = [stage for stage, graph in manifest.gpu.graphs.items() if graph.precision == "fp16"]
    assert converted == ["body", "hand", "face"]
    for stage in converted:
        graph = manifest.gpu.graphs[stage]
        feeds = {spec.name: tensors[spec.name].astype(spec.dtype) for spec in graph.inputs}
        half = OnnxRuntimeRunner(emulated_bundles["fp16"] / graph.file).activate().infer(feeds)
        full = cpu_runtime.executor.runners[stage].infer({name: tensors[name] for name in feeds})
        for name, reference in full.items():
            tolerance = FP16_BOX_TOLERANCE_PX if name == "part_boxes" else FP16_PARAMETER_TOLERANCE
            np.testing.assert_allclose(half[name], reference, atol=tolerance, rtol=0, err_msg=f"{stage} {name}")


def test_manifest_records_gpu_graphs_and_engines(emulated_bundles, bundle_dir):
    bundle = read_bundle(emulated_bundles["fp16"])  # verifies every sha256, engines included
    gpu = bundle.manifest.to_json()["gpu"]
    assert gpu["precision"] == "fp16"
    body = gpu["graphs"]["body"]
    assert body["file"] == "body.fp16.onnx"
    assert {spec["name"]: spec["dtype"] for spec in body["inputs"]} == {"body_crops": "float16",
                                                                         "crop_transforms": "float32"}
    assert {spec["dtype"] for spec in body["outputs"]} == {"float32"}
    assert gpu["graphs"]["merge"] == {**gpu["graphs"]["merge"], "file": "merge.onnx", "precision": "fp32"}
    engines = gpu["tensorrt"]
    assert {key: engines[key] for key in HOST_PLATFORM} == HOST_PLATFORM
    assert engines["max_people"] == MAX_PEOPLE and engines["precision"] == "fp16"
    assert engines["engines"] == {stage: f"{stage}.fp16.engine" for stage in ["body", "hand", "face", "merge"]}
    assert set(bundle.manifest.files) >= {*engines["engines"].values(), "body.fp16.onnx", "hand.fp16.onnx"}
    assert not list(bundle.path.glob(".gpu-partial-*"))
    original = read_bundle(bundle_dir).manifest  # the shared bundle itself is untouched
    assert original.gpu is None

    engine = bundle.path / "hand.fp16.engine"
    saved = engine.read_bytes()
    try:
        engine.write_bytes(saved[:-1] + b"!")
        with pytest.raises(BundleError, match="hand.fp16.engine.*sha256"):
            read_bundle(bundle.path)
    finally:
        engine.write_bytes(saved)


def test_failed_engine_build_leaves_the_bundle_as_it_was(emulated_bundles, tmp_path, monkeypatch):
    from bodyrt.export import tensorrt as export_tensorrt

    bundle = copy_of_bundle(emulated_bundles["fp32"], tmp_path / "bundle")
    before = (bundle / "manifest.json").read_text()

    def failing(onnx_path, *args, **kwargs):
        if Path(onnx_path).name.startswith("face"):
            raise ExportError("simulated TensorRT failure")
        return fake_build_engine(onnx_path, *args, **kwargs)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(export_tensorrt, "build_engine", failing)
    with pytest.raises(ExportError, match="simulated"):
        export_tensorrt.build_gpu_artefacts(bundle, "tensorrt", "fp16", platform=HOST_PLATFORM)
    assert (bundle / "manifest.json").read_text() == before
    assert not list(bundle.glob("*.fp16.*")) and not list(bundle.glob(".gpu-partial-*"))
    read_bundle(bundle)


# ---------------------------------------------------------------------------------------------
# The device pipeline, emulated


def test_emulated_device_pipeline_fp32_matches_cpu(emulated_bundles, cpu_runtime, demo_files, monkeypatch):
    image, boxes = scene(demo_files)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp32"])
    ours = pipeline(image, boxes)
    assert_close_outputs(ours.outputs, cpu_runtime(image, boxes).outputs, FP32_TOLERANCE_M, 1e-4, 1e-2)
    # crops: kernel vs numpy to 1e-5 (bodyrt.kernels' own bound); graphs: same fp32 graphs, same inputs
    assert_close_intermediates(emulated_tensors(pipeline, len(boxes)), cpu_runtime.last_tensors, 1e-5, 1e-4, 1e-2)
    assert pipeline.executor.device.launches == ["body_crops_f32", "part_crops_f32", "part_crops_f32"]
    assert ours.info == {"backend": "tensorrt", "precision": "fp32", "device": "Host Emulation"}
    assert {"body_crop", "body", "hand_crops", "face_crops", "hand", "face", "merge"} <= set(ours.timings_ms)
    pipeline.close()


def test_emulated_device_pipeline_fp16_matches_cpu(emulated_bundles, cpu_runtime, demo_files, monkeypatch):
    image, boxes = scene(demo_files, size=(720, 1280), people=3, seed=3)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp16"])
    ours = pipeline(image, boxes).outputs
    assert_close_outputs(ours, cpu_runtime(image, boxes).outputs, FP16_TOLERANCE_M, FP16_PARAMETER_TOLERANCE,
                         FP16_BOX_TOLERANCE_PX)
    # float16 body crops: half a unit in the last place of values up to |2.7| is 1e-3. The part crops
    # are cut from part boxes that moved by up to 0.015 px, which changes pixels on sharp edges.
    assert_close_intermediates(emulated_tensors(pipeline, len(boxes)), cpu_runtime.last_tensors, 2e-3,
                               FP16_PARAMETER_TOLERANCE, FP16_BOX_TOLERANCE_PX, crop_names=["body_crops"])
    assert pipeline.executor.device.launches == ["body_crops_f16", "part_crops_f16", "part_crops_f16"]


def test_emulated_zero_copy_entry_point(emulated_bundles, demo_files, monkeypatch):
    """An image already on the 'device' with padded rows and the caller's stream gives the same result."""
    image, boxes = scene(demo_files, size=(360, 500), people=1)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp32"])
    expected = pipeline(image, boxes).outputs
    height, width, _ = image.shape
    pitch = 3 * width + 64
    frame = pipeline.executor.device.allocate(height * pitch)
    rows = np.frombuffer((ctypes.c_uint8 * (height * pitch)).from_address(frame), np.uint8).reshape(height, pitch)
    rows[:, :3 * width] = image.reshape(height, 3 * width)
    pipeline.enqueue(frame, height, width, pitch, boxes, stream=4242)
    with pytest.raises(InputError, match="already queued"):
        pipeline.enqueue(frame, height, width, pitch, boxes)
    got = pipeline.result().outputs
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    with pytest.raises(InputError, match="enqueue"):
        pipeline.result()
    with pytest.raises(InputError, match="at most 4"):
        pipeline(image, np.repeat(boxes, 5, axis=0))
    with pytest.raises(InputError, match="person box 0"):
        pipeline(image, [[10, 10, 10, 50]])


def test_cuda_graphs_are_tensorrt_only(emulated_bundles):
    from bodyrt.runtime import open_bundle

    with pytest.raises(InputError, match="tensorrt backend only"):
        open_bundle(emulated_bundles["fp32"], "cuda", device=HostDevice(), cuda_graphs=True)


# ---------------------------------------------------------------------------------------------
# Engines: platform check, build calls


def test_platform_mismatch_names_each_difference_and_the_rebuild():
    from bodyrt.runtime.tensorrt_backend import check_engine_platform, platform_mismatch

    recorded = {**HOST_PLATFORM, "precision": "fp16"}
    assert platform_mismatch(recorded, HOST_PLATFORM) == []
    other = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    assert platform_mismatch(recorded, other) == [
        "TensorRT 11.4.0.106 (this machine: 10.13.3.9)", "GPU Host Emulation (this machine: NVIDIA L4)",
        "compute capability 0.0 (this machine: 8.9)"]
    same_gpu_kind = {**HOST_PLATFORM, "gpu_name": "Other"}
    assert platform_mismatch(recorded, same_gpu_kind) == ["GPU Host Emulation (this machine: Other)"]
    with pytest.raises(BundleError) as error:
        check_engine_platform(Path("/b/body.fp16.engine"), recorded, other, Path("/b"))
    message = str(error.value)
    assert message.startswith("/b/body.fp16.engine: ")
    assert "TensorRT 11.4.0.106 (this machine: 10.13.3.9)" in message
    assert "python -m bodyrt.export.tensorrt --bundle /b --precision fp16" in message


def test_engine_for_another_tensorrt_fails_before_deserialising(emulated_bundles, monkeypatch):
    from bodyrt.runtime.tensorrt_backend import TensorRTStage

    deserialised = []
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"], version="10.13.3.9",
                                                               deserialised=deserialised))
    with pytest.raises(BundleError, match=r"TensorRT 11\.4\.0\.106 \(this machine: 10\.13\.3\.9\).*--precision fp32"):
        TensorRTStage(read_bundle(emulated_bundles["fp32"]), "body", HostDevice())
    assert deserialised == []
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"], deserialised=deserialised))
    stage = TensorRTStage(read_bundle(emulated_bundles["fp32"]), "hand", HostDevice())
    assert len(deserialised) == 1 and [spec["name"] for spec in stage.inputs] == ["hand_crops", "hand_starts"]


def test_build_engines_hands_the_timing_cache_from_build_to_build(tmp_path, monkeypatch):
    """The TensorRT calls of one build run through Polygraphy (test_polygraphy_build.py); here: the
    cache file is read once, handed from build to build, and saved after the last."""
    from bodyrt.export import tensorrt as export_tensorrt

    seen = []

    def recording_build(onnx_path, engine_path, max_people, opt_people=1, timing_cache=b"", workspace_bytes=0):
        seen.append((Path(onnx_path).name, max_people, timing_cache))
        Path(engine_path).write_bytes(b"PLAN")
        return timing_cache + b"+"

    monkeypatch.setattr(export_tensorrt, "build_engine", recording_build)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache_file = tmp_path / "cache" / "bodyrt" / "tensorrt" / "timing-11.4.0.106-Host-Emulation-sm0.0.cache"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"old")
    entry = export_tensorrt.build_engines({"hand": tmp_path / "hand.fp16.onnx", "face": tmp_path / "face.fp16.onnx"},
                                          tmp_path, "fp16", HOST_PLATFORM, max_people=6)
    assert seen == [("hand.fp16.onnx", 6, b"old"), ("face.fp16.onnx", 6, b"old+")]
    assert cache_file.read_bytes() == b"old++"
    assert (tmp_path / "face.fp16.engine").read_bytes() == b"PLAN"
    assert entry == {**HOST_PLATFORM, "precision": "fp16", "max_people": 6, "opt_people": 1,
                     "engines": {"hand": "hand.fp16.engine", "face": "face.fp16.engine"}}


# ---------------------------------------------------------------------------------------------
# Missing packages and ONNX Runtime's silent CPU fallback


def test_onnx_runtime_cpu_fallback_is_reported(bundle_dir):
    import onnxruntime as ort

    from bodyrt.runtime.backends import make_runner
    from bodyrt.runtime.cuda_backend import check_providers

    session = ort.InferenceSession(str(bundle_dir / "hand.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(BackendUnavailableError, match="fell back to CPUExecutionProvider"):
        check_providers(session, "CUDAExecutionProvider", "hand.onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: its CUDA provider does not fall back here")
    runner = make_runner("cuda", read_bundle(bundle_dir), "hand")  # a real session asked for CUDA on a CPU build
    with pytest.raises(BackendUnavailableError, match=r"hand\.onnx: ONNX Runtime fell back to CPUExecutionProvider.*"
                                                      r"onnxruntime-gpu"):
        runner.activate()


def test_missing_gpu_packages_are_named(bundle_dir, monkeypatch, tmp_path, capsys):
    from bodyrt.cli import main
    from bodyrt.runtime import open_bundle
    from bodyrt.runtime.backends import make_runner
    from bodyrt.runtime.device import CudaDevice

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    for module in ["cuda", "cuda.bindings", "cuda.bindings.driver"]:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(BackendUnavailableError, match=r"tensorrt package.*pip install \"bodyrt\[gpu-cu13\]\""):
        make_runner("tensorrt", read_bundle(bundle_dir), "hand")
    with pytest.raises(BackendUnavailableError, match="cuda-python package"):  # the device comes first
        open_bundle(bundle_dir, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"cuda-python package.*bodyrt\[gpu-cu13\].*bodyrt\[gpu-cu12\]"):
        CudaDevice(0)
    code = main(["export", "--checkpoint", "missing.ckpt", "--body-model", "missing.npz", "--out",
                 str(tmp_path / "out"), "--engine", "tensorrt", "--precision", "fp16"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and "tensorrt package" in error[0]
    assert not (tmp_path / "out").exists()  # failed before exporting anything


def test_cli_run_on_a_gpu_backend_uses_the_device_pipeline_and_refuses_a_cpu_precision(
        bundle_dir, demo_files, monkeypatch, tmp_path, capsys):
    from bodyrt.cli import main
    from bodyrt.export.fixtures.scenes import sample_scene
    from bodyrt.images import save_png

    image, _ = sample_scene(demo_files[1], seed=0, size=(120, 160))
    save_png(tmp_path / "person.png", image)
    arguments = ["run", "--bundle", str(bundle_dir), str(tmp_path / "person.png"), "--out", str(tmp_path / "out"),
                 "--backend", "tensorrt"]
    assert main([*arguments, "--precision", "int8"]) == 1
    assert "--precision int8 is for the CPU backends" in capsys.readouterr().err
    import bodyrt.kernels

    driver_missing = bodyrt.kernels.gpu_available_reason()
    if driver_missing:  # said first, rather than which Python packages are missing
        assert main(arguments) == 1
        error = capsys.readouterr().err
        assert "--backend tensorrt needs an NVIDIA GPU with its driver" in error and "no NVIDIA driver found" in error
        assert "pip install" not in error
    monkeypatch.setattr(bodyrt.kernels, "gpu_available_reason", lambda: None)  # as on a machine with a driver
    for module in ["cuda", "cuda.bindings", "cuda.bindings.driver"]:
        monkeypatch.setitem(sys.modules, module, None)
    assert main(arguments) == 1
    assert "the GPU runtime needs the cuda-python package" in capsys.readouterr().err  # the device executor's, not a runner's
    assert not (tmp_path / "out").exists()


def emulate_gpu_for_the_cli(monkeypatch, bundle_path):
    """The CLI opens GPU 0 itself: make that a HostDevice and `tensorrt` the stand-in module."""
    import bodyrt.kernels
    from bodyrt.runtime import device_executor

    monkeypatch.setattr(bodyrt.kernels, "gpu_available_reason", lambda: None)  # as on a machine with a driver
    monkeypatch.setattr(device_executor, "CudaDevice", lambda ordinal=0: HostDevice())
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(bundle_path))


def test_cli_run_on_the_emulated_tensorrt_backend(emulated_bundles, cpu_runtime, demo_files, monkeypatch,
                                                  tmp_path, capsys):
    """`bodyrt run --backend tensorrt` end to end: the device executor, the kernel's crops, the engines."""
    from bodyrt.cli import main
    from bodyrt.images import save_png

    image, boxes = scene(demo_files, size=(240, 320), people=2, seed=4)
    save_png(tmp_path / "person.png", image)
    emulate_gpu_for_the_cli(monkeypatch, emulated_bundles["fp32"])
    arguments = ["run", "--bundle", str(emulated_bundles["fp32"]), str(tmp_path / "person.png"),
                 "--out", str(tmp_path / "out"), "--backend", "tensorrt"]
    for box in boxes:
        arguments += ["--box", *(str(float(value)) for value in box)]
    code, err = main(arguments), capsys.readouterr().err
    assert code == 0, err
    (summary_path,) = (tmp_path / "out").glob("summary-*.json")
    summary = json.loads(summary_path.read_text())
    assert summary["backend"] == "tensorrt" and summary["counts"]["ok"] == 1
    timings = summary["images"][0]["timings_ms"]
    assert {"body_crop", "body", "hand_crops", "face_crops", "hand", "face", "merge"} <= set(timings)
    folder = tmp_path / "out" / "person.png"
    reference = cpu_runtime(image, boxes).outputs  # an independent CPU run of the same fp32 graphs
    for person in range(len(boxes)):
        params = np.load(folder / f"person{person}_params.npz")
        np.testing.assert_allclose(params["vertices"], reference["vertices"][person], atol=FP32_TOLERANCE_M, rtol=0)
        np.testing.assert_allclose(params["pinhole_translation"], reference["pinhole_translation"][person],
                                   rtol=1e-4, atol=1e-4)
        assert (folder / f"person{person}.obj").stat().st_size > 0
    assert (folder / "overlay.png").is_file()
    # a precision the GPU graphs were not exported with is refused with the reason, before anything runs
    assert main(["run", "--bundle", str(emulated_bundles["fp32"]), str(tmp_path / "person.png"), "--out",
                 str(tmp_path / "fp16"), "--backend", "tensorrt", "--precision", "fp16"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "GPU graphs are fp32" in error[0]
    assert not (tmp_path / "fp16").exists()


def test_cli_bench_on_the_emulated_tensorrt_backend(emulated_bundles, monkeypatch, tmp_path, capsys):
    from bodyrt.cli import main

    emulate_gpu_for_the_cli(monkeypatch, emulated_bundles["fp16"])
    report = tmp_path / "bench.json"
    code = main(["bench", "--bundle", str(emulated_bundles["fp16"]), "--backend", "tensorrt", "--backend",
                 "onnxruntime", "--precision", "fp16", "--precision", "fp32", "--repeats", "1", "--warmup", "0",
                 "--no-memory", "--no-roofline", "--image-size", "720p", "--json", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipping onnxruntime fp16" in err and "GPU backends" in err  # refused with its reason
    results = json.loads(report.read_text())
    assert {"tensorrt", "tensorrt-fp16", "onnxruntime"} <= set(results["summary"])


# ---------------------------------------------------------------------------------------------
# On a GPU


@pytest.fixture(scope="module")
def gpu_bundles(bundle_dir, tmp_path_factory):
    """The session bundle with real TensorRT engines (fp32 and fp16) for this GPU."""
    from bodyrt.export.tensorrt import build_gpu_artefacts

    root = tmp_path_factory.mktemp("real-gpu-bundles")
    return {precision: build_gpu_artefacts(copy_of_bundle(bundle_dir, root / precision), "tensorrt", precision)
            for precision in ("fp32", "fp16")}


TOLERANCES = {"fp32": (FP32_TOLERANCE_M, 1e-4, 1e-2),
              "fp16": (FP16_TOLERANCE_M, FP16_PARAMETER_TOLERANCE, FP16_BOX_TOLERANCE_PX)}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["tensorrt", "cuda"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_pipeline_matches_cpu(gpu_bundles, cpu_runtime, demo_files, backend, precision):
    from bodyrt.runtime import open_bundle

    if backend == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime-gpu is not installed")
    image, boxes = scene(demo_files, size=(720, 1280), people=3, seed=3)
    pipeline = open_bundle(gpu_bundles[precision], backend=backend)
    try:
        assert_close_outputs(pipeline(image, boxes).outputs, cpu_runtime(image, boxes).outputs, *TOLERANCES[precision])
    finally:
        pipeline.close()


@pytest.mark.gpu
def test_gpu_zero_copy_cuda_graphs_and_runner_interface(gpu_bundles, cpu_runtime, demo_files):
    from bodyrt.runtime import open_bundle
    from bodyrt.runtime.backends import make_runner
    from bodyrt.runtime.device import CudaDevice, host_array

    image, boxes = scene(demo_files, size=(480, 640), people=2)
    reference = cpu_runtime(image, boxes).outputs
    device = CudaDevice(0)
    pipeline = open_bundle(gpu_bundles["fp32"], "tensorrt", device=device, cuda_graphs=True)
    height, width, _ = image.shape
    pitch = 3 * width + 256
    frame, staging = device.allocate(height * pitch), device.allocate_host(height * pitch)
    host_array(staging, np.uint8, (height, pitch))[:, :3 * width] = image.reshape(height, -1)
    user_stream = device.create_stream()
    device.copy_to_device(frame, staging, height * pitch, user_stream)
    try:
        for _ in range(3):  # plain run + capture, then two graph replays
            pipeline.enqueue(frame, height, width, pitch, boxes, stream=user_stream)
            assert_close_outputs(pipeline.result().outputs, reference, *TOLERANCES["fp32"])
        assert len(pipeline.executor._graphs) == 2  # body; hand + face + merge (the part crops run between)
    finally:
        pipeline.close()
        device.free(frame)
        device.free_host(staging)
    runner = make_runner("tensorrt", read_bundle(gpu_bundles["fp16"]), "merge").activate()  # the runner interface
    tensors = cpu_runtime.last_tensors
    merged = runner.infer({name: tensors[name] for name in ("body_params", "hand_params", "face_params")})
    np.testing.assert_allclose(merged["vertices"], tensors["vertices"], atol=FP32_TOLERANCE_M, rtol=0)
    runner.deactivate()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_kernel_matches_host_build(dtype):
    from bodyrt.kernels.host import host_launch
    from bodyrt.kernels.launch import body_crops_launch, part_crops_launch
    from bodyrt.runtime.device import CudaDevice, host_array

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    person_boxes = np.array([[50, 30, 250, 290], [-40, 100, 180, 330]], np.float32)
    part_boxes = np.array([[[120, 80, 60], [300, 200, 90], [-20, 10, 150]]] * 2, np.float32)
    device = CudaDevice(0)
    stream = device.create_stream()
    event = device.create_event()
    normalisation = dict(channel_order="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         pixel_scale=1.0 / 255.0)

    def run_both(make_launch, inputs, outputs):
        """Launch on the device and through the host build with the same arguments; returns both outputs."""
        pointers = {}
        for name, array in {**inputs, **outputs}.items():
            pointers[name] = (device.allocate(array.nbytes), device.allocate_host(array.nbytes))
            host_array(pointers[name][1], array.dtype, array.shape)[...] = array
            device.copy_to_device(pointers[name][0], pointers[name][1], array.nbytes, stream)
        device.launch(make_launch({name: pair[0] for name, pair in pointers.items()}), stream)
        gpu = {}
        for name, array in outputs.items():
            device.copy_to_host(pointers[name][1], pointers[name][0], array.nbytes, stream)
        device.record_event(event, stream)
        device.synchronize_event(event)
        for name, array in outputs.items():
            gpu[name] = host_array(pointers[name][1], array.dtype, array.shape).copy()
        host = {name: array.copy() for name, array in {**inputs, **outputs}.items()}
        host_launch(make_launch({name: array.ctypes.data for name, array in host.items()}))
        return gpu, {name: host[name] for name in outputs}

    height, width, _ = image.shape
    gpu, host = run_both(
        lambda p: body_crops_launch(image=p["image"], height=height, width=width, pitch=3 * width, **normalisation,
                                    person_boxes=p["boxes"], people=2, box_scale=1.2, crop_size=256, out=p["out"],
                                    transforms=p["transforms"], dtype=dtype),
        {"image": image, "boxes": person_boxes},
        {"out": np.zeros((2, 3, 256, 256), dtype), "transforms": np.zeros((2, 3, 3), np.float32)})
    tolerance = 1e-5 if dtype == "float32" else 2e-3
    for name in host:
        np.testing.assert_allclose(gpu[name].astype(np.float32), host[name].astype(np.float32), atol=tolerance, rtol=0)
    gpu, host = run_both(
        lambda p: part_crops_launch(image=p["image"], height=height, width=width, pitch=3 * width, **normalisation,
                                    part_boxes=p["boxes"], people=2, boxes_per_person=3, parts=[0, 1],
                                    mirror=[False, True], crop_size=224, out=p["out"], dtype=dtype),
        {"image": image, "boxes": part_boxes}, {"out": np.zeros((4, 3, 224, 224), dtype)})
    np.testing.assert_allclose(gpu["out"].astype(np.float32), host["out"].astype(np.float32), atol=tolerance, rtol=0)


# ---------------------------------------------------------------------------------------------
# What would break on a first real GPU run (issue 16), on the strict emulation


def outputs_without_graphs(monkeypatch, bundle_path, scenes):
    pipeline = emulated_pipeline(monkeypatch, bundle_path)
    try:
        return [pipeline(image, boxes).outputs for image, boxes in scenes]
    finally:
        pipeline.close()


def test_cuda_graphs_stay_right_when_the_person_count_changes(emulated_bundles, demo_files, monkeypatch):
    """2 -> 3 -> 2 -> 3 persons with graphs: each count replays its own capture, and every frame's
    outputs equal those without graphs. With one context per stage, the replayed 2-person graph
    ran after the 3-person frame had moved the context's shapes (the emulation refuses that)."""
    scenes = [scene(demo_files, people=count, seed=seed) for seed, count in enumerate([2, 3, 2, 3])]
    expected = outputs_without_graphs(monkeypatch, emulated_bundles["fp32"], scenes)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp32"], cuda_graphs=True)
    device = pipeline.executor.device
    try:
        for (image, boxes), reference in zip(scenes, expected):
            outputs = pipeline(image, boxes).outputs
            for key in ("vertices", "joints", "body_pose", "part_boxes"):
                np.testing.assert_allclose(outputs[key], reference[key], atol=1e-6, rtol=0, err_msg=key)
        captured = dict(pipeline.executor._graphs)  # (stages, people) -> graph
    finally:
        pipeline.close()
    assert {people for _, people in captured} == {2, 3}
    assert sorted(device.replays) == sorted(captured.values())  # frames 3 and 4 replayed each graph once
    assert not device.graphs  # destroyed at close


def test_a_failure_inside_a_capture_is_reported_as_itself(emulated_bundles, demo_files, monkeypatch):
    from bodyrt.runtime.tensorrt_backend import TensorRTStage

    image, boxes = scene(demo_files, people=2)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp32"], cuda_graphs=True)
    enqueue = TensorRTStage.enqueue

    def failing_in_capture(stage, people, addresses, stream, **options):
        if HostDevice.capturing(stream) is not None:
            HostDevice.capturing(stream).invalidate_capture()
            raise InputError(f"stage {stage.stage}: simulated failure during the capture")
        return enqueue(stage, people, addresses, stream, **options)

    monkeypatch.setattr(TensorRTStage, "enqueue", failing_in_capture)
    try:
        with pytest.raises(InputError, match="simulated failure during the capture"):
            pipeline(image, boxes)
    finally:
        monkeypatch.setattr(TensorRTStage, "enqueue", enqueue)
        pipeline._pending = False
        pipeline.close()


def test_the_pipeline_runs_from_a_worker_thread(emulated_bundles, demo_files, monkeypatch):
    """Opened on this thread, called on another: the context must be made current there."""
    image, boxes = scene(demo_files, people=2)
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp32"])
    try:
        expected = pipeline(image, boxes).outputs
        found, failures = {}, []

        def work():
            try:
                found.update(pipeline(image, boxes).outputs)
            except Exception as error:
                failures.append(error)

        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        assert not failures, failures[0]
        np.testing.assert_array_equal(found["vertices"], expected["vertices"])
    finally:
        pipeline.close()


def test_a_frame_with_nobody_gives_empty_outputs_on_the_device(emulated_bundles, demo_files, cpu_runtime, monkeypatch):
    image, _ = scene(demo_files, people=1)
    empty = np.zeros((0, 4), np.float32)
    reference = cpu_runtime(image, empty).outputs
    pipeline = emulated_pipeline(monkeypatch, emulated_bundles["fp16"], cuda_graphs=True)
    try:
        outputs = pipeline(image, empty).outputs
    finally:
        pipeline.close()
    assert set(outputs) == set(reference)
    for key, value in outputs.items():
        assert value.shape == reference[key].shape and value.shape[0] == 0, key


def test_the_tensorrt_runner_takes_a_frame_with_nobody(emulated_bundles, monkeypatch):
    from bodyrt.runtime import tensorrt_backend

    devices = []
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"]))
    monkeypatch.setattr(tensorrt_backend, "import_cuda_driver", lambda: None)  # cuda-python is not installed here
    monkeypatch.setattr(tensorrt_backend, "CudaDevice", lambda ordinal=0: devices.append(HostDevice()) or devices[-1])
    runner = tensorrt_backend.TensorRTRunner(read_bundle(emulated_bundles["fp32"]), "hand").activate()
    feeds = {spec["name"]: np.zeros((0, *spec["per_person"]), spec["dtype"]) for spec in runner.stage.inputs}
    outputs = runner.infer(feeds)
    assert {name: value.shape[0] for name, value in outputs.items()} == {spec["name"]: 0 for spec in
                                                                          runner.stage.outputs}
    runner.deactivate()
    assert devices[0].closed  # the runner released the device it opened


def test_closing_with_a_frame_in_flight_waits_for_it_and_releases_the_device(emulated_bundles, demo_files,
                                                                             monkeypatch):
    from bodyrt.runtime import device_executor
    from bodyrt.runtime import open_bundle

    image, boxes = scene(demo_files, people=2)
    devices = []
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"]))
    monkeypatch.setattr(device_executor, "CudaDevice", lambda ordinal=0: devices.append(HostDevice()) or devices[-1])
    pipeline = open_bundle(emulated_bundles["fp32"], "tensorrt")
    frame = np.ascontiguousarray(image)
    pipeline.enqueue(frame.ctypes.data, frame.shape[0], frame.shape[1], frame.strides[0], boxes)
    pipeline.close()  # no result(): the queued frame must be waited for before its buffers are freed
    device = devices[0]
    assert device.closed and not device.buffers and device.freed


def test_a_refused_tensor_address_is_an_error(emulated_bundles, monkeypatch):
    from bodyrt.runtime.tensorrt_backend import TensorRTStage

    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"]))
    device = HostDevice()
    stage = TensorRTStage(read_bundle(emulated_bundles["fp32"]), "hand", device)
    addresses = {spec["name"]: device.allocate(1 << 20) for spec in [*stage.inputs, *stage.outputs]}
    with pytest.raises(BackendUnavailableError, match="stage hand: TensorRT refused the address .* tensor hand_extra"):
        stage.enqueue(1, {**addresses, "hand_extra": addresses[stage.inputs[0]["name"]]}, device.create_stream())


def test_part_boxes_of_another_dtype_are_refused_at_open(emulated_bundles, monkeypatch):
    """The crop kernel reads part boxes as const float*: float16 boxes would be read as garbage."""
    from bodyrt.runtime.device_executor import DeviceExecutor

    bundle = read_bundle(emulated_bundles["fp16"])

    def make_stage(bundle, stage, device, stream):
        graph = bundle.manifest.gpu_graph(stage)
        specs = [{"name": spec.name, "per_person": tuple(spec.shape[1:]),
                  "dtype": "float16" if spec.name == "part_boxes" else spec.dtype} for spec in graph.outputs]
        inputs = [{"name": spec.name, "per_person": tuple(spec.shape[1:]), "dtype": spec.dtype} for spec in graph.inputs]
        return types.SimpleNamespace(inputs=inputs, outputs=specs, close=lambda: None)

    with pytest.raises(BundleError, match="reads part_boxes as float32 .* but it is float16"):
        DeviceExecutor(bundle, "cuda", make_stage, device=HostDevice())


def test_the_opening_check_names_the_driver_and_the_extra(emulated_bundles, monkeypatch):
    """A kernel the driver cannot load fails when the pipeline opens, naming CUDA 12.4 and gpu-cu12."""

    class OldDriverDevice(HostDevice):
        driver_version = 12040

        def kernels(self):
            raise BackendUnavailableError("CUDA cuModuleLoadData failed on GPU 0: CUDA_ERROR_UNSUPPORTED_PTX_VERSION")

    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"]))
    from bodyrt.runtime import open_bundle

    device = OldDriverDevice()
    with pytest.raises(BackendUnavailableError, match=r"driver that supports CUDA 12\.4: .*UNSUPPORTED_PTX_VERSION"
                                                      r".*bodyrt\[gpu-cu12\]"):
        open_bundle(emulated_bundles["fp32"], "tensorrt", device=device)
    assert not device.buffers  # checked before anything was allocated


def test_the_emulation_refuses_what_cuda_and_tensorrt_refuse(emulated_bundles, monkeypatch):
    from bodyrt.kernels.launch import KernelLaunch
    from bodyrt.runtime.tensorrt_backend import TensorRTStage

    device = HostDevice()
    pointer = device.allocate(64)
    device.free(pointer)
    with pytest.raises(EmulationError, match="freed memory"):
        device.copy_to_device(pointer, device.allocate(64), 64, 1)
    with pytest.raises(BackendUnavailableError, match="INVALID_VALUE"):
        device.launch(KernelLaunch("body_crops_f32", (1, 1, 70000), (32, 8, 1), ()), 1)
    with pytest.raises(BackendUnavailableError, match="INVALID_VALUE"):
        device.launch(KernelLaunch("body_crops_f32", (1, 1, 1), (64, 32, 1), ()), 1)
    other = threading.Thread(target=lambda: failures.append(pytest.raises(BackendUnavailableError, device.allocate, 8)))
    failures = []
    other.start()
    other.join()
    assert "INVALID_CONTEXT" in str(failures[0].value)
    monkeypatch.setitem(sys.modules, "tensorrt", host_tensorrt(emulated_bundles["fp32"]))
    stage = TensorRTStage(read_bundle(emulated_bundles["fp32"]), "face", device)
    addresses = {spec["name"]: device.allocate(1 << 20) for spec in [*stage.inputs, *stage.outputs]}
    for people in (0, MAX_PEOPLE + 1):  # outside the profile 1 .. max_people
        with pytest.raises(InputError, match=f"TensorRT rejected {people} persons"):
            stage.enqueue(people, addresses, 1)
