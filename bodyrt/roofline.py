"""What the CPU can do and what each stage asks of it: the roofline columns of `bodyrt bench`.

- cpu_description(): model name, cores this process may use, and the features that decide which
  kernels run (AVX2, AVX-512, VNNI, BF16, AMX).
- measure_peaks(): the machine's peak per precision, measured, not looked up: a square matmul on
  OpenVINO's CPU plugin with the bench's thread count, best of several runs. fp32 and bf16 use the
  precision hint; int8 puts FakeQuantize on both operands, which OpenVINO lowers to its u8 x s8
  kernels. The kernel OpenVINO picked (e.g. brgemm_avx512_amx_bf16) is reported beside the figure.
- graph_operations(): operations of one stage graph counted from the graph itself (convolutions,
  grouped convolutions and matrix products, 2 per multiply-add), and its weight and activation bytes.
  Everything else (additions, activations, normalisations) is memory traffic, not counted as work.
"""

import os
import time
from pathlib import Path

import numpy as np

FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
PROBE_SIZE = 1024
PROBE_REPEATS = 10
PEAK_DERIVATION = (f"best of {PROBE_REPEATS} runs of a {PROBE_SIZE}x{PROBE_SIZE}x{PROBE_SIZE} matmul on "
                   "OpenVINO's CPU plugin at the bench's thread count (fp32/bf16 by precision hint, int8 by "
                   "FakeQuantize on both operands), 2 operations per multiply-add")
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def cpu_description(cpuinfo_path="/proc/cpuinfo") -> dict:
    """{"model", "cores", "features": {name: bool}} from /proc/cpuinfo (Linux); "unknown" elsewhere."""
    model, flags = "unknown", set()
    try:
        for line in Path(cpuinfo_path).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model == "unknown":
                model = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "features": {name: name in flags for name in FEATURES}}


def describe_cpu(cpu: dict) -> str:
    present = [name for name, has in cpu["features"].items() if has]
    return f"{cpu['model']}, {cpu['cores']} cores; {' '.join(present) or 'none of ' + ' '.join(FEATURES)}"


def _probe_model(openvino, size: int, int8: bool):
    from openvino import opset13 as ops

    activations = ops.parameter([size, size], np.float32, name="activations")
    weights = ops.constant(np.random.default_rng(0).uniform(-1, 1, (size, size)).astype(np.float32))
    left, right = activations, weights
    if int8:
        zero, top, bound = (ops.constant(np.float32(v)) for v in (0.0, 4.0, 1.0))
        minus = ops.constant(np.float32(-1.0))
        left = ops.fake_quantize(activations, zero, top, zero, top, 256)
        right = ops.fake_quantize(weights, minus, bound, minus, bound, 255)
    return openvino.Model([ops.matmul(left, right, False, True)], [activations])


def measure_peaks(threads: int, precisions=("fp32", "bf16", "int8"), size: int = PROBE_SIZE,
                  repeats: int = PROBE_REPEATS) -> dict:
    """precision -> {"gops", "kernel"} or {"unavailable": reason}."""
    from bodyrt.runtime.openvino_backend import import_openvino

    openvino = import_openvino()
    core = openvino.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    peaks = {}
    inputs = np.random.default_rng(1).uniform(0, 4, (size, size)).astype(np.float32)
    for precision in precisions:
        if precision == "bf16" and "BF16" not in capabilities:
            peaks[precision] = {"unavailable": "OpenVINO reports no native bf16 on this CPU"}
            continue
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision], "INFERENCE_NUM_THREADS": threads,
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(_probe_model(openvino, size, precision == "int8"), "CPU", config)
        request = compiled.create_infer_request()
        for _ in range(3):
            request.infer({0: inputs})
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            request.infer({0: inputs})
            best = min(best, time.perf_counter() - start)
        kernels = [op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
                   if op.get_rt_info()["layerType"].astype(str) in ("MatMul", "FullyConnected")]
        peaks[precision] = {"gops": 2.0 * size ** 3 / best / 1e9, "kernel": kernels[-1] if kernels else "unknown"}
    return peaks


def _static(shape) -> list:
    return [int(dim) for dim in shape]


def graph_operations(model_path, input_shapes: dict) -> dict:
    """Operations and bytes of one graph at static input shapes.

    Returns {"gop": 1e9 operations (2 per multiply-add of convolutions and matrix products),
    "weight_mb": constant bytes, "activation_mb": bytes of every intermediate output (float32)}.
    """
    from bodyrt.runtime.openvino_backend import import_openvino

    openvino = import_openvino()
    model = openvino.Core().read_model(str(model_path))
    model.reshape(input_shapes)
    multiply_adds = 0
    weight_bytes = 0
    activation_bytes = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Constant":
            weight_bytes += op.get_byte_size()
            continue
        if kind in ("Parameter", "Result"):
            continue
        for index in range(op.get_output_size()):
            activation_bytes += 4 * int(np.prod(_static(op.get_output_partial_shape(index).to_shape())))
        output = _static(op.get_output_partial_shape(0).to_shape()) if op.get_output_size() else []
        if kind == "Convolution":
            kernel = _static(op.input(1).get_partial_shape().to_shape())  # (Cout, Cin, kh, kw)
            multiply_adds += int(np.prod(output)) * int(np.prod(kernel[1:]))
        elif kind == "GroupConvolution":
            kernel = _static(op.input(1).get_partial_shape().to_shape())  # (G, Cout/G, Cin/G, kh, kw)
            multiply_adds += int(np.prod(output)) * int(np.prod(kernel[2:]))
        elif kind == "MatMul":
            left = _static(op.input(0).get_partial_shape().to_shape())
            transpose_left = op.get_attributes()["transpose_a"]
            inner = left[-2] if transpose_left and len(left) > 1 else left[-1]
            multiply_adds += int(np.prod(output)) * inner
    return {"gop": 2.0 * multiply_adds / 1e9, "weight_mb": weight_bytes / 2 ** 20,
            "activation_mb": activation_bytes / 2 ** 20}


def bundle_operations(bundle, people: int = 1) -> dict:
    """stage name -> graph_operations of its fp32 graph for `people` persons."""
    from bodyrt.runtime.openvino_backend import static_shapes

    return {stage.name: graph_operations(bundle.file(stage.file), static_shapes(stage.inputs, people))
            for stage in bundle.manifest.stages}
