"""Bundles are shared between users (a service account, a container): export and quantize write them
with the umask's permissions (0755 folders, 0644 files under umask 022), not mkdtemp's private 0700."""

import json
import os
import stat

import pytest
import torch


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


class Doubler(torch.nn.Module):
    def forward(self, values):
        return values * 2.0


class Unchecked(dict):
    """Stands in for the parsed manifest: these tests are about files, not manifest contents."""

    def to_json(self):
        return dict(self)


def test_export_writes_a_bundle_others_can_read(tmp_path, umask_022, monkeypatch):
    import bodyrt.export.bundle
    from bodyrt.export.bundle import build_bundle

    monkeypatch.setattr(bodyrt.export.bundle, "parse_manifest", lambda manifest, where: Unchecked(manifest))
    spec = {"name": "double", "module": Doubler().eval(), "inputs": ["values"], "outputs": ["doubled"],
            "tolerance": 1e-6}
    out = build_bundle(tmp_path / "bundle", [spec], {"values": torch.ones(2, 3)}, threads=1,
                       make_manifest=lambda files, graphs: {"format": "bodyrt-bundle", "stages": files})
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out.iterdir()}
    assert set(modes) >= {"double.onnx", "manifest.json"}
    assert set(modes.values()) == {0o644}, modes


def test_quantize_rewrites_the_manifest_readable_by_all(tmp_path, umask_022, monkeypatch):
    import bodyrt.export.quantize
    from bodyrt.export.quantize import write_manifest

    monkeypatch.setattr(bodyrt.export.quantize, "parse_manifest", lambda manifest, where: Unchecked(manifest))
    (tmp_path / "manifest.json").write_text("{}")
    write_manifest(tmp_path, {"format": "bodyrt-bundle", "variants": {}})
    assert stat.S_IMODE((tmp_path / "manifest.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "manifest.json").read_text())["variants"] == {}


def test_a_stricter_umask_is_respected(tmp_path):
    from bodyrt.files import apply_umask, shared_temporary_folder

    previous = os.umask(0o077)
    try:
        folder = shared_temporary_folder(tmp_path, ".x-")
        (folder / "f").write_text("x")
        apply_umask(folder)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "f").stat().st_mode) == 0o600
