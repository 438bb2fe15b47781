"""The opening check of the GPU runtime: can this GPU and driver load the crop kernel?

    check_crop_kernel(device)     # at open, before the first frame; BackendUnavailableError if not

The crop kernel comes from the shipped fatbin (CUDA 13, driver >= 580) or from NVRTC at first use
(bodyrt.kernels.module). A CUDA 12 driver refuses CUDA 13 code, an NVRTC newer than the driver
builds code it cannot load, and an old GPU has no image at all; without this check each of those
appears only at the first frame, as a bare CUDA error. Here it appears when the pipeline opens,
naming the GPU, the CUDA version the driver supports and the pip extra that matches it.
"""

from bodyrt.errors import BackendUnavailableError
from bodyrt.runtime.packages import gpu_extra_hint


def driver_cuda_version(device) -> int:
    """cuDriverGetVersion() of the device's driver: 12040 for a driver that supports CUDA 12.4."""
    return int(device.call("cuDriverGetVersion"))


def check_crop_kernel(device) -> None:
    """Load the crop kernels on `device` (a CudaDevice); BackendUnavailableError naming the driver's
    CUDA version and the package to install when they cannot load."""
    driver_version = driver_cuda_version(device)
    try:
        device.kernels()
    except BackendUnavailableError as error:
        name = getattr(device, "name", f"GPU {getattr(device, 'ordinal', 0)}")
        capability = getattr(device, "compute_capability", "?")
        raise BackendUnavailableError(
            f"the crop kernel cannot load on {name} (compute capability {capability}) under a driver that "
            f"supports CUDA {driver_version // 1000}.{driver_version % 1000 // 10}: {error}. Install the GPU "
            f"packages of the driver's CUDA major: {gpu_extra_hint(driver_version)}") from None
