"""Engine builds go through Polygraphy's real TensorRT loaders, against a recording stand-in for tensorrt.

TensorRT cannot be installed here, so `tensorrt` is a MagicMock with the enums Polygraphy reads
spelled out; Polygraphy's own code (NetworkFromOnnxPath, CreateConfig, Profile,
EngineBytesFromNetwork) runs for real and the TensorRT calls it makes are checked: a strongly typed
network, one profile over the person axis, TF32 cleared and no precision flag set, the workspace
limit, the timing cache (whose refusal is handled, not ignored), build_serialized_network. The names
themselves are checked against TensorRT's wheels in test_tensorrt_api.py.
"""

import enum
import logging
import sys
import types
from unittest import mock

import pytest

from bodyrt.errors import ExportError

pytest.importorskip("polygraphy", reason='Polygraphy is not installed: pip install ".[check]"')

MAX_PEOPLE = 6
INPUTS = {"body_crops": (-1, 3, 256, 256), "crop_transforms": (-1, 3, 3)}


class Logger:
    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, *args):
        pass


class ModuleProxy(types.ModuleType):
    """One `tensorrt` module for the whole file (Polygraphy's lazy import keeps the first it finds),
    forwarding to each test's own fake."""

    current = None

    def __getattr__(self, name):
        return getattr(ModuleProxy.current, name)


TENSORRT = ModuleProxy("tensorrt")


def fake_tensorrt(parses: bool = True, accepts_cache: bool = True):
    trt = ModuleProxy.current = mock.MagicMock(name="tensorrt")
    trt.__version__ = "10.13.3.9"
    trt.ILogger = trt.Logger = Logger
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"TF32": 0, "FP16": 1, "BF16": 2, "INT8": 3})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "TACTIC_SHARED_MEMORY": 1})
    trt.PreviewFeature = enum.IntEnum("PreviewFeature", {"RUNTIME_ACTIVATION_RESIZE_10_10": 0})
    trt.QuantizationFlag = enum.IntEnum("QuantizationFlag", {"CALIBRATE_BEFORE_FUSION": 0})
    trt.TacticSource = enum.IntEnum("TacticSource", {"CUBLAS": 0})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    network = mock.MagicMock(name="network")
    network.num_inputs = len(INPUTS)
    tensors = []
    for name, shape in INPUTS.items():
        tensor = mock.MagicMock(name=name, shape=shape, dtype="float16", is_shape_tensor=False)
        tensor.name = name
        tensors.append(tensor)
    network.get_input.side_effect = lambda index: tensors[index]
    builder = trt.Builder.return_value
    builder.create_network.return_value = network
    parser = trt.OnnxParser.return_value
    parser.parse_from_file.return_value = parses
    parser.num_errors = 0 if parses else 1
    parser.get_error.return_value = "node Conv_3: unsupported"
    config = mock.NonCallableMagicMock(name="config")  # a real IBuilderConfig is not callable
    config.int8_calibrator, config.DLA_core, config.num_optimization_profiles = None, -1, 1
    config.get_memory_pool_limit.return_value = 1 << 30
    config.set_timing_cache.side_effect = lambda cache, ignore_mismatch: accepts_cache or cache.data == b""
    config.create_timing_cache.side_effect = lambda data: mock.MagicMock(data=data)
    config.get_timing_cache.return_value.serialize.return_value = b"updated cache"
    builder.create_builder_config.return_value = config
    builder.build_serialized_network.return_value = b"serialised plan"
    return trt


def build(monkeypatch, tmp_path, trt, timing_cache=b"old cache"):
    from bodyrt.export.tensorrt import build_engine

    assert ModuleProxy.current is trt
    monkeypatch.setitem(sys.modules, "tensorrt", TENSORRT)
    engine = tmp_path / "body.fp16.engine"
    cache = build_engine(tmp_path / "body.fp16.onnx", engine, MAX_PEOPLE, opt_people=2, timing_cache=timing_cache,
                         workspace_bytes=1 << 28)
    return engine, cache


def test_polygraphy_builds_a_strongly_typed_engine_over_the_person_axis(monkeypatch, tmp_path):
    trt = fake_tensorrt()
    engine, cache = build(monkeypatch, tmp_path, trt)
    builder = trt.Builder.return_value
    config = builder.create_builder_config.return_value
    flags = builder.create_network.call_args.kwargs["flags"]
    assert flags & (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    trt.OnnxParser.return_value.parse_from_file.assert_called_once_with(str(tmp_path / "body.fp16.onnx"))
    profile = builder.create_optimization_profile.return_value
    assert profile.set_shape.call_args_list == [
        mock.call("body_crops", (1, 3, 256, 256), (2, 3, 256, 256), (MAX_PEOPLE, 3, 256, 256)),
        mock.call("crop_transforms", (1, 3, 3), (2, 3, 3), (MAX_PEOPLE, 3, 3))]
    config.add_optimization_profile.assert_called_once_with(profile)
    config.clear_flag.assert_any_call(trt.BuilderFlag.TF32)
    assert not config.set_flag.called  # precision comes from the graph's types alone
    config.set_memory_pool_limit.assert_called_once_with(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    assert [call.args[0] for call in config.create_timing_cache.call_args_list][-1] == b"old cache"
    assert config.set_timing_cache.call_args_list[-1].args[0].data == b"old cache"
    builder.build_serialized_network.assert_called_once_with(builder.create_network.return_value, config)
    assert engine.read_bytes() == b"serialised plan"
    assert cache == b"updated cache"


def test_a_refused_timing_cache_is_replaced_by_an_empty_one(monkeypatch, tmp_path, caplog):
    trt = fake_tensorrt(accepts_cache=False)
    with caplog.at_level(logging.WARNING, logger="bodyrt"):
        engine, _ = build(monkeypatch, tmp_path, trt)
    config = trt.Builder.return_value.create_builder_config.return_value
    assert config.set_timing_cache.call_args_list[-1].args[0].data == b""
    assert "refused the timing cache" in caplog.text
    assert engine.read_bytes() == b"serialised plan"


def test_a_graph_tensorrt_cannot_parse_is_an_export_error(monkeypatch, tmp_path):
    trt = fake_tensorrt(parses=False)
    with pytest.raises(ExportError, match="body.fp16.onnx: TensorRT could not build an engine"):
        build(monkeypatch, tmp_path, trt)
    assert not (tmp_path / "body.fp16.engine").exists()


def test_a_failed_build_is_an_export_error_and_writes_nothing(monkeypatch, tmp_path):
    trt = fake_tensorrt()
    trt.Builder.return_value.build_serialized_network.return_value = None
    with pytest.raises(ExportError, match="could not build an engine"):
        build(monkeypatch, tmp_path, trt)
    assert list(tmp_path.iterdir()) == []
