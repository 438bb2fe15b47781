"""The CUDA driver, as plain ints: one GPU in its primary context, memory, streams, events, kernels, graphs.

Pointers and streams are plain ints (tensor.data_ptr(), cupy_array.data.ptr, int(pycuda buffer);
torch.cuda.current_stream().cuda_stream, cupy stream .ptr, pycuda stream .handle). They must live in
the device's primary context, which PyTorch and CuPy use (pycuda: import pycuda.autoprimaryctx).

cuda-python is imported lazily; a missing package or driver raises BackendUnavailableError.
"""

import ctypes
from dataclasses import dataclass

import numpy as np

from bodyrt.errors import BackendUnavailableError, BundleError
from bodyrt.runtime.packages import gpu_extra_hint


def import_cuda_driver():
    """cuda.bindings.driver, or BackendUnavailableError saying what to install."""
    try:
        from cuda.bindings import driver
    except ImportError as error:
        raise BackendUnavailableError(f"the GPU runtime needs the cuda-python package ({error}); "
                                      f"{gpu_extra_hint()}") from None
    return driver


class CudaDevice:
    """One GPU through the CUDA driver API, in its primary context (the one PyTorch and CuPy use).

    Every handle it hands out (pointers, streams, events) is a plain int.
    """

    def __init__(self, ordinal: int = 0):
        self.driver = import_cuda_driver()
        self.ordinal = ordinal
        try:
            self.call("cuInit", 0)
        except RuntimeError as error:  # cuda-python opens libcuda at the first call
            raise BackendUnavailableError(f"no usable CUDA driver ({error}); the GPU backends need an NVIDIA "
                                          "GPU with its driver") from None
        self.device = self.call("cuDeviceGet", ordinal)
        self.context = self.call("cuDevicePrimaryCtxRetain", self.device)
        self.call("cuCtxSetCurrent", self.context)
        self.name = self.call("cuDeviceGetName", 256, self.device).split(b"\0", 1)[0].decode()
        attribute = self.driver.CUdevice_attribute
        major = self.call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device)
        minor = self.call("cuDeviceGetAttribute", attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device)
        self.compute_capability = f"{major}.{minor}"
        self._kernels = None
        self._module = None
        self._released = False

    def make_current(self) -> None:
        """Make the device's context current on the calling thread. CUDA contexts are current per
        thread: __init__ made it current on the opening thread only, and on any other thread every
        allocation, copy and launch would fail with CUDA_ERROR_INVALID_CONTEXT."""
        self.call("cuCtxSetCurrent", self.context)

    def call(self, function: str, *args):
        """driver.function(*args), whose (CUresult, values...) becomes the values or an exception."""
        status, *values = getattr(self.driver, function)(*args)
        if status != self.driver.CUresult.CUDA_SUCCESS:
            _, name = self.driver.cuGetErrorName(status)
            raise BackendUnavailableError(f"CUDA {function} failed on GPU {self.ordinal}: "
                                          f"{name.decode() if name else int(status)}")
        return values[0] if len(values) == 1 else values

    def _stream(self, stream: int):
        return self.driver.CUstream(stream)

    def _event(self, event: int):
        return self.driver.CUevent(event)

    def allocate(self, nbytes: int) -> int:
        return int(self.call("cuMemAlloc", max(nbytes, 1)))

    def free(self, pointer: int) -> None:
        self.call("cuMemFree", self.driver.CUdeviceptr(pointer))

    def allocate_host(self, nbytes: int) -> int:
        """Page-locked host memory, so asynchronous copies stay asynchronous."""
        return int(self.call("cuMemHostAlloc", max(nbytes, 1), 0))

    def free_host(self, pointer: int) -> None:
        self.call("cuMemFreeHost", pointer)

    def create_stream(self) -> int:
        return int(self.call("cuStreamCreate", int(self.driver.CUstream_flags.CU_STREAM_NON_BLOCKING)))

    def destroy_stream(self, stream: int) -> None:
        self.call("cuStreamDestroy", self._stream(stream))

    def create_event(self) -> int:
        return int(self.call("cuEventCreate", int(self.driver.CUevent_flags.CU_EVENT_DEFAULT)))

    def destroy_event(self, event: int) -> None:
        self.call("cuEventDestroy", self._event(event))

    def record_event(self, event: int, stream: int) -> None:
        self.call("cuEventRecord", self._event(event), self._stream(stream))

    def wait_event(self, stream: int, event: int) -> None:
        """Work queued on `stream` from now on waits for `event`; the host does not wait."""
        self.call("cuStreamWaitEvent", self._stream(stream), self._event(event), 0)

    def synchronize_event(self, event: int) -> None:
        self.call("cuEventSynchronize", self._event(event))

    def elapsed_ms(self, start: int, end: int) -> float:
        return float(self.call("cuEventElapsedTime", self._event(start), self._event(end)))

    def copy_to_device(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        self.call("cuMemcpyHtoDAsync", self.driver.CUdeviceptr(destination), source, nbytes, self._stream(stream))

    def copy_to_host(self, destination: int, source: int, nbytes: int, stream: int) -> None:
        self.call("cuMemcpyDtoHAsync", destination, self.driver.CUdeviceptr(source), nbytes, self._stream(stream))

    def kernels(self) -> dict:
        """The crop kernels by entry point name, from the shipped fatbin or NVRTC (bodyrt.kernels.module)."""
        if self._kernels is None:
            from bodyrt.kernels.launch import KERNEL_NAMES
            from bodyrt.kernels.module import crop_kernel_image

            major, minor = (int(part) for part in self.compute_capability.split("."))
            image, _ = crop_kernel_image((major, minor), int(self.call("cuDriverGetVersion")))
            self._module = self.call("cuModuleLoadData", image)
            self._kernels = {name: self.call("cuModuleGetFunction", self._module, name.encode())
                             for name in KERNEL_NAMES}
        return self._kernels

    def launch(self, launch, stream: int) -> None:
        """One bodyrt.kernels.launch.KernelLaunch on `stream`."""
        params = launch.kernel_params()  # points into `launch`: both alive until cuLaunchKernel returns
        self.call("cuLaunchKernel", self.kernels()[launch.kernel], *launch.grid, *launch.block,
                  launch.shared_memory_bytes, self._stream(stream), ctypes.addressof(params), 0)

    def begin_capture(self, stream: int) -> None:
        mode = self.driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        self.call("cuStreamBeginCapture", self._stream(stream), mode)

    def end_capture(self, stream: int):
        """The work captured since begin_capture, as an executable graph."""
        graph = self.call("cuStreamEndCapture", self._stream(stream))
        executable = self.call("cuGraphInstantiate", graph, 0)
        self.call("cuGraphDestroy", graph)
        return executable

    def launch_graph(self, executable, stream: int) -> None:
        self.call("cuGraphLaunch", executable, self._stream(stream))

    def destroy_graph(self, executable) -> None:
        self.call("cuGraphExecDestroy", executable)

    def close(self) -> None:
        """Unload the crop kernels and release the primary context (once); the caller has synchronised."""
        if self._released:
            return
        self.make_current()
        if self._module is not None:
            self.call("cuModuleUnload", self._module)
            self._module, self._kernels = None, None
        self.call("cuDevicePrimaryCtxRelease", self.device)
        self._released = True


def host_array(pointer: int, dtype, shape) -> np.ndarray:
    """A numpy view of host memory at `pointer` (page-locked buffers)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    buffer = (ctypes.c_byte * (count * dtype.itemsize)).from_address(pointer)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


@dataclass
class DeviceTensor:
    """A device buffer for up to max_people persons of one tensor: (people, *per_person) of dtype."""

    pointer: int
    dtype: np.dtype
    per_person: tuple

    def nbytes(self, people: int) -> int:
        return people * int(np.prod(self.per_person, dtype=np.int64)) * self.dtype.itemsize


def per_person_shape(spec, where: str) -> tuple:
    """A manifest TensorSpec's shape without its person axis; BundleError unless axis 0 is the only free one."""
    shape = spec.shape
    if not shape or isinstance(shape[0], int) or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        raise BundleError(f"{where}: tensor {spec.name} has shape {list(shape)}; the GPU runtime needs a person "
                          "axis first and fixed sizes after it")
    return tuple(shape[1:])
