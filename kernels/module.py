"""Which crop-kernel binary a GPU gets: the shipped fatbin, or a cubin NVRTC compiles at first use.

    image, origin = crop_kernel_image(compute_capability=(8, 6), driver_version=12040)
    # cuModuleLoadData(image); cuModuleGetFunction(module, b"part_crops_f16"), ...

The GPU runtime asks the driver for the device's compute capability and cuDriverGetVersion(), then
calls this. Nothing here touches a GPU: it picks and builds bytes.

Rules (kernels/README.md): the fatbin is built by nvcc 13.0 (cubins sm_75..sm_90, PTX compute_90),
so it needs a CUDA 13 driver (>= 580). It is used when its stamp matches crops.cu and the device can
run one of its images: a cubin of the same major architecture and no newer minor, or the PTX on a
device at least as new. Otherwise NVRTC (cuda-python, imported lazily) compiles a cubin for exactly
this device, cached in ~/.cache/bodyrt; a cubin, not PTX, because a CUDA 12 driver runs cubins from
any 12.x NVRTC but rejects PTX from a newer minor release.
"""

import json
from pathlib import Path

from bodyrt.errors import BackendUnavailableError
from bodyrt.kernels.build import FATBIN_NAME, KERNEL_DIR, STAMP_SUFFIX, cache_dir, source_sha256, write_atomically
from bodyrt.kernels.nvrtc import NVRTC_INSTALL_HINT, compile_with_nvrtc, nvrtc_version

OLDEST_COMPUTE_CAPABILITY = (7, 5)  # CUDA 13 dropped older GPUs; the fatbin starts at sm_75
OLDEST_DRIVER = 12000               # CUDA 12.0 (driver >= 525): minor version compatibility for cubins


def _arch_number(arch: str) -> tuple:
    """'sm_86' or 'compute_90' -> (8, 6) or (9, 0)."""
    digits = arch.split("_")[1]
    return int(digits[:-1]), int(digits[-1])


def fatbin_serves(stamp: dict, compute_capability: tuple, driver_version: int) -> bool:
    """True when a fatbin with this stamp holds an image the device and the driver can load."""
    if driver_version < int(stamp["nvcc"].split(".")[0]) * 1000:
        return False
    major, minor = compute_capability
    if any(_arch_number(arch)[0] == major and _arch_number(arch)[1] <= minor for arch in stamp["cubins"]):
        return True
    return bool(stamp.get("ptx")) and _arch_number(stamp["ptx"]) <= (major, minor)


def shipped_fatbin(directory=KERNEL_DIR):
    """(fatbin bytes, stamp dict) of directory/crops.fatbin when it was built from this crops.cu, else None."""
    fatbin, stamp_path = Path(directory) / FATBIN_NAME, Path(directory) / (FATBIN_NAME + STAMP_SUFFIX)
    if not fatbin.is_file() or not stamp_path.is_file():
        return None
    stamp = json.loads(stamp_path.read_text())
    if stamp.get("source_sha256") != source_sha256():
        return None
    return fatbin.read_bytes(), stamp


def nvrtc_cubin(compute_capability: tuple, driver_version: int, cache=None) -> bytes:
    """A cubin for sm_XY from NVRTC, cached by crops.cu's hash, the arch and the NVRTC version.

    Raises BackendUnavailableError when cuda-python or NVRTC is missing, or when NVRTC is of a newer
    CUDA major version than the driver (whose minor version compatibility ends at its major).
    """
    nvrtc_major, nvrtc_minor = nvrtc_version()
    if nvrtc_major * 1000 > driver_version:
        raise BackendUnavailableError(
            f"NVRTC {nvrtc_major}.{nvrtc_minor} builds code the CUDA {driver_version // 1000}."
            f"{driver_version % 1000 // 10} driver cannot load; {NVRTC_INSTALL_HINT}")
    arch = f"sm_{compute_capability[0]}{compute_capability[1]}"
    cache = Path(cache) if cache is not None else cache_dir()
    path = cache / f"crops_{source_sha256()[:16]}_{arch}_nvrtc{nvrtc_major}.{nvrtc_minor}.cubin"
    if path.is_file():
        return path.read_bytes()
    cubin = compile_with_nvrtc(arch)
    cache.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda temporary: temporary.write_bytes(cubin))
    return cubin


def crop_kernel_image(compute_capability: tuple, driver_version: int, fatbin_directory=KERNEL_DIR,
                      cache=None) -> tuple:
    """(bytes for cuModuleLoadData, "fatbin" or "nvrtc") for a device of this compute capability
    (major, minor) under a driver reporting cuDriverGetVersion() == driver_version (12040 = 12.4).

    Raises BackendUnavailableError for GPUs older than sm_75, drivers older than CUDA 12.0, or when
    the fatbin does not serve and NVRTC is unavailable (naming the pip packages to install).
    """
    compute_capability = tuple(int(value) for value in compute_capability)
    if compute_capability < OLDEST_COMPUTE_CAPABILITY:
        raise BackendUnavailableError(f"the crop kernel needs a GPU of compute capability >= 7.5, this one is "
                                      f"{compute_capability[0]}.{compute_capability[1]}")
    if driver_version < OLDEST_DRIVER:
        raise BackendUnavailableError(f"the crop kernel needs a CUDA 12 or newer driver (>= 525), this one "
                                      f"reports CUDA {driver_version // 1000}.{driver_version % 1000 // 10}")
    shipped = shipped_fatbin(fatbin_directory)
    if shipped is not None and fatbin_serves(shipped[1], compute_capability, driver_version):
        return shipped[0], "fatbin"
    return nvrtc_cubin(compute_capability, driver_version, cache), "nvrtc"
