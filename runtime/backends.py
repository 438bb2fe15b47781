"""The backends, in one registry: name -> runner factory, device stage factory, availability.

A runner (the Runner protocol) runs one stage graph of an opened bundle with numpy in and out: it is
`activate()`d once, asked to `infer(feeds)`, and `deactivate()`d; `precision_ran` says what
actually ran. A device stage (GPU backends) runs a stage graph on device buffers for the device
executor. open_executor() picks the executor a backend runs the steps with: HostExecutor for the
CPU backends, DeviceExecutor for the GPU ones.

Precisions, one vocabulary for every command: fp32, fp16, bf16, int8 (bodyrt.runtime.manifest).
Each backend says which it runs and why not the others.
"""

import importlib.util
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from bodyrt.errors import BackendUnavailableError, BundleError, InputError
from bodyrt.runtime.manifest import PRECISIONS

CPU_BACKENDS = ("onnxruntime", "openvino")
GPU_BACKENDS = ("tensorrt", "cuda")


@runtime_checkable
class Runner(Protocol):
    """One stage graph behind one interface, whatever the library."""

    name: str
    precision_ran: str | None  # what ran, as the library reports it (None before activate)

    def activate(self) -> "Runner": ...

    def infer(self, feeds: dict) -> dict: ...

    def deactivate(self) -> None: ...


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU (the embedded default)."""

    name = "onnxruntime"

    def __init__(self, model_path, threads: int = 2, optimization: str = "all", session_config=None,
                 precision: str = "fp32"):
        """session_config: ONNX Runtime session config entries, over the defaults below; precision: the
        graph file's (fp32, or int8 for a quantized graph), which is what ONNX Runtime's CPU provider runs."""
        self.model_path = str(model_path)
        self.precision_ran = precision
        self.threads = threads
        self.optimization = optimization
        self.session_config = dict(session_config or {})
        self.session = None

    def activate(self):
        from bodyrt.runtime.packages import import_onnxruntime

        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Each stage has its own session and thread pool. Workers that keep spinning after a run starve
        # the next stage on two cores: 471 ms instead of 283 ms for one 720p person. They spin inside
        # a run (fast hand-off between operators) and stop when it returns.
        config = {"session.force_spinning_stop": "1", **self.session_config}
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        options.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        self.session = ort.InferenceSession(self.model_path, options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]
        return self

    def infer(self, feeds: dict) -> dict:
        values = self.session.run(self.output_names, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return dict(zip(self.output_names, values))

    def deactivate(self):
        self.session = None


def _onnxruntime_runner(bundle, stage: str, file: str, threads: int, precision: str):
    return OnnxRuntimeRunner(bundle.file(file), threads=threads, precision=precision)


def _openvino_runner(bundle, stage: str, file: str, threads: int, precision: str):
    from bodyrt.runtime.openvino_backend import OpenVinoRunner

    return OpenVinoRunner(bundle.file(file), threads=threads, precision=precision,
                          input_specs=bundle.stage(stage).inputs,
                          model_sha256=bundle.manifest.files.get(file))


def _tensorrt_runner(bundle, stage: str, file: str, threads: int, precision: str):
    from bodyrt.runtime.tensorrt_backend import TensorRTRunner

    return TensorRTRunner(bundle, stage)


def _cuda_runner(bundle, stage: str, file: str, threads: int, precision: str):
    from bodyrt.runtime.cuda_backend import OnnxRuntimeCudaRunner

    return OnnxRuntimeCudaRunner(bundle, stage)


def _tensorrt_stage(bundle, stage: str, device, stream: int):
    from bodyrt.runtime.tensorrt_backend import TensorRTStage

    return TensorRTStage(bundle, stage, device)


def _cuda_stage(bundle, stage: str, device, stream: int):
    from bodyrt.runtime.cuda_backend import OnnxRuntimeCudaStage

    return OnnxRuntimeCudaStage(bundle, stage, device, stream)


def _module_missing(*modules) -> str | None:
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return f"the {module} package is not installed"
        except (ImportError, ValueError):  # ValueError: a module entry without a spec (stubbed out)
            return f"the {module} package is not importable"
    return None


def _gpu_missing(*modules) -> str | None:
    from bodyrt.kernels import gpu_available_reason

    return gpu_available_reason() or _module_missing(*modules)


def _cuda_missing() -> str | None:
    reason = _gpu_missing("cuda")
    if reason:
        return reason
    from bodyrt.runtime.packages import gpu_extra_hint, import_onnxruntime

    try:
        onnxruntime = import_onnxruntime()
    except BackendUnavailableError as error:
        return str(error)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return f"this onnxruntime has no CUDA provider (pip uninstall -y onnxruntime, then {gpu_extra_hint()})"
    return None


@dataclass(frozen=True)
class Backend:
    """runs_on "host" (numpy crops, runners) or "device" (the CUDA kernel, device stages).

    precisions: precision -> None if it runs, else the reason it does not. make_runner(bundle, stage,
    file, threads, precision) -> Runner; make_stage(bundle, stage, device, stream) -> device stage or None;
    unavailable() -> None, or why the backend cannot run here.
    """

    name: str
    runs_on: str
    precisions: dict
    make_runner: Callable
    make_stage: Callable | None
    unavailable: Callable


_GPU_PRECISION = ("a GPU backend runs the precision its graphs and engines were exported with "
                  "(bodyrt export --engine tensorrt --precision fp16)")
BACKENDS = {
    "onnxruntime": Backend(
        "onnxruntime", "host",
        {"fp32": None, "int8": None,
         "fp16": "fp16 is for the GPU backends (bodyrt export --precision fp16, then --backend tensorrt or cuda)",
         "bf16": "bf16 runs on the openvino backend only (ONNX Runtime's CPU provider has no bf16 mode); "
                 "use --backend openvino"},
        _onnxruntime_runner, None, lambda: None),
    "openvino": Backend(
        "openvino", "host",
        {"fp32": None, "bf16": None, "int8": None,
         "fp16": "fp16 is for the GPU backends (bodyrt export --precision fp16, then --backend tensorrt or cuda)"},
        _openvino_runner, None, lambda: _module_missing("openvino")),
    "tensorrt": Backend(
        "tensorrt", "device",
        {"fp32": None, "fp16": None, "bf16": _GPU_PRECISION, "int8": _GPU_PRECISION},
        _tensorrt_runner, _tensorrt_stage, lambda: _gpu_missing("tensorrt", "cuda")),
    "cuda": Backend(
        "cuda", "device",
        {"fp32": None, "fp16": None, "bf16": _GPU_PRECISION, "int8": _GPU_PRECISION},
        _cuda_runner, _cuda_stage, _cuda_missing),
}


def backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def check_precision(name: str, precision: str) -> None:
    """InputError when the precision is not one of PRECISIONS or the backend cannot run it (with why)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    reason = backend(name).precisions[precision]
    if reason:
        raise InputError(f"--precision {precision} cannot run on the {name} backend: {reason}")


