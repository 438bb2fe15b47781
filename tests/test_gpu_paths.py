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


class HostDevice:
    """CudaDevice's interface on host memory: pointers are numpy buffer addresses, work runs at once.

    Fresh buffers are filled with 0xFF bytes (NaN as floats), so reading what nothing wrote shows up.
    """

    ordinal = 0
    name = HOST_PLATFORM["gpu_name"]
    compute_capability = HOST_PLATFORM["compute_capability"]

    def __init__(self):
        self.buffers = {}
        self.handles = itertools.count(1)
        self.launches = []

    def allocate(self, nbytes):
        buffer = np.full(max(nbytes, 1), 0xFF, dtype=np.uint8)
        self.buffers[buffer.ctypes.data] = buffer
        return buffer.ctypes.data

    def free(self, pointer):
        del self.buffers[pointer]

    allocate_host, free_host = allocate, free

    def create_stream(self):
        return next(self.handles)

    create_event = create_stream

    def destroy_stream(self, handle):
        pass

    destroy_event = destroy_stream

    def record_event(self, event, stream):
        pass

    def wait_event(self, stream, event):
        pass

    def synchronize_event(self, event):
        pass

    def elapsed_ms(self, start, end):
        return 0.0

    def copy_to_device(self, destination, source, nbytes, stream):
        ctypes.memmove(destination, source, nbytes)

    copy_to_host = copy_to_device

    def launch(self, launch, stream):
        from bodyrt.kernels.host import host_launch

        self.launches.append(launch.kernel)
        host_launch(launch)


_ORT_DTYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


class HostEngine:
    """An 'engine' that is an ONNX graph run by ONNX Runtime on host pointers."""

    def __init__(self, graph_path):
        from bodyrt.runtime.backends import OnnxRuntimeRunner

        self.runner = OnnxRuntimeRunner(graph_path).activate()
        session = self.runner.session
        self.modes = {value.name: "input" for value in session.get_inputs()}
        self.modes.update({value.name: "output" for value in session.get_outputs()})
        self.values = {value.name: value for value in [*session.get_inputs(), *session.get_outputs()]}
        self.num_io_tensors = len(self.values)

    def get_tensor_name(self, index):
        return list(self.values)[index]

    def get_tensor_mode(self, name):
        return self.modes[name]

    def get_tensor_dtype(self, name):
        return _ORT_DTYPES[self.values[name].type]

    def get_tensor_shape(self, name):
        return (-1, *self.values[name].shape[1:])

    def create_execution_context(self):
        return HostContext(self)


class HostContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def execute_async_v3(self, stream):
        from bodyrt.runtime.device import host_array

        engine = self.engine
        feeds = {name: host_array(self.addresses[name], engine.get_tensor_dtype(name), self.shapes[name]).copy()
                 for name, mode in engine.modes.items() if mode == "input"}
        people = len(next(iter(feeds.values())))
        for name, value in engine.runner.infer(feeds).items():
            shape = (people, *engine.get_tensor_shape(name)[1:])
            assert value.shape == shape and value.dtype == engine.get_tensor_dtype(name), (name, value.shape)
            host_array(self.addresses[name], value.dtype, shape)[...] = value
        return True


