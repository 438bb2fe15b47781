"""Backends run one stage graph: the same small interface for every inference library.

A runner is built from an ONNX file and options, `activate()`d once, asked to `infer(feeds)` with
a dict of numpy arrays, and `deactivate()`d. GPU backends live beside this one and import their
libraries lazily.
"""

import numpy as np

from bodyrt.errors import BackendUnavailableError

CPU_BACKENDS = ("onnxruntime", "openvino")


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU (the embedded default)."""

    name = "onnxruntime"

    def __init__(self, model_path, threads: int = 2, optimization: str = "all", session_config=None):
        """session_config: ONNX Runtime session config entries, over the defaults below."""
        self.model_path = str(model_path)
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


def available_backends() -> list[str]:
    """The CPU backends whose libraries import here, in order of preference for benchmarks."""
    import importlib.util

    found = ["onnxruntime"]
    try:
        if importlib.util.find_spec("openvino") is not None:
            found.append("openvino")
    except (ImportError, ValueError):  # ValueError: a module entry without a spec (stubbed out)
        pass
    from bodyrt.runtime.gpu import available_gpu_backends

    return found + available_gpu_backends()


def make_runner(backend: str, model_path, threads: int = 2, precision: str = "fp32", **options):
    """The runner for one stage graph on the named backend.

    precision: what this graph runs at (fp32; int8 for a quantized graph file; bf16 on openvino only).
    options: backend-specific (openvino: model_sha256, input_specs, cache_dir).
    """
    if backend == "onnxruntime":
        if precision == "bf16":
            raise BackendUnavailableError("bf16 runs on the openvino backend only (ONNX Runtime's CPU provider "
                                          "has no bf16 mode); use --backend openvino")
        return OnnxRuntimeRunner(model_path, threads=threads)
    if backend == "openvino":
        from bodyrt.runtime.openvino_backend import OpenVinoRunner

        return OpenVinoRunner(model_path, threads=threads, precision=precision, **options)
    if backend in ("tensorrt", "cuda"):  # GPU backends take their precision from the bundle's "gpu" section
        from bodyrt.runtime.gpu import make_gpu_runner

        return make_gpu_runner(backend, model_path)
    raise BackendUnavailableError(f"unknown backend {backend!r}; available here: {', '.join(CPU_BACKENDS)}")