def available_backends() -> list[str]:
    """The backends usable here, in order of preference for benchmarks."""
    return [name for name, entry in BACKENDS.items() if entry.unavailable() is None]


def stage_plan(bundle, precision: str = "fp32") -> dict:
    """stage name -> {"file", "precision"}: which graph each stage runs on a CPU backend, at which precision.

    fp32: the exported graphs. bf16: the same graphs, except the manifest's `fp32_stages`, which stay
    fp32 (lower precision costs them fidelity out of proportion to its speed). int8: the graphs of the
    bundle's int8 variant (written by `bodyrt quantize`); stages it leaves out stay fp32.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    manifest = bundle.manifest
    keep_fp32 = set(manifest.fp32_stages)
    quantized = {}
    if precision == "int8":
        if manifest.variants.int8 is None:
            raise BundleError(f"{bundle.path}: the bundle has no int8 variant; make one with "
                              f"bodyrt quantize --bundle {bundle.path} --calibration IMAGE_FOLDER")
        quantized = manifest.variants.int8.stages
    plan = {}
    for stage in manifest.stages:
        name = stage.name
        if precision == "int8" and name in quantized:
            plan[name] = {"file": quantized[name], "precision": "int8"}
        elif precision == "bf16" and name not in keep_fp32:
            plan[name] = {"file": stage.file, "precision": "bf16"}
        else:
            plan[name] = {"file": stage.file, "precision": "fp32"}
    return plan


def make_runner(name: str, bundle, stage: str, threads: int = 2, precision: str = "fp32") -> Runner:
    """The runner of one stage of an opened bundle on the named backend (GPU backends: their GPU graph)."""
    entry = backend(name)
    plan = stage_plan(bundle, precision) if entry.runs_on == "host" else {
        stage: {"file": bundle.manifest.gpu_graph(stage).file, "precision": bundle.manifest.gpu_graph(stage).precision}}
    if stage not in plan:
        raise BundleError(f"{bundle.path}: no stage named {stage!r}")
    return entry.make_runner(bundle, stage, plan[stage]["file"], threads, plan[stage]["precision"])


def open_executor(bundle, name: str, threads: int = 2, precision: str = "fp32", **options):
    """The executor that runs the bundle's steps on the named backend at the precision.

    Host backends: HostExecutor with one activated runner per stage. Device backends: DeviceExecutor
    (options: device, stream, max_people, cuda_graphs); precision fp32 means "the bundle's GPU graphs".
    """
    entry = backend(name)
    if entry.runs_on == "device":
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if entry.precisions[precision]:
            raise InputError(f"--precision {precision} is for the CPU backends; {entry.precisions[precision]}")
        exported = bundle.manifest.gpu.precision if bundle.manifest.gpu is not None else "fp32"
        if precision not in ("fp32", exported):
            raise InputError(f"--precision {precision}: this bundle's GPU graphs are {exported}; {_GPU_PRECISION}")
        from bodyrt.runtime.device_executor import DeviceExecutor

        return DeviceExecutor(bundle, name, entry.make_stage, **options)
    if options:
        raise InputError(f"{', '.join(options)}: options of the GPU backends, not of {name}")
    check_precision(name, precision)
    from bodyrt.runtime.pipeline import HostExecutor

    plan = stage_plan(bundle, precision)
    runners = {}
    try:
        for stage in bundle.manifest.stages:
            planned = plan[stage.name]
            runner = entry.make_runner(bundle, stage.name, planned["file"], threads, planned["precision"])
            runners[stage.name] = runner.activate()
    except BaseException:
        for runner in runners.values():
            runner.deactivate()
        raise
    stage_precisions = {name_: runner.precision_ran or plan[name_]["precision"] for name_, runner in runners.items()}
    return HostExecutor(bundle, runners, name, precision, stage_precisions)
