"""The OpenVINO compile cache on disk: where it is, how large it may grow, and pruning it.

Location: $BODYRT_CACHE_DIR/openvino, else $XDG_CACHE_HOME/bodyrt/openvino, else
~/.cache/bodyrt/openvino.

An entry is one compiled stage graph: `<stage>-<key>.blob` and its `<stage>-<key>.blob.sha256`. Its
age is its file's modification time, which a cache hit refreshes, so "oldest" means least recently
used. The cache is bounded: after an entry is stored, the oldest entries are removed until the whole
cache (blobs, their hashes, the lock file) fits the limit; the entry just stored is never removed,
and an entry larger than the limit is not stored at all.

Limit: DEFAULT_LIMIT_BYTES (4 GiB: the fp32, bf16 and int8 models of one bundle with room to spare),
or $BODYRT_OPENVINO_CACHE_LIMIT ("8G", "500M", "2.5GB", "1048576" bytes; "0" stores nothing).

Two processes may share a cache: readers hold a shared lock (flock on `<cache>/.lock`) while they
map and verify a blob; storing (hash, then blob) and pruning happen under the exclusive lock. A
blob removed after a reader mapped it stays readable to that reader (POSIX keeps unlinked files
alive while mapped). Without flock (not POSIX) or on a read-only cache, the lock is skipped: the
sha256 check beside every blob still keeps a half-seen entry from being used.
"""

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bodyrt.errors import InputError

DEFAULT_LIMIT_BYTES = 4 << 30
LIMIT_VARIABLE = "BODYRT_OPENVINO_CACHE_LIMIT"
LOCK_NAME = ".lock"
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def default_cache_dir() -> Path:
    root = os.environ.get("BODYRT_CACHE_DIR")
    if root:
        return Path(root) / "openvino"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "bodyrt" / "openvino"


def parse_size(text: str, what: str) -> int:
    """'4G', '500M', '2.5GB', '1048576' (bytes; units are powers of 1024) -> bytes; InputError naming `what`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise InputError(f"{what} must be a size such as 4G, 500M or a number of bytes, got {text!r}")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()])


def cache_limit() -> int:
    """The cache's size bound in bytes: $BODYRT_OPENVINO_CACHE_LIMIT, else DEFAULT_LIMIT_BYTES."""
    text = os.environ.get(LIMIT_VARIABLE)
    return DEFAULT_LIMIT_BYTES if text is None or not text.strip() else parse_size(text, LIMIT_VARIABLE)


@contextlib.contextmanager
def cache_lock(directory: Path, exclusive: bool):
    """flock on `<directory>/.lock`: shared for reading a blob, exclusive for storing and pruning.
    Yields without a lock when the platform has no flock or the directory cannot hold the lock file."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        descriptor = os.open(Path(directory) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@dataclass(frozen=True)
class Entry:
    """One cached compiled model: its blob, the bytes it takes with its hash file, its last use (epoch s)."""

    blob: Path
    size: int
    last_used: float


def hash_file(blob: Path) -> Path:
    """Where the sha256 of a cached blob is stored: beside it, `<name>.sha256`."""
    return blob.with_name(blob.name + ".sha256")


def cache_entries(directory: Path) -> list[Entry]:
    """The cache's entries, oldest first (by last use)."""
    entries = []
    for blob in Path(directory).glob("*.blob"):
        try:
            status = blob.stat()
        except OSError:  # removed meanwhile
            continue
        try:
            size = status.st_size + hash_file(blob).stat().st_size
        except OSError:
            size = status.st_size
        entries.append(Entry(blob, size, status.st_mtime))
    return sorted(entries, key=lambda entry: (entry.last_used, entry.blob.name))


def cache_usage(directory: Path | None = None) -> dict:
    """{"path", "exists", "bytes", "entries", "limit_bytes"} of the cache (bytes: every file in it)."""
    directory = Path(directory) if directory else default_cache_dir()
    total = 0
    if directory.is_dir():
        for path in directory.iterdir():
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
    return {"path": str(directory), "exists": directory.is_dir(), "bytes": total,
            "entries": len(cache_entries(directory)) if directory.is_dir() else 0, "limit_bytes": cache_limit()}


def remove_entry(blob: Path) -> None:
    for path in (blob, hash_file(blob)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def prune(directory: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Remove the oldest entries until the cache's files take at most `limit` bytes; never `keep`.
    Call under the exclusive cache_lock. Returns the removed blobs."""
    entries = cache_entries(directory)
    other = 0  # files that are no entry (the lock file); partial writes of other processes are not counted
    with contextlib.suppress(OSError):
        known = {entry.blob.name for entry in entries} | {hash_file(entry.blob).name for entry in entries}
        other = sum(path.stat().st_size for path in Path(directory).iterdir()
                    if path.is_file() and path.name not in known and not path.name.endswith(".partial"))
    total = other + sum(entry.size for entry in entries)
    removed = []
    for entry in entries:
        if total <= limit:
            break
        if keep is not None and entry.blob == keep:
            continue
        remove_entry(entry.blob)
        total -= entry.size
        removed.append(entry.blob)
    return removed


def touch(blob: Path) -> None:
    """Mark an entry as just used (its age decides pruning); a read-only cache stays as it is."""
    with contextlib.suppress(OSError):
        os.utime(blob)


def format_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
