"""The demo reuses a cached bundle only when this bodyrt version exported it from this checkpoint."""

import hashlib
import json


def write_bundle(folder, checkpoint_sha256: str, version: str):
    folder.mkdir()
    (folder / "body.onnx").write_bytes(b"graph")
    manifest = {"format": "bodyrt-bundle", "format_version": 1,
                "files": {"body.onnx": hashlib.sha256(b"graph").hexdigest()},
                "source": {"checkpoint_sha256": checkpoint_sha256}, "tools": {"bodyrt": version}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_a_bundle_of_another_bodyrt_version_is_not_reused(tmp_path):
    import bodyrt
    from bodyrt.export.demo import _bundle_matches

    assert _bundle_matches(write_bundle(tmp_path / "current", "abc", bodyrt.__version__), "abc")
    assert not _bundle_matches(write_bundle(tmp_path / "old", "abc", "0.0.1"), "abc")
    assert not _bundle_matches(write_bundle(tmp_path / "other", "def", bodyrt.__version__), "abc")


def test_the_demo_speed_up_comes_with_a_word_about_noise(capsys):
    from bodyrt.export.demo import _print_table

    stages = {"body": 10.0, "total": 20.0}
    _print_table({"onnxruntime": stages, "pytorch": {"body": 20.0, "total": 40.0}}, threads=2, repeats=5)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("speed-up"))
    assert "2.00x" in line and "median of 5 runs" in line and "bodyrt bench" in line
