"""Reading and verifying an exported bundle: a directory with manifest.json and one ONNX file per stage.

The manifest is the single source of everything the runtime needs (stage graphs and their tensors,
the host steps between them, crop sizes, normalisation, faces); this module checks its format
version and every file's sha256 before anything runs.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bodyrt.errors import BundleError
from bodyrt.runtime.manifest import FORMAT_NAME, FORMAT_VERSION, Manifest, parse_manifest

MANIFEST_NAME = "manifest.json"
__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Bundle", "read_bundle", "sha256_of"]


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A verified bundle: its directory and typed manifest (bodyrt.runtime.manifest)."""

    path: Path
    manifest: Manifest

    def stage(self, name: str):
        try:
            return self.manifest.stage(name)
        except BundleError as error:
            raise BundleError(f"{self.path / MANIFEST_NAME}: {error}") from None

    def file(self, name: str) -> Path:
        return self.path / name


def read_bundle(path, verify_hashes: bool = True) -> Bundle:
    """Open a bundle directory; raise BundleError naming the file at fault if anything is off."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle directory")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing; is {path} a bodyrt bundle?")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: unreadable manifest ({error})") from None
    manifest = parse_manifest(manifest, str(manifest_path))
    for name, expected in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in the manifest but missing")
        if verify_hashes and sha256_of(file_path) != expected:
            raise BundleError(f"{file_path}: sha256 does not match the manifest (truncated or modified); "
                              "re-export the bundle")
    return Bundle(path=path, manifest=manifest)
