"""The PyTorch reference pipeline end to end and `bodyrt run --checkpoint`."""

import json

import numpy as np
import pytest

from bodyrt.cli import main
from bodyrt.runtime.outputs import PARAM_KEYS, read_ply


@pytest.fixture(scope="module")
def sample(demo_files):
    from bodyrt.export.fixtures.scenes import sample_scene

    return sample_scene(demo_files[1], size=(360, 640))


def test_outputs_have_the_documented_shapes(reference_pipeline, sample):
    image, box = sample
    boxes = np.concatenate([box, box + np.array([[30, 0, 30, 0]], dtype=np.float32)])
    outputs = reference_pipeline(image, boxes).outputs
    expected = {"vertices": (2, 10475, 3), "joints": (2, 144, 3), "global_orient": (2, 3, 3),
                "body_pose": (2, 21, 3, 3), "left_hand_pose": (2, 15, 3, 3), "right_hand_pose": (2, 15, 3, 3),
                "jaw_pose": (2, 3, 3), "betas": (2, 10), "expression": (2, 10), "camera_scale": (2,),
                "camera_translation": (2, 2), "part_boxes": (2, 3, 3), "pinhole_translation": (2, 3),
                "focal_length": (2,), "crop_transforms": (2, 3, 3)}
    assert {key: value.shape for key, value in outputs.items()} == expected
    for key, value in outputs.items():
        assert np.isfinite(value).all(), key
    rotations = outputs["body_pose"].reshape(-1, 3, 3)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotations.shape),
                               atol=1e-5)
    # part boxes of a sane size: the untrained weights stay near the mean pose
    body_size = 1.2 * float(max(box[0, 2] - box[0, 0], box[0, 3] - box[0, 1]))
    assert (outputs["part_boxes"][:, :, 2] > 0.01 * body_size).all()
    assert (outputs["part_boxes"][:, :, 2] < 2.0 * body_size).all()


def test_batch_of_people_equals_people_one_by_one(reference_pipeline, sample):
    image, box = sample
    other = box + np.array([[-40, 10, -40, 10]], dtype=np.float32)
    both = reference_pipeline(image, np.concatenate([box, other])).outputs
    first = reference_pipeline(image, box).outputs
    second = reference_pipeline(image, other).outputs
    np.testing.assert_allclose(both["vertices"][0], first["vertices"][0], atol=1e-5)
    np.testing.assert_allclose(both["vertices"][1], second["vertices"][0], atol=1e-5)


def test_pipeline_is_deterministic(reference_pipeline, sample):
    image, box = sample
    a = reference_pipeline(image, box).outputs
    b = reference_pipeline(image, box).outputs
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_pinhole_depth_follows_the_demo_formula(reference_pipeline, sample):
    image, box = sample
    outputs = reference_pipeline(image, box).outputs
    box_size = 1.2 * float(max(box[0, 2] - box[0, 0], box[0, 3] - box[0, 1]))
    depth = 2 * 5000 / (outputs["camera_scale"][0] * box_size)
    assert outputs["pinhole_translation"][0, 2] == pytest.approx(depth, rel=1e-5)
    np.testing.assert_allclose(outputs["pinhole_translation"][0, :2], outputs["camera_translation"][0])


def test_cli_run_with_checkpoint_writes_params_and_ply(demo_files, sample, tmp_path):
    from bodyrt.images import save_png

    image, box = sample
    save_png(tmp_path / "photo.png", image)
    checkpoint, body_model = demo_files
    code = main(["run", "--checkpoint", str(checkpoint), "--body-model", str(body_model),
                 str(tmp_path / "photo.png"), "--box", *map(str, box[0].tolist()), "--out", str(tmp_path / "out")])
    assert code == 0
    folder = tmp_path / "out" / "photo.png"
    params = np.load(folder / "person0_params.npz")
    assert set(PARAM_KEYS) - {"global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose"} \
        <= set(params.files)
    vertices, faces = read_ply(folder / "person0.ply")
    np.testing.assert_allclose(vertices, (params["vertices"] + params["transl"]) * [1, -1, -1], atol=1e-5)
    assert faces.shape == (20908, 3)
    # the same files as a bundle run: OBJ, overlay and a summary
    assert (folder / "person0.obj").is_file() and (folder / "overlay.png").is_file()
    summary = json.loads(next((tmp_path / "out").glob("summary-*.json")).read_text())
    assert summary["checkpoint"]["path"] == str(checkpoint.resolve()) and summary["counts"]["ok"] == 1


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path, demo_files, capsys):
    bad = tmp_path / "model.ckpt"
    bad.write_text("not a checkpoint")
    (tmp_path / "x.png").write_bytes(b"")
    code = main(["run", "--checkpoint", str(bad), "--body-model", str(demo_files[1]), str(tmp_path / "x.png"),
                 "--out", str(tmp_path / "out")])
    assert code == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "model.ckpt" in error[0]
