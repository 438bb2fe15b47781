"""Writing files and folders the way users expect: permissions from the umask, replaced whole or not at all.

`tempfile.mkdtemp` and `mkstemp` create 0700 folders and 0600 files whatever the umask (they are
meant to be private); bodyrt's outputs (bundles, run results) are meant to be shared, so everything
it creates under a temporary name gets the permissions an ordinary `mkdir` or `open` would give
(0755 and 0644 under umask 022) before it is renamed into place.
"""

import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path, umask: int | None = None) -> None:
    """Give path (a file, or a folder and everything below it) the umask's ordinary permissions:
    0777 & ~umask for folders, 0666 & ~umask for files. Symbolic links are left alone."""
    mask = current_umask() if umask is None else umask
    path = Path(path)
    folder_mode, file_mode = 0o777 & ~mask, 0o666 & ~mask
    if path.is_symlink():
        return
    if not path.is_dir():
        os.chmod(path, file_mode)
        return
    os.chmod(path, folder_mode)
    for root, folders, files in os.walk(path):
        for name in folders:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), folder_mode)
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), file_mode)


def shared_temporary_folder(parent, prefix: str) -> Path:
    """A new hidden folder in parent with the umask's permissions (mkdtemp makes 0700 ones)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    apply_umask(folder)
    return folder


def write_new_file(folder, names, data: bytes) -> Path:
    """Write data to the first of `names` that does not exist in folder, never replacing a file.

    The bytes go to a temporary file first, which is then hard-linked to the final name (which fails
    rather than replacing a file another process wrote meanwhile) and removed. Returns the path."""
    folder = Path(folder)
    descriptor, temporary = tempfile.mkstemp(prefix=".partial-", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        apply_umask(temporary)
        for name in names:
            try:
                os.link(temporary, folder / name)
                return folder / name
            except FileExistsError:
                continue
        raise FileExistsError(f"{folder}: every candidate name is taken ({names[0]} ...)")
    finally:
        os.unlink(temporary)


def remove_quietly(path) -> None:
    shutil.rmtree(path, ignore_errors=True)
