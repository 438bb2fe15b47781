"""The `cuda` backend: the bundle's ONNX graphs (fp16 ones when exported) on ONNX Runtime's CUDA provider.

ONNX Runtime asked for CUDAExecutionProvider without it (the CPU build of onnxruntime, missing CUDA
or cuDNN libraries, no GPU) does not fail: it runs on the CPU. Every session is therefore checked
with get_providers() right after creation and a fallback is reported as BackendUnavailableError,
never passed off as GPU.

On the device (the device executor) the graphs run with IO binding on preallocated device buffers, on the
pipeline's stream (user_compute_stream), without a synchronisation at the end of each run.
"""

import numpy as np

from bodyrt.errors import BackendUnavailableError
from bodyrt.runtime.device import per_person_shape
from bodyrt.runtime.packages import gpu_extra_hint, import_onnxruntime

CUDA_PROVIDER = "CUDAExecutionProvider"


def check_providers(session, wanted: str, model_path) -> None:
    """BackendUnavailableError when `session` is not running on the `wanted` provider, saying why."""
    ort = import_onnxruntime()
    active = session.get_providers()
    if wanted in active:
        return
    if wanted not in ort.get_available_providers():
        why = (f"this onnxruntime {ort.__version__} is a build without {wanted}: replace the onnxruntime package "
               f"by onnxruntime-gpu (pip uninstall -y onnxruntime, then {gpu_extra_hint()})")
    else:
        why = (f"{wanted} is built in but did not load: CUDA or cuDNN libraries are missing or there is no GPU "
               "(ONNX Runtime's warning above says which)")
    raise BackendUnavailableError(f"{model_path}: ONNX Runtime fell back to {', '.join(active)} instead of the GPU; "
                                  f"{why}")


def cuda_session(model_path, device_id: int = 0, stream=None):
    """An InferenceSession on CUDAExecutionProvider (on `stream` when given), checked for a CPU fallback."""
    ort = import_onnxruntime()
    options = {"device_id": str(device_id)}
    if stream:
        options["user_compute_stream"] = str(int(stream))
    session = ort.InferenceSession(str(model_path), providers=[(CUDA_PROVIDER, options), "CPUExecutionProvider"])
    check_providers(session, CUDA_PROVIDER, model_path)
    return session


class OnnxRuntimeCudaRunner:
    """A stage's GPU graph on ONNX Runtime CUDA behind the runner interface (numpy in and out)."""

    name = "cuda"

    def __init__(self, bundle, stage: str, device_id: int = 0):
        self.bundle, self.stage = bundle, stage
        self.device_id = device_id
        self.session = None
        self.precision_ran = None

    def activate(self):
        graph = self.bundle.manifest.gpu_graph(self.stage)
        self.session = cuda_session(self.bundle.file(graph.file), self.device_id)
        self.input_dtypes = {spec.name: np.dtype(spec.dtype) for spec in graph.inputs}
        self.output_names = [spec.name for spec in graph.outputs]
        self.precision_ran = graph.precision
        return self

    def infer(self, feeds: dict) -> dict:
        feeds = {name: np.ascontiguousarray(value, dtype=self.input_dtypes[name]) for name, value in feeds.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def deactivate(self):
        self.session = None


class OnnxRuntimeCudaStage:
    """A stage's GPU graph on the device: IO binding to the pipeline's buffers, on its stream."""

    def __init__(self, bundle, stage: str, device, stream: int):
        ort = import_onnxruntime()
        graph = bundle.manifest.gpu_graph(stage)
        where = f"{bundle.path / graph.file}"
        self.stage = stage
        self.device_id = device.ordinal
        self.stream = stream
        self.session = cuda_session(bundle.file(graph.file), device.ordinal, stream)
        self.inputs = [{"name": spec.name, "dtype": spec.dtype, "per_person": per_person_shape(spec, where)}
                       for spec in graph.inputs]
        self.outputs = [{"name": spec.name, "dtype": spec.dtype, "per_person": per_person_shape(spec, where)}
                        for spec in graph.outputs]
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def enqueue(self, people: int, addresses: dict, stream: int) -> None:
        if int(stream) != self.stream:
            raise BackendUnavailableError(f"stage {self.stage}: ONNX Runtime's session runs on stream {self.stream}, "
                                          f"not {stream}")
        binding = self.session.io_binding()
        for spec in self.inputs:
            binding.bind_input(spec["name"], "cuda", self.device_id, np.dtype(spec["dtype"]),
                               [people, *spec["per_person"]], addresses[spec["name"]])
        for spec in self.outputs:
            binding.bind_output(spec["name"], "cuda", self.device_id, np.dtype(spec["dtype"]),
                                [people, *spec["per_person"]], addresses[spec["name"]])
        self.session.run_with_iobinding(binding, self.run_options)

    def close(self) -> None:
        self.session = None