def host_tensorrt(bundle_path, version=HOST_PLATFORM["tensorrt_version"], deserialised=None):
    """A `tensorrt` module for HostEngine files ({"graph": file name} JSON inside the bundle)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: dtype

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            if deserialised is not None:
                deserialised.append(data)
            return HostEngine(Path(bundle_path) / json.loads(data)["graph"])

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


def recording_tensorrt(calls: dict, parses: bool = True):
    """A `tensorrt` module recording what build_engine asks of the builder."""
    ns = types.SimpleNamespace
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0.106"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=5)
    trt.MemoryPoolType = ns(WORKSPACE="workspace")
    trt.BuilderFlag = ns(TF32="tf32")
    inputs = [ns(name="hand_crops", shape=(-1, 2, 3, 224, 224)), ns(name="hand_starts", shape=(-1, 2, 109))]
    network = ns(num_inputs=2, get_input=lambda index: inputs[index])

    class Parser:
        num_errors = 1

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return parses

        def get_error(self, index):
            return "In node 7 (Foo): unsupported operator"

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["pool"] = (pool, size)

        def clear_flag(self, flag):
            calls["cleared"] = flag

        def add_optimization_profile(self, profile):
            calls["profile_added"] = profile is calls["profile"]

        def create_timing_cache(self, data):
            calls["cache_in"] = data
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache, calls["ignore_mismatch"] = cache, ignore_mismatch

        def get_timing_cache(self):
            return self.cache

    class Profile(dict):
        def set_shape(self, name, minimum, optimum, maximum):
            self[name] = (minimum, optimum, maximum)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["flags"] = flags
            return network

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            calls["profile"] = Profile()
            return calls["profile"]

        def build_serialized_network(self, built_network, config):
            return b"PLAN" if built_network is network else None

    trt.OnnxParser, trt.Builder = Parser, Builder
    return trt


def test_build_engine_asks_tensorrt_for_a_strongly_typed_profiled_build(tmp_path, monkeypatch):
    from bodyrt.export.tensorrt import WORKSPACE_BYTES, build_engines

    calls = {}
    monkeypatch.setitem(sys.modules, "tensorrt", recording_tensorrt(calls))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache_file = tmp_path / "cache" / "bodyrt" / "tensorrt" / "timing-11.4.0.106-Host-Emulation-sm0.0.cache"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"old")
    entry = build_engines({"hand": tmp_path / "hand.fp16.onnx", "face": tmp_path / "face.fp16.onnx"}, tmp_path,
                          "fp16", HOST_PLATFORM, max_people=6)
    assert calls["flags"] == 1 << 5 and calls["cleared"] == "tf32" and calls["ignore_mismatch"] is False
    assert calls["pool"] == ("workspace", WORKSPACE_BYTES) and calls["profile_added"]
    assert calls["profile"] == {"hand_crops": ((1, 2, 3, 224, 224), (1, 2, 3, 224, 224), (6, 2, 3, 224, 224)),
                                "hand_starts": ((1, 2, 109), (1, 2, 109), (6, 2, 109))}
    assert calls["cache_in"] == b"old+"  # the second build starts from the first build's cache
    assert cache_file.read_bytes() == b"old++"
    assert (tmp_path / "face.fp16.engine").read_bytes() == b"PLAN"
    assert entry == {**HOST_PLATFORM, "precision": "fp16", "max_people": 6, "opt_people": 1,
                     "engines": {"hand": "hand.fp16.engine", "face": "face.fp16.engine"}}

    monkeypatch.setitem(sys.modules, "tensorrt", recording_tensorrt(calls, parses=False))
    with pytest.raises(ExportError, match=r"bad\.onnx: TensorRT's ONNX parser failed: In node 7 \(Foo\)"):
        build_engines({"bad": tmp_path / "bad.onnx"}, tmp_path, "fp32", HOST_PLATFORM)


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
    with pytest.raises(BackendUnavailableError, match=r"tensorrt package.*pip install \"\.\[gpu\]\" \(from a bodyrt checkout\)"):
        make_runner("tensorrt", read_bundle(bundle_dir), "hand")
    with pytest.raises(BackendUnavailableError, match="cuda-python package"):  # the device comes first
        open_bundle(bundle_dir, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match=r"cuda-python package.*pip install \"\.\[gpu\]\""):
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
    from bodyrt.runtime import device_executor

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
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["images"][0]
    assert summary["backend"] == "tensorrt" and summary["device"] == "Host Emulation"
    assert {"body_crop", "body", "hand_crops", "face_crops", "hand", "face", "merge"} <= set(summary["timings_ms"])
    reference = cpu_runtime(image, boxes).outputs  # an independent CPU run of the same fp32 graphs
    for person in range(len(boxes)):
        params = np.load(tmp_path / "out" / f"person_person{person}_params.npz")
        np.testing.assert_allclose(params["vertices"], reference["vertices"][person], atol=FP32_TOLERANCE_M, rtol=0)
        np.testing.assert_allclose(params["pinhole_translation"], reference["pinhole_translation"][person],
                                   rtol=1e-4, atol=1e-4)
        assert (tmp_path / "out" / f"person_person{person}.obj").stat().st_size > 0
    assert (tmp_path / "out" / "person_overlay.png").is_file()
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
