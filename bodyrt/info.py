"""`bodyrt info`: what this installation is and where it keeps things.

Prints the bodyrt version, Python and library versions, the CPU (model, cores this process may use,
the features that decide which kernels run, and OpenVINO's own view of it), the backends usable here
(and why the others are not), and the OpenVINO compile cache: its location, size, entry count and limit.
"""

import json
import platform
import sys
from importlib import metadata

from bodyrt import __version__

LIBRARIES = ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "tensorrt")


def library_versions() -> dict:
    """Distribution name -> installed version, for the libraries bodyrt drives (missing ones left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def openvino_cpu() -> dict:
    """OpenVINO's name and optimisation capabilities of this CPU, or {"unavailable": why}."""
    try:
        from bodyrt.runtime.openvino_backend import cpu_capabilities, import_openvino

        core = import_openvino().Core()
        return {"name": str(core.get_property("CPU", "FULL_DEVICE_NAME")), "capabilities": cpu_capabilities(core)}
    except Exception as error:  # a broken OpenVINO install is reported here, not raised
        return {"unavailable": str(error)}


def system_info() -> dict:
    from bodyrt.roofline import cpu_description
    from bodyrt.runtime.backends import BACKENDS
    from bodyrt.runtime.compile_cache import cache_usage

    unavailable = {name: reason for name, entry in BACKENDS.items() if (reason := entry.unavailable()) is not None}
    return {"version": __version__, "python": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "libraries": library_versions(),
            "cpu": {**cpu_description(), "openvino": openvino_cpu()},
            "backends": {"available": [name for name in BACKENDS if name not in unavailable],
                         "unavailable": unavailable},
            "openvino_cache": cache_usage(), "native_cache": native_cache_usage()}


def native_cache_usage() -> dict:
    """{"path", "exists", "bytes"} of the native C library's own OpenVINO cache (openvino-native, beside
    bodyrt's; it keeps its own rules and is not bounded by bodyrt's limit)."""
    from bodyrt.runtime.compile_cache import default_cache_dir

    directory = default_cache_dir().with_name("openvino-native")
    total = 0
    if directory.is_dir():
        for path in directory.rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                continue
    return {"path": str(directory), "exists": directory.is_dir(), "bytes": total}


def format_info(info: dict) -> str:
    from bodyrt.roofline import describe_cpu
    from bodyrt.runtime.compile_cache import LIMIT_VARIABLE, format_bytes

    cache = info["openvino_cache"]
    entries = cache["entries"]
    lines = [f"bodyrt {info['version']} (Python {info['python']}, {info['platform']})",
             "libraries: " + ", ".join(f"{name} {version}" for name, version in info["libraries"].items()),
             f"CPU: {describe_cpu(info['cpu'])}"]
    seen_by_openvino = info["cpu"]["openvino"]
    if "capabilities" in seen_by_openvino:
        lines.append(f"  OpenVINO sees: {seen_by_openvino['name']}; {' '.join(seen_by_openvino['capabilities'])}")
    lines.append(f"backends: {', '.join(info['backends']['available']) or 'none'}")
    for name, reason in info["backends"]["unavailable"].items():
        lines.append(f"  {name}: unavailable: {reason}")
    state = (f"{format_bytes(cache['bytes'])} in {entries} compiled model{'s' if entries != 1 else ''}"
             if cache["exists"] else "empty (not created yet)")
    lines.append(f"OpenVINO compile cache: {cache['path']}")
    lines.append(f"  {state}; limit {format_bytes(cache['limit_bytes'])} ({LIMIT_VARIABLE}), "
                 "least recently used entries removed first")
    native = info["native_cache"]
    if native["exists"]:
        lines.append(f"native libbodyrt's OpenVINO cache: {native['path']}, "
                     f"{format_bytes(native['bytes'])} (not bounded)")
    return "\n".join(lines)


def print_info(as_json: bool = False) -> None:
    info = system_info()
    print(json.dumps(info, indent=2) if as_json else format_info(info))
