"""Build the embedded-Python libbodyrt.so (`bodyrt build-capi --embedded`) with cffi's embedding mode,
and copy bodyrt.h and the C example beside it. The native library: native_build.py.

cffi writes one C file: its embedding code, then bodyrt_capi.c (the exported functions), then the
glue of the `extern "Python"` functions of embedded.py. gcc links it against this Python's
libpython, with an rpath to it. The library records this interpreter's executable (which locates
the prefix, a venv and its site-packages) and the init code this interpreter's sys.path, so a host
needs no PYTHONHOME or PYTHONPATH (and any it has are ignored: the interpreter is isolated).
"""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from bodyrt import __version__
from bodyrt.errors import BodyrtError

SOURCE_DIR = Path(__file__).resolve().parent
HEADER = SOURCE_DIR / "bodyrt.h"
C_LAYER = SOURCE_DIR / "bodyrt_capi.c"
EXAMPLE = SOURCE_DIR / "minimal.c"  # the README's C snippet
MODULE_NAME = "_bodyrt_capi"
LIBRARY_NAME = "libbodyrt.so"

INIT_CODE = """\
import sys
for entry in {path!r}:
    if entry not in sys.path:
        sys.path.append(entry)
from {module} import ffi, lib
try:
    from bodyrt.runtime.capi import embedded
    embedded.install(ffi, lib, built_version={version!r})
except BaseException as error:
    lib.bodyrt_record_start_error(
        f"the embedded Python ({{sys.executable}}) could not load bodyrt: {{type(error).__name__}}: {{error}}"
        .encode("utf-8", "replace")[:1000])
    raise
"""


class CapiBuildError(BodyrtError):
    """libbodyrt could not be built: no C compiler, no shared libpython, no cffi, or a compile error."""


def compiler() -> str:
    return os.environ.get("CC", "gcc")


def cdef_text() -> str:
    """The header's enums, and the extern "Python" declarations between the markers of bodyrt_capi.c."""
    enums = re.findall(r"typedef enum \w+ \{[^}]*\} \w+;", HEADER.read_text())
    c_layer = C_LAYER.read_text()
    block = c_layer.split("/* BEGIN python functions */")[1].split("/* END python functions */")[0]
    python_functions = block.replace("static ", "")
    return "\n".join(enums) + "\nvoid bodyrt_record_start_error(const char *message);\n" + \
        'extern "Python" {\n' + python_functions + "}\n"


def python_library() -> tuple[str, str]:
    """(directory, name) of this Python's shared libpython, e.g. ("/usr/lib", "python3.11")."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise CapiBuildError(f"{sys.executable} has no shared libpython, which libbodyrt links against; "
                             "use a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)")
    name = f"python{sysconfig.get_python_version()}{getattr(sys, 'abiflags', '')}"
    return sysconfig.get_config_var("LIBDIR"), name


def write_c_source(path: Path) -> Path:
    """The C file of the library: cffi's embedding code, the build constants and bodyrt_capi.c."""
    try:
        import cffi
    except ImportError:
        raise CapiBuildError("building libbodyrt needs cffi: pip install \".[capi]\" from a bodyrt checkout") from None
    recorded_path = [entry for entry in sys.path if os.path.isabs(entry) and os.path.isdir(entry)]
    constants = (f"#define BODYRT_BUILD_VERSION {json.dumps(__version__)}\n"
                 f"#define BODYRT_BUILD_PYTHON {json.dumps(sys.executable, ensure_ascii=False)}\n")
    ffi = cffi.FFI()
    ffi.embedding_api("")
    ffi.cdef(cdef_text())
    ffi.set_source(MODULE_NAME, constants + C_LAYER.read_text())
    ffi.embedding_init_code(INIT_CODE.format(path=recorded_path, module=MODULE_NAME, version=__version__))
    with contextlib.redirect_stdout(io.StringIO()):  # cffi prints 'generating PATH'
        ffi.emit_c_code(str(path))
    return path


def run_compiler(command: list[str]):
    try:
        completed = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise CapiBuildError(f"C compiler {command[0]!r} not found; install gcc or set CC") from None
    if completed.returncode != 0:
        raise CapiBuildError(f"{' '.join(command)} failed:\n{completed.stderr.strip()}")


def build_library(out_dir) -> dict:
    """Write libbodyrt.so, bodyrt.h, minimal.c and its program `minimal` into out_dir; return their paths."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    python_libdir, python_name = python_library()
    library = out_dir / LIBRARY_NAME
    with tempfile.TemporaryDirectory(prefix=".bodyrt-capi-", dir=out_dir) as work:  # same filesystem
        c_source = write_c_source(Path(work) / f"{MODULE_NAME}.c")
        partial = Path(work) / LIBRARY_NAME
        run_compiler([compiler(), "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-pthread",
                      f"-I{sysconfig.get_path('include')}", f"-I{SOURCE_DIR}", str(c_source), "-o", str(partial),
                      f"-L{python_libdir}", f"-l{python_name}", f"-Wl,-rpath,{python_libdir}",
                      f"-Wl,-soname,{LIBRARY_NAME}"])
        os.replace(partial, library)  # a library in use by a running program keeps its old inode
    header = Path(shutil.copyfile(HEADER, out_dir / HEADER.name))
    example_source = Path(shutil.copyfile(EXAMPLE, out_dir / EXAMPLE.name))
    example = out_dir / "minimal"
    run_compiler(compile_command(example_source, example, out_dir))
    return {"library": library, "header": header, "example_source": example_source, "example": example}


def compile_command(source, program, library_dir, extra_flags=()) -> list[str]:
    """The gcc command that builds a C program against libbodyrt (and bodyrt.h) in library_dir."""
    return [compiler(), "-O2", "-Wall", *extra_flags, "-pthread", str(source), "-o", str(program),
            f"-I{library_dir}", f"-L{library_dir}", "-lbodyrt", f"-Wl,-rpath,{library_dir}"]
