"""Backends run one stage graph: the same small interface for every inference library.

A runner is built from an ONNX file and options, `activate()`d once, asked to `infer(feeds)` with
a dict of numpy arrays, and `deactivate()`d. GPU backends live beside this one and import their
libraries lazily.
"""

import numpy as np

from bodyrt.errors import BackendUnavailableError

CPU_BACKENDS = ("onnxruntime",)


class OnnxRuntimeRunner:
    """ONNX Runtime on the CPU (the embedded default)."""

    name = "onnxruntime"

    def __init__(self, model_path, threads: int = 2, optimization: str = "all"):
        self.model_path = str(model_path)
        self.threads = threads
        self.optimization = optimization
        self.session = None

    def activate(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
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
    found = ["onnxruntime"]
    return found


def make_runner(backend: str, model_path, threads: int = 2):
    """The runner for one stage graph on the named backend."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(model_path, threads=threads)
    raise BackendUnavailableError(f"unknown backend {backend!r}; available here: {', '.join(CPU_BACKENDS)}")
