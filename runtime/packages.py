"""Which optional packages are installed, and what to install when one is missing or two clash.

    ort = import_onnxruntime()              # onnxruntime, or BackendUnavailableError naming the extra
    gpu_extra(driver_version=12040)         # 'gpu-cu12': the extra a CUDA 12.4 driver needs

ONNX Runtime comes in two distributions with one import name: `onnxruntime` (CPU) and
`onnxruntime-gpu` (CUDA, CPU too). pip installs them over one another, and which files win depends
on the order: the CUDA provider may be missing from a "GPU" install, or the CPU build may report
being a GPU one. bodyrt's extras install exactly one (cpu, gpu-cu12, gpu-cu13); a machine where
both are installed anyway is refused here with the fix, rather than left to fail later.
"""

import importlib.metadata

from bodyrt.errors import BackendUnavailableError

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
CPU_EXTRA_HINT = 'pip install "bodyrt[cpu]" (from a checkout: pip install ".[cpu]")'


def gpu_extra(driver_version: int) -> str:
    """The extra for a driver whose cuDriverGetVersion() is driver_version (12040 = CUDA 12.4)."""
    return "gpu-cu12" if driver_version < 13000 else "gpu-cu13"


def gpu_extra_hint(driver_version=None) -> str:
    """The pip command for the GPU extra of this driver, or both when its version is unknown."""
    if driver_version is None:
        return ('pip install "bodyrt[gpu-cu13]" for a CUDA 13 driver (R580 or newer; nvidia-smi shows the '
                'CUDA version), "bodyrt[gpu-cu12]" for a CUDA 12 driver')
    major, minor = driver_version // 1000, driver_version % 1000 // 10
    return f'pip install "bodyrt[{gpu_extra(driver_version)}]" (the driver supports CUDA {major}.{minor})'


def installed_distributions(names) -> list:
    """The distributions among `names` that are installed, as 'name version'."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def check_one_onnxruntime_build() -> None:
    """BackendUnavailableError when both ONNX Runtime distributions are installed, saying how to fix it."""
    found = installed_distributions(ORT_DISTRIBUTIONS)
    if len(found) > 1:
        raise BackendUnavailableError(
            f"both {' and '.join(found)} are installed; they share the import name onnxruntime and only "
            f"one may be installed: pip uninstall -y onnxruntime onnxruntime-gpu, then reinstall one: "
            f"{CPU_EXTRA_HINT} for the CPU, or the GPU extra ({gpu_extra_hint()})")


def import_onnxruntime():
    """The onnxruntime module; BackendUnavailableError naming the extra when it is missing or both builds clash."""
    check_one_onnxruntime_build()
    try:
        import onnxruntime
    except ImportError as error:
        raise BackendUnavailableError(f"the onnxruntime backend needs ONNX Runtime ({error}); {CPU_EXTRA_HINT}, "
                                      f"or on a GPU machine {gpu_extra_hint()}") from None
    return onnxruntime
