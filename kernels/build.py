"""Building the crop kernels: the host (g++) library for CPU tests, and the nvcc fatbin for GPUs.

    python -m bodyrt.kernels.build --nvcc OUT_DIR     # CI / wheel build: OUT_DIR/crops.fatbin
    python -m bodyrt.kernels.build --host [OUT_DIR]   # the g++ host library (cached by default)

The NVRTC path (compile at first use on the user's machine) is in bodyrt.kernels.nvrtc.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bodyrt.errors import BackendUnavailableError, BodyrtError, ExportError

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = KERNEL_DIR / "crops.cu"
HOST_SOURCES = (KERNEL_DIR / "crops_host.cpp", KERNEL_DIR / "host_shim.h", KERNEL_SOURCE)
HOST_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17")

FATBIN_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
FATBIN_PTX = "compute_90"
FATBIN_NAME = "crops.fatbin"
KERNEL_NAMES = ("part_crops_f32", "part_crops_f16", "body_crops_f32", "body_crops_f16")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/bodyrt, else ~/.cache/bodyrt (outside the repository and the package)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bodyrt"


def _host_build_key(compiler: str) -> str:
    digest = hashlib.sha256()
    for path in HOST_SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join((compiler, *HOST_FLAGS)).encode())
    return digest.hexdigest()[:16]


def _run(command, what: str, error_type=ExportError) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise error_type(f"{what} failed (exit {result.returncode}): {' '.join(map(str, command))}\n"
                         f"{result.stderr.strip()}")
    return result


def build_host_library(out_dir=None) -> Path:
    """Compile crops_host.cpp (which includes crops.cu) with g++ into a shared library.

    The file is named by a hash of the sources and flags, reused when present, and written
    atomically (compiled to a temporary name, then renamed), so concurrent builds are safe.
    out_dir defaults to cache_dir(). Raises BackendUnavailableError when g++ is missing and
    ExportError when it fails.
    """
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise BackendUnavailableError(f"the host crop library needs a C++ compiler: {compiler!r} is not on PATH "
                                      "(install g++ or set CXX)")
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / f"crops_host_{_host_build_key(compiler)}.so"
    if library.exists():
        return library
    descriptor, temporary = tempfile.mkstemp(prefix=library.stem + ".", suffix=".tmp", dir=out_dir)
    os.close(descriptor)
    try:
        _run([compiler, *HOST_FLAGS, "-o", temporary, str(KERNEL_DIR / "crops_host.cpp")], "g++ host build")
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


def nvcc_command(output: Path, archs=FATBIN_ARCHS, ptx=FATBIN_PTX) -> list:
    """The nvcc command line for a fatbin with one cubin per arch in `archs` plus `ptx` as PTX."""
    command = ["nvcc", "-fatbin", "-O3", "-std=c++17", "--resource-usage"]
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch.removeprefix('sm_')},code={arch}"]
    if ptx:
        command += ["-gencode", f"arch={ptx},code={ptx}"]
    return command + ["-o", str(output), str(KERNEL_SOURCE)]


def compile_with_nvcc(out_dir, archs=FATBIN_ARCHS, ptx=FATBIN_PTX) -> Path:
    """Compile crops.cu to OUT_DIR/crops.fatbin: cubins for `archs` and PTX for `ptx` (JIT for newer GPUs).

    Needs no GPU and no driver. Raises BackendUnavailableError when nvcc is missing, ExportError when
    it fails or when an entry point is missing from the result. The ptxas report (registers per
    kernel and arch) is written beside the fatbin as crops.fatbin.log.
    """
    if shutil.which("nvcc") is None:
        raise BackendUnavailableError("nvcc is not on PATH: install the CUDA toolkit to build crops.fatbin")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / FATBIN_NAME
    descriptor, temporary = tempfile.mkstemp(prefix=FATBIN_NAME + ".", suffix=".tmp", dir=out_dir)
    os.close(descriptor)
    try:
        result = _run(nvcc_command(Path(temporary), archs, ptx), "nvcc")
        fatbin = Path(temporary).read_bytes()
        missing = [name for name in KERNEL_NAMES if name.encode() not in fatbin]
        if missing:
            raise ExportError(f"{output}: nvcc output lacks the entry points {missing}")
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    (out_dir / (FATBIN_NAME + ".log")).write_text(result.stdout + result.stderr)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bodyrt.kernels.build", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--nvcc", metavar="OUT_DIR", help="build OUT_DIR/crops.fatbin with nvcc")
    group.add_argument("--host", metavar="OUT_DIR", nargs="?", const="", help="build the g++ host library")
    parser.add_argument("--arch", action="append", help=f"cubin arch (repeatable; default {' '.join(FATBIN_ARCHS)})")
    parser.add_argument("--ptx", default=FATBIN_PTX, help=f"PTX arch embedded for newer GPUs (default {FATBIN_PTX})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        if args.nvcc is not None:
            path = compile_with_nvcc(args.nvcc, tuple(args.arch or FATBIN_ARCHS), args.ptx)
        else:
            path = build_host_library(args.host or None)
    except BodyrtError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size} bytes, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
