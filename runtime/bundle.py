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

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "bodyrt-bundle"
FORMAT_VERSION = 1


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A verified bundle: its directory and parsed manifest."""

    path: Path
    manifest: dict

    def stage(self, name: str) -> dict:
        for stage in self.manifest["stages"]:
            if stage["name"] == name:
                return stage
        raise BundleError(f"{self.path / MANIFEST_NAME}: no stage named {name!r}")

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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{manifest_path}: not a bodyrt bundle manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{manifest_path}: bundle format version {version}, this bodyrt reads version "
                          f"{FORMAT_VERSION}; re-export the bundle with this bodyrt")
    for name, expected in manifest.get("files", {}).items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: listed in the manifest but missing")
        if verify_hashes and sha256_of(file_path) != expected:
            raise BundleError(f"{file_path}: sha256 does not match the manifest (truncated or modified); "
                              "re-export the bundle")
    return Bundle(path=path, manifest=manifest)
