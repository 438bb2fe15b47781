"""The exported bundle and the torch-free runtime against the PyTorch reference."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bodyrt.cli import main
from bodyrt.errors import BundleError, ExportError, InputError
from bodyrt.runtime import open_bundle
from bodyrt.runtime.bundle import read_bundle


@pytest.fixture(scope="module")
def runtime(bundle_dir):
    return open_bundle(bundle_dir, threads=2)


def scene(demo_files, size, seed=0):
    from bodyrt.export.fixtures.scenes import sample_scene

    return sample_scene(demo_files[1], seed=seed, size=size)


def test_manifest_holds_what_the_runtime_needs(bundle_dir, demo_files):
    manifest = read_bundle(bundle_dir).manifest
    from bodyrt.runtime.bundle import sha256_of
    from bodyrt.runtime.manifest import TensorSpec

    assert manifest.format_version == 2
    assert [stage.name for stage in manifest.stages] == ["body", "hand", "face", "merge"]
    assert manifest.stages[0].inputs[0] == TensorSpec("body_crops", ("people", 3, 256, 256), "float32")
    assert [step.name for step in manifest.steps] == ["body_crop", "body", "hand_crops", "face_crops", "hand",
                                                     "face", "merge", "pinhole"]
    assert (manifest.step("body_crop").crop_size, manifest.step("body_crop").box_scale) == (256, 1.2)
    assert [manifest.step(name).crop_size for name in ("hand_crops", "face_crops")] == [224, 256]
    assert manifest.step("hand_crops").mirror == (False, True)
    assert manifest.step("pinhole").focal_length == 5000.0
    assert len(manifest.mesh.faces) == 20908
    assert manifest.preprocessing.std == (0.229, 0.224, 0.225)
    assert manifest.preprocessing.pixel_scale == 1.0 / 255.0
    assert manifest.source.untrained is True
    assert manifest.source.checkpoint_sha256 == sha256_of(demo_files[0])
    assert set(manifest.files) == {"body.onnx", "hand.onnx", "face.onnx", "merge.onnx"}
    assert manifest.fp32_stages == ("merge",)


@pytest.mark.parametrize("size,people", [((720, 1280), 1), ((480, 640), 2), ((1080, 1920), 3)])
def test_runtime_matches_the_reference_end_to_end(runtime, reference_pipeline, demo_files, size, people):
    image, box = scene(demo_files, size, seed=people)
    shifts = np.array([[0, 0, 0, 0], [-60, 20, -60, 20], [90, -10, 90, -10]], dtype=np.float32)[:people]
    boxes = box + shifts
    ours = runtime(image, boxes).outputs
    reference = reference_pipeline(image, boxes).outputs
    assert set(ours) == set(reference)
    np.testing.assert_allclose(ours["vertices"], reference["vertices"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["joints"], reference["joints"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours["part_boxes"], reference["part_boxes"], atol=1e-2, rtol=0)
    for key in ["body_pose", "right_hand_pose", "left_hand_pose", "jaw_pose", "expression", "camera_scale"]:
        np.testing.assert_allclose(ours[key], reference[key], atol=1e-4, rtol=0, err_msg=key)


def test_bgr_input_gives_the_rgb_result(runtime, demo_files):
    image, box = scene(demo_files, (360, 640))
    rgb = runtime(image, box).outputs["vertices"]
    bgr = runtime(np.ascontiguousarray(image[:, :, ::-1]), box, channel_order="bgr").outputs["vertices"]
    np.testing.assert_allclose(bgr, rgb, atol=1e-6)


def test_runtime_never_imports_torch(bundle_dir, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails loudly
        import numpy as np
        import bodyrt.runtime
        pipeline = bodyrt.runtime.open_bundle({str(bundle_dir)!r})
        image = np.full((240, 320, 3), 128, np.uint8)
        result = pipeline(image, [[60, 20, 200, 230]])
        assert result.outputs["vertices"].shape == (1, 10475, 3)
        loaded = [name for name in sys.modules if name.split(".")[0] == "torch" and sys.modules[name] is not None]
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    return copy


def test_missing_stage_file_is_named(bundle_copy):
    (bundle_copy / "hand.onnx").unlink()
    with pytest.raises(BundleError, match="hand.onnx"):
        read_bundle(bundle_copy)


def test_truncated_stage_file_is_named(bundle_copy):
    path = bundle_copy / "face.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(BundleError, match="face.onnx.*sha256"):
        read_bundle(bundle_copy)


def test_tampered_manifest_version(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version 99"):
        read_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json"):
        read_bundle(tmp_path)


@pytest.mark.parametrize("box,reason", [
    ([10, 10, 10, 50], "empty"),
    ([50, 60, 10, 20], "inverted"),
    ([5000, 5000, 5100, 5200], "outside"),
    ([0, float("nan"), 10, 10], "finite"),
])
def test_bad_boxes_raise_input_error(runtime, box, reason):
    image = np.zeros((100, 120, 3), np.uint8)
    with pytest.raises(InputError):
        runtime(image, [box])


def test_failed_export_keeps_the_previous_bundle(demo_files, bundle_dir, tmp_path, monkeypatch):
    from bodyrt.export import bundle as bundle_module

    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    calls = []

    def failing_check(path, name, *args, **kwargs):
        calls.append(name)
        if name == "face":
            raise ExportError("simulated failure in the middle of the export")
        return 0.0

    monkeypatch.setattr(bundle_module, "check_stage", failing_check)
    monkeypatch.setattr(bundle_module, "export_onnx", lambda module, inputs, path, *names: path.write_bytes(b"x"))
    monkeypatch.setattr(bundle_module, "finish_graph", lambda path: {"inputs": [], "outputs": []})
    with pytest.raises(ExportError, match="simulated"):
        bundle_module.export_bundle(*demo_files, target)
    assert calls == ["body", "hand", "face"]
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle"]  # no partial directory left


def test_cli_run_bundle_writes_every_output(bundle_dir, demo_files, tmp_path, capsys):
    from bodyrt.images import save_png

    image, box = scene(demo_files, (360, 640))
    save_png(tmp_path / "a.png", image)
    save_png(tmp_path / "b.png", image[:, ::-1])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    out = tmp_path / "out"
    code = main(["run", "--bundle", str(bundle_dir), str(tmp_path / "a.png"), str(tmp_path / "broken.jpg"),
                 str(tmp_path / "b.png"), "--box", *map(str, box[0].tolist()), "--out", str(out)])
    assert code == 1  # one image failed: reported, the others still ran
    assert "broken.jpg" in capsys.readouterr().err
    for name in ["a.png", "b.png"]:
        for file in ["person0_params.npz", "person0.ply", "person0.obj", "overlay.png", "result.json"]:
            assert (out / name / file).is_file(), f"{name}/{file}"
    summary = json.loads(next(out.glob("summary-*.json")).read_text())
    assert [entry["image"].rsplit("/", 1)[-1] for entry in summary["images"]] == ["a.png", "broken.jpg", "b.png"]
    assert [entry["status"] for entry in summary["images"]] == ["ok", "failed", "ok"]
    assert set(summary["images"][0]["timings_ms"]) >= {"body", "hand", "face", "merge", "hand_crops", "face_crops", "pinhole"}
    assert summary["backend"] == "onnxruntime" and summary["stage_precisions"]["body"] == "fp32"
    assert {"open_verify", "open_sessions"} <= set(summary["timings_ms"])
    overlay = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "a.png" / "overlay.png"))
    assert overlay.shape == image.shape and (overlay != image).any()
