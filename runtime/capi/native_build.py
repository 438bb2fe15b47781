"""Build the native libbodyrt.so (C++17, OpenVINO's C++ runtime, no Python) with CMake and Ninja.

The tools and headers come from pip (`pip install "bodyrt[native]"`): cmake and ninja, the
nlohmann-json headers, and the openvino wheel's CMake package, headers and libraries. Beside the
library the output directory gets bodyrt.h, the C example, a pkg-config file (bodyrt.pc) and a
CMake package (bodyrtConfig.cmake, target bodyrt::bodyrt), all pointing at that directory.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bodyrt import __version__
from bodyrt.runtime.capi.build import EXAMPLE, HEADER, LIBRARY_NAME, CapiBuildError, compile_command, run_compiler

NATIVE_DIR = Path(__file__).resolve().parent / "native"
NATIVE_EXTRA = 'pip install "bodyrt[native]" (from a checkout: pip install ".[native]")'

PKG_CONFIG = """\
libdir={libdir}
includedir={libdir}

Name: bodyrt
Description: bodyrt's native runtime for whole-body mesh recovery (C API, OpenVINO)
Version: {version}
Cflags: -I${{includedir}}
Libs: -L${{libdir}} -lbodyrt -Wl,-rpath,${{libdir}}
"""

CMAKE_CONFIG = """\
# bodyrtConfig.cmake: find_package(bodyrt) with bodyrt_DIR={libdir}; then link bodyrt::bodyrt.
if(NOT TARGET bodyrt::bodyrt)
  add_library(bodyrt::bodyrt SHARED IMPORTED)
  set_target_properties(bodyrt::bodyrt PROPERTIES
    IMPORTED_LOCATION "{libdir}/libbodyrt.so"
    INTERFACE_INCLUDE_DIRECTORIES "{libdir}")
endif()
set(bodyrt_VERSION "{version}")
"""


def kernels_dir() -> Path:
    import bodyrt.kernels

    return Path(bodyrt.kernels.__file__).resolve().parent


def build_tools() -> dict:
    """Paths of cmake and ninja, the nlohmann-json include directory and OpenVINO's CMake directory."""
    tools = {}
    try:
        import cmake

        tools["cmake"] = str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError:
        tools["cmake"] = shutil.which("cmake")
    try:
        import ninja

        tools["ninja"] = str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        tools["ninja"] = shutil.which("ninja")
    try:
        import nlohmann_json

        tools["json_include"] = nlohmann_json.get_include()
    except ImportError:
        tools["json_include"] = ""  # then CMake looks for the nlohmann_json package (Debian's, ...)
    try:
        import openvino

        tools["openvino_cmake"] = str(Path(openvino.__file__).resolve().parent / "cmake")
    except ImportError:
        tools["openvino_cmake"] = None
    missing = [name for name in ("cmake", "ninja", "openvino_cmake") if not tools[name]]
    if missing:
        raise CapiBuildError(f"building the native libbodyrt needs {', '.join(missing)}: {NATIVE_EXTRA}")
    return tools


def run_tool(command: list[str], what: str):
    try:
        completed = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    except OSError as error:
        raise CapiBuildError(f"{what}: {command[0]} could not start ({error}); {NATIVE_EXTRA}") from None
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip().splitlines()
        raise CapiBuildError(f"{what} failed:\n" + "\n".join(output[-40:]))


def build_native_library(out_dir, sanitize: bool = False) -> dict:
    """Write libbodyrt.so (native), bodyrt.h, bodyrt.pc, bodyrtConfig.cmake, minimal.c and `minimal`
    into out_dir; return their paths. sanitize: AddressSanitizer and UndefinedBehaviorSanitizer."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    tools = build_tools()
    library = out_dir / LIBRARY_NAME
    with tempfile.TemporaryDirectory(prefix=".bodyrt-native-", dir=out_dir) as work:  # same filesystem
        build_dir = Path(work) / "build"
        configure = [tools["cmake"], "-S", NATIVE_DIR, "-B", build_dir, "-G", "Ninja",
                     f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}", "-DCMAKE_BUILD_TYPE=Release",
                     f"-DOpenVINO_DIR={tools['openvino_cmake']}", f"-DBODYRT_VERSION={__version__}",
                     f"-DBODYRT_KERNELS_DIR={kernels_dir()}", f"-DBODYRT_JSON_INCLUDE_DIR={tools['json_include']}",
                     f"-DBODYRT_SANITIZE={'ON' if sanitize else 'OFF'}"]
        run_tool(configure, "configuring the native libbodyrt (cmake)")
        run_tool([tools["cmake"], "--build", build_dir], "building the native libbodyrt")
        os.replace(build_dir / LIBRARY_NAME, library)  # a library in use by a running program keeps its old inode
    header = Path(shutil.copyfile(HEADER, out_dir / HEADER.name))
    pkg_config = out_dir / "bodyrt.pc"
    pkg_config.write_text(PKG_CONFIG.format(libdir=out_dir, version=__version__))
    cmake_config = out_dir / "bodyrtConfig.cmake"
    cmake_config.write_text(CMAKE_CONFIG.format(libdir=out_dir, version=__version__))
    example_source = Path(shutil.copyfile(EXAMPLE, out_dir / EXAMPLE.name))
    example = out_dir / "minimal"
    flags = ["-fsanitize=address,undefined"] if sanitize else []
    run_compiler(compile_command(example_source, example, out_dir, extra_flags=flags))
    return {"library": library, "header": header, "pkg_config": pkg_config, "cmake_config": cmake_config,
            "example_source": example_source, "example": example}
