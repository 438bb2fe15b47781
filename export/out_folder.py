"""Where an export may write, and how it replaces a bundle without touching anything else.

bodyrt writes only inside folders it created or that hold a bundle it wrote. A bundle it wrote is
recognised by its marker file, `.bodyrt-bundle` (JSON: who wrote it, state, the files it wrote), never
by a file name anyone can have such as manifest.json. Before replacing a folder, every entry in it
must be one bodyrt wrote (the marker, the manifest, the files either of them lists, bodyrt's own
temporary names); one foreign file and the export is refused with nothing touched.

An export is staged in a hidden sibling folder `.NAME.partial-XXXX` that carries the marker in state
"partial" with the writing process's id and host. SIGINT, SIGTERM and SIGHUP remove it (the CLI
turns SIGTERM and SIGHUP into an exception, bodyrt.cli.Terminated, so the same cleanup runs); SIGKILL
cannot be caught, so the next export into the same parent removes stale staging folders it
recognises: marker in state "partial" or "retired", written on this host by a process that no longer
runs. The renames that swap a bundle in run with these signals blocked, so none lands between them.

Every check runs before the long export starts (`check_out_dir`), so `--out` an existing file, a path
below a file, a read-only folder or a foreign folder fails in a second, not after minutes.
"""

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import bodyrt
from bodyrt.errors import ExportError, InputError
from bodyrt.files import current_umask

log = logging.getLogger("bodyrt")

MARKER_NAME = ".bodyrt-bundle"
MARKER_FORMAT = "bodyrt-bundle-marker"
MANIFEST_NAME = "manifest.json"  # as bodyrt.runtime.bundle's; repeated to keep this module free of the runtime
LEGACY_FORMAT = "bodyrt-bundle"  # manifests of bundles written before the marker existed
TEMPORARY_PREFIXES = (".quantize-", ".gpu-partial-")
TEMPORARY_SUFFIXES = (".partial",)


