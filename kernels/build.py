"""Building the crop kernels: the host (g++) library for CPU tests, and the nvcc fatbin for GPUs.

    python -m bodyrt.kernels.build --nvcc OUT_DIR     # CI / wheel build: OUT_DIR/crops.fatbin (+ .json stamp)
    python -m bodyrt.kernels.build --host [OUT_DIR]   # the g++ host library (cached by default)

The NVRTC path (compile at first use on the user's machine) is in bodyrt.kernels.nvrtc; which one a
GPU uses is decided in bodyrt.kernels.module.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bodyrt.errors import BackendUnavailableError, BodyrtError, ExportError
from bodyrt.kernels.launch import KERNEL_NAMES

KERNEL_DIR = Path(__file__).resolve().parent
KERNEL_SOURCE = KERNEL_DIR / "crops.cu"
HOST_SOURCES = (KERNEL_DIR / "crops_host.cpp", KERNEL_DIR / "host_shim.h", KERNEL_SOURCE)
HOST_FLAGS = ("-O2", "-shared", "-fPIC", "-std=c++17")

FATBIN_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90")
FATBIN_PTX = "compute_90"
FATBIN_NAME = "crops.fatbin"
STAMP_SUFFIX = ".json"  # crops.fatbin.json: the source hash and nvcc version the fatbin was built from

_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KINDS = {1: "ptx", 2: "cubin"}


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/bodyrt, else ~/.cache/bodyrt (outside the repository and the package)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bodyrt"


def source_sha256() -> str:
    """SHA-256 of crops.cu: names cached NVRTC builds and stamps the shipped fatbin."""
    return hashlib.sha256(KERNEL_SOURCE.read_bytes()).hexdigest()


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


def write_atomically(path: Path, produce) -> None:
    """produce(temporary_path) writes the file; it is then renamed to path, so readers never see half a file."""
    descriptor, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        produce(Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def build_host_library(out_dir=None) -> Path:
    """Compile crops_host.cpp (which includes crops.cu) with g++ into a shared library.

    The file is named by a hash of the sources and flags, reused when present, and written
    atomically, so concurrent builds are safe. out_dir defaults to cache_dir(). Raises
    BackendUnavailableError when g++ or a source file is missing and ExportError when g++ fails.
    """
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise BackendUnavailableError(f"the host crop library needs a C++ compiler: {compiler!r} is not on PATH "
                                      "(install g++ or set CXX)")
    missing = [str(path) for path in HOST_SOURCES if not path.is_file()]
    if missing:
        raise BackendUnavailableError(f"the host crop library's sources are not installed: {missing} "
                                      "(the package data must include kernels/*.cpp, *.h and *.cu)")
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / f"crops_host_{_host_build_key(compiler)}.so"
    if not library.exists():
        write_atomically(library, lambda temporary: _run(
            [compiler, *HOST_FLAGS, "-o", str(temporary), str(KERNEL_DIR / "crops_host.cpp")], "g++ host build"))
    return library


def nvcc_command(output: Path, archs=FATBIN_ARCHS, ptx=FATBIN_PTX) -> list:
    """The nvcc command line for one fatbin with a cubin per arch in `archs` plus `ptx` as PTX."""
    command = ["nvcc", "-fatbin", "-O3", "-std=c++17", "--resource-usage"]
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch.removeprefix('sm_')},code={arch}"]
    if ptx:
        command += ["-gencode", f"arch={ptx},code={ptx}"]
    return command + ["-o", str(output), str(KERNEL_SOURCE)]


def fatbin_contents(data: bytes) -> list:
    """The images a fatbin holds, in order: ("cubin", "sm_86") or ("ptx", "compute_90") per entry.

    Layout: a 16-byte header (magic 0xBA55ED50, version u16, header size u16, payload size u64), then
    entries, each a header (kind u16: 1 PTX, 2 cubin; u16; header size u32; payload size u64; ...;
    the arch number u32 at byte 28) followed by its payload. Raises ExportError if it is not a fatbin.
    """
    if len(data) < 16 or struct.unpack_from("<I", data)[0] != _FATBIN_MAGIC:
        raise ExportError("not a CUDA fatbin (bad magic)")
    _, _, header_size, payload_size = struct.unpack_from("<IHHQ", data)
    contents, offset, end = [], header_size, min(header_size + payload_size, len(data))
    while offset + 32 <= end:
        kind, _, entry_header_size, entry_size = struct.unpack_from("<HHIQ", data, offset)
        arch = struct.unpack_from("<I", data, offset + 28)[0]
        if kind not in _FATBIN_KINDS or entry_header_size < 32:
            raise ExportError(f"fatbin entry at byte {offset} has unknown kind {kind}")
        contents.append((_FATBIN_KINDS[kind], f"{'sm' if kind == 2 else 'compute'}_{arch}"))
        offset += entry_header_size + entry_size
    return contents


def nvcc_version() -> str:
    """'13.0' for nvcc 13.0; BackendUnavailableError when nvcc is not on PATH."""
    if shutil.which("nvcc") is None:
        raise BackendUnavailableError("nvcc is not on PATH: install the CUDA toolkit to build crops.fatbin")
    match = re.search(r"release (\d+\.\d+)", _run(["nvcc", "--version"], "nvcc --version").stdout)
    if match is None:
        raise ExportError("could not read the release number from `nvcc --version`")
    return match.group(1)


def compile_with_nvcc(out_dir, archs=FATBIN_ARCHS, ptx=FATBIN_PTX) -> Path:
    """Compile crops.cu to OUT_DIR/crops.fatbin: cubins for `archs` and PTX for `ptx` (JIT for newer GPUs).

    One nvcc run; needs no GPU and no driver. Checks that the fatbin holds every requested image and
    every entry point, then writes the stamp OUT_DIR/crops.fatbin.json (crops.cu's SHA-256, nvcc
    version, images) that bodyrt.kernels.module reads, and the ptxas report (registers per kernel and
    arch) as crops.fatbin.log. Raises BackendUnavailableError when nvcc is missing, ExportError when
    it fails or its output lacks something.
    """
    version = nvcc_version()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / FATBIN_NAME
    expected = [("cubin", arch) for arch in archs] + ([("ptx", ptx)] if ptx else [])
    log = []

    def build(temporary: Path):
        result = _run(nvcc_command(temporary, archs, ptx), "nvcc")
        log.append(result.stdout + result.stderr)
        fatbin = temporary.read_bytes()
        contents = fatbin_contents(fatbin)
        missing = [image for image in expected if image not in contents]
        missing += [name for name in KERNEL_NAMES if name.encode() not in fatbin]
        if missing:
            raise ExportError(f"{output}: nvcc output lacks {missing} (it holds {contents})")

    write_atomically(output, build)
    stamp = {"source_sha256": source_sha256(), "nvcc": version, "cubins": list(archs), "ptx": ptx or None}
    (out_dir / (FATBIN_NAME + STAMP_SUFFIX)).write_text(json.dumps(stamp, indent=1) + "\n")
    (out_dir / (FATBIN_NAME + ".log")).write_text(log[0])
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
