"""Compiling crops.cu at first use with NVRTC (cuda-python), for machines without the prebuilt fatbin.

    cubin = compile_with_nvrtc("sm_86")                 # bytes for cuModuleLoadData
    ptx = compile_with_nvrtc("compute_90", output="ptx")

cuda-python is imported here, lazily; a missing package or NVRTC library raises
BackendUnavailableError saying what to install. Nothing here needs a GPU or a driver.
"""

from bodyrt.errors import BackendUnavailableError, ExportError
from bodyrt.kernels.build import KERNEL_SOURCE

# NVRTC's major version must not exceed the driver's CUDA major version (see kernels/README.md).
NVRTC_INSTALL_HINT = ('pip install "bodyrt[gpu-cu13]" for CUDA 13 drivers (>= 580), or "bodyrt[gpu-cu12]" for '
                      "CUDA 12 drivers (>= 525): each brings cuda-python and the NVRTC of its CUDA major")


def _import_nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as error:
        raise BackendUnavailableError(f"compiling the crop kernel at run time needs cuda-python ({error}); "
                                      f"{NVRTC_INSTALL_HINT}") from None
    return nvrtc


def _check(nvrtc, result, what: str, program=None):
    """cuda-python calls return (nvrtcResult, values...): values on success, else ExportError with the log."""
    status, *values = result
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = _program_log(nvrtc, program) if program is not None else ""
        raise ExportError(f"NVRTC {what} on {KERNEL_SOURCE.name} failed: {status.name}\n{log}".rstrip())
    return values[0] if len(values) == 1 else values


def _program_log(nvrtc, program) -> str:
    status, size = nvrtc.nvrtcGetProgramLogSize(program)
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    return log.rstrip(b"\0 ").decode(errors="replace")


def nvrtc_version() -> tuple:
    """(major, minor) of the NVRTC library cuda-python finds; BackendUnavailableError if there is none."""
    nvrtc = _import_nvrtc()
    try:
        result = nvrtc.nvrtcVersion()
    except RuntimeError as error:  # cuda-python loads libnvrtc at the first call
        raise BackendUnavailableError(f"cuda-python found no NVRTC library ({error}); {NVRTC_INSTALL_HINT}") from None
    return tuple(_check(nvrtc, result, "version query"))


def compile_with_nvrtc(arch: str, output: str = "cubin", extra_options=()) -> bytes:
    """crops.cu -> a cubin for `arch` ("sm_86") or PTX for it ("compute_90" with output="ptx").

    The entry points keep their extern "C" names (part_crops_f32, part_crops_f16, body_crops_f32,
    body_crops_f16) for cuModuleGetFunction. NVRTC's version bounds the drivers that accept the
    result: PTX from a newer NVRTC is rejected by an older driver.
    """
    if output not in ("cubin", "ptx"):
        raise ExportError(f"output must be 'cubin' or 'ptx', got {output!r}")
    if output == "cubin" and not arch.startswith("sm_"):
        raise ExportError(f"a cubin needs a real architecture such as sm_86, got {arch!r}")
    nvrtc_version()  # raises BackendUnavailableError when NVRTC is missing
    nvrtc = _import_nvrtc()
    program = _check(nvrtc, nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.read_bytes(), KERNEL_SOURCE.name.encode(),
                                                     0, [], []), "program creation")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17",
                   *(option.encode() if isinstance(option, str) else option for option in extra_options)]
        _check(nvrtc, nvrtc.nvrtcCompileProgram(program, len(options), options), "compilation", program)
        if output == "cubin":
            size = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(program), "cubin size query")
            data = b" " * size
            _check(nvrtc, nvrtc.nvrtcGetCUBIN(program, data), "cubin copy")
        else:
            size = _check(nvrtc, nvrtc.nvrtcGetPTXSize(program), "PTX size query")
            data = b" " * size
            _check(nvrtc, nvrtc.nvrtcGetPTX(program, data), "PTX copy")
        return data
    finally:
        nvrtc.nvrtcDestroyProgram(program)