def marker(state: str, files=()) -> dict:
    return {"format": MARKER_FORMAT, "state": state, "bodyrt": bodyrt.__version__, "pid": os.getpid(),
            "host": socket.gethostname(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": sorted(files)}


def write_marker(folder: Path, state: str, files=()) -> None:
    """Write (or replace atomically) the folder's marker."""
    partial = folder / (MARKER_NAME + ".partial")
    partial.write_text(json.dumps(marker(state, files)))
    os.replace(partial, folder / MARKER_NAME)


def read_marker(folder: Path) -> dict | None:
    """The folder's marker, or None when it has none (or an unreadable one: then it is not ours)."""
    try:
        contents = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return contents if isinstance(contents, dict) and contents.get("format") == MARKER_FORMAT else None


def _manifest_files(folder: Path) -> tuple[bool, set]:
    """(is a bodyrt bundle manifest, names of the files it lists)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False, set()
    if not isinstance(manifest, dict) or manifest.get("format") != LEGACY_FORMAT:
        return False, set()
    files = manifest.get("files")
    return True, {str(name) for name in files} if isinstance(files, dict) else set()


def is_temporary_name(name: str) -> bool:
    return name.startswith(TEMPORARY_PREFIXES) or name.endswith(TEMPORARY_SUFFIXES)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of an existing folder that bodyrt did not write (all of them if it has no marker).

    A folder without a marker that holds a bodyrt manifest (a bundle exported before markers existed)
    counts as bodyrt's when every entry is the manifest or a file it lists."""
    entries = sorted(entry.name for entry in folder.iterdir())
    own_marker = read_marker(folder)
    is_bundle, listed = _manifest_files(folder)
    if own_marker is None and not is_bundle:
        return entries
    known = {MARKER_NAME, MANIFEST_NAME} | listed | set(own_marker.get("files", []) if own_marker else [])
    return [name for name in entries if name not in known and not is_temporary_name(name)]


def normalise_out_dir(out_dir) -> Path:
    """`--out` as an absolute path; '' refused (it would mean the working folder by accident)."""
    if out_dir is None or str(out_dir).strip() == "":
        raise InputError("--out is empty; give the bundle folder to write")
    return Path(os.path.abspath(os.fspath(out_dir)))


def check_out_dir(out_dir) -> Path:
    """Everything that can be known about `out_dir` before an export starts; returns it absolute.

    Raises ExportError naming the path when it is a file, lies below a file, holds anything bodyrt did
    not write, or cannot be written (the folder itself, or the parent the staging folder goes in)."""
    out_dir = normalise_out_dir(out_dir)
    for ancestor in [*reversed(out_dir.parents)]:
        if ancestor.exists() and not ancestor.is_dir():
            raise ExportError(f"{out_dir}: cannot be created, {ancestor} is a file, not a folder")
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: exists and is not a folder; give a new or empty folder, "
                              "or a bundle folder bodyrt wrote")
        foreign = foreign_entries(out_dir)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ExportError(f"{out_dir}: holds {shown}, which bodyrt did not write (no {MARKER_NAME} marker "
                              "lists them); refusing to replace the folder: give a new or empty folder")
    writable_parent = next((folder for folder in [out_dir.parent, *out_dir.parent.parents] if folder.exists()), None)
    if writable_parent is not None and not os.access(writable_parent, os.W_OK | os.X_OK):
        raise ExportError(f"{out_dir}: cannot write in {writable_parent} (permission denied or read-only)")
    if out_dir.is_dir() and not os.access(out_dir, os.W_OK | os.X_OK):
        raise ExportError(f"{out_dir}: the folder is not writable (permission denied or read-only)")
    return out_dir


def _process_running(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # cannot tell: leave the folder alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove `.NAME.partial-*` and `.NAME.old-*` folders next to out_dir that an export on this host
    left when it was killed: marker in state partial or retired, its process gone. Returns them."""
    removed = []
    host = socket.gethostname()
    if not out_dir.parent.is_dir():
        return removed
    for prefix in (f".{out_dir.name}.partial-", f".{out_dir.name}.old-"):
        for candidate in out_dir.parent.glob(f"{prefix}*"):
            own = read_marker(candidate) if candidate.is_dir() and not candidate.is_symlink() else None
            if (own is None or own.get("state") not in ("partial", "retired") or own.get("host") != host
                    or _process_running(own.get("pid"))):
                continue
            shutil.rmtree(candidate, ignore_errors=True)
            if not candidate.exists():
                log.warning("removed %s, left by an export that was killed (process %s)", candidate, own.get("pid"))
                removed.append(candidate)
    return removed


def make_staging(out_dir: Path) -> Path:
    """A new hidden staging folder beside out_dir, marked as this process's partial export."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"{out_dir}: cannot create the staging folder in {out_dir.parent} "
                          f"({error.strerror or error})") from None
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; a bundle is for every user the umask allows
        write_marker(staging, "partial")
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"{staging}: cannot write ({error.strerror or error})") from None
    return staging


def swap_in(staging: Path, out_dir: Path) -> None:
    """Put the complete staging folder at out_dir.

    out_dir absent: one rename. out_dir an empty folder (`--out .` in an empty folder): the files move
    into it, so the folder (and a shell sitting in it) stays. out_dir a bundle bodyrt wrote: renamed
    aside, the staging folder renamed in, the old one removed; the old bundle survives until then.
    Anything else was refused by check_out_dir; it is checked again here in case the folder changed."""
    # No signal may land between the renames (a bundle half-swapped); they are delivered right after.
    stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    try:
        _swap_in(staging, out_dir)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _swap_in(staging: Path, out_dir: Path) -> None:
    files = [entry.name for entry in staging.iterdir() if entry.name != MARKER_NAME]
    write_marker(staging, "complete", files)
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    check_out_dir(out_dir)
    if not any(out_dir.iterdir()):
        write_marker(out_dir, "partial", files)  # a crash while moving leaves a folder the next export may replace
        for name in files:
            os.rename(staging / name, out_dir / name)
        os.replace(staging / MARKER_NAME, out_dir / MARKER_NAME)
        staging.rmdir()
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    write_marker(retired, "retired")
    os.rename(out_dir, retired / "bundle")
    os.rename(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def require_own_bundle(bundle_path) -> None:
    """Refuse to add files to a folder bodyrt did not write (quantize, GPU artefacts)."""
    folder = Path(bundle_path)
    foreign = foreign_entries(folder) if folder.is_dir() else []
    if foreign:
        raise ExportError(f"{folder}: holds {', '.join(foreign[:3])}, which bodyrt did not write; refusing to "
                          "write into it")
