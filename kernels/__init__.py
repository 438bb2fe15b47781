"""bodyrt.kernels: the CUDA crop kernel, its host build for CPU tests, and its loading."""

import ctypes
import ctypes.util


def gpu_available_reason():
    """None when a CUDA driver with at least one device is usable, else why not (one line)."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        libcuda = ctypes.CDLL(name)
    except OSError:
        return "no CUDA driver (libcuda) on this machine"
    if libcuda.cuInit(0) != 0:
        return "the CUDA driver did not initialise"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA device found"
    return None
