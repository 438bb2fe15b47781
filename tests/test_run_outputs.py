"""`bodyrt run`'s outputs: inputs (files, folders, globs, boxes files), one folder per image that never
collides with another's, swapped in whole, one summary per run, and what a failure leaves behind.

Most tests drive run_images with a small stand-in pipeline (a cube per person, outputs derived from
the image's pixels), so they check the file handling in milliseconds; the geometry and the real
pipeline are tested in test_geometry.py.
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bodyrt.cli import main
from bodyrt.errors import InputError
from bodyrt.inputs import expand_inputs, match_boxes, read_boxes_file
from bodyrt.run import run_images

CUBE = np.array([[x, y, z] for x in (-0.3, 0.3) for y in (-0.9, 0.9) for z in (-0.1, 0.1)], dtype=np.float32)
CUBE_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                       [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


class StandInResult:
    def __init__(self, outputs, timings_ms):
        self.outputs, self.timings_ms = outputs, timings_ms


class StandInPipeline:
    """Outputs shaped like ExPose's, for a cube; the camera translation carries the image's mean
    colour, so every image's results differ. fail_on: image means that raise InputError."""

    manifest = None
    crop_size = 256
    faces = CUBE_FACES
    stage_precisions = {"body": "fp32"}

    def __init__(self):
        self.calls = 0

    def __call__(self, image, boxes):
        self.calls += 1
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        people = len(boxes)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        size = 1.2 * np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
        transforms = np.zeros((people, 3, 3), np.float32)
        transforms[:, 0, 0] = transforms[:, 1, 1] = 256 / size
        transforms[:, :2, 2] = 256 * (0.5 - centre / size[:, None])
        transforms[:, 2, 2] = 1
        eye = np.eye(3, dtype=np.float32)
        shade = float(image.mean()) / 255
        outputs = {
            "vertices": np.repeat(CUBE[None], people, axis=0), "joints": np.repeat(CUBE[None, :5], people, axis=0),
            "global_orient": np.repeat(eye[None], people, 0), "body_pose": np.tile(eye, (people, 21, 1, 1)),
            "left_hand_pose": np.tile(eye, (people, 15, 1, 1)), "right_hand_pose": np.tile(eye, (people, 15, 1, 1)),
            "jaw_pose": np.repeat(eye[None], people, 0), "betas": np.full((people, 10), shade, np.float32),
            "expression": np.zeros((people, 10), np.float32), "camera_scale": np.full(people, 0.8, np.float32),
            "camera_translation": np.full((people, 2), shade * 0.01, np.float32),
            "part_boxes": np.zeros((people, 3, 3), np.float32), "crop_transforms": transforms,
            "focal_length": np.full(people, 5000, np.float32),
            "pinhole_translation": np.zeros((people, 3), np.float32),
        }
        return StandInResult(outputs, {"body": 1.0, "merge": 0.5})


def save(path, value=100, size=(40, 60)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((*size, 3), value, np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def tree(folder) -> dict:
    """relative path -> bytes of every file under folder (hidden ones included)."""
    folder = Path(folder)
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def summaries(out) -> list:
    return [json.loads(path.read_text()) for path in sorted(Path(out).glob("summary-*.json"))]


# -- names never collide -------------------------------------------------------------------------
def test_same_file_names_in_two_folders_and_two_formats_are_all_kept(tmp_path):
    inputs = [save(tmp_path / "in/a/photo.png", 10), save(tmp_path / "in/b/photo.png", 20),
              save(tmp_path / "in/a/same.jpg", 30), save(tmp_path / "in/a/same.png", 40)]
    out = tmp_path / "out"
    run_images([str(path) for path in inputs], out, pipeline=StandInPipeline())
    summary, = summaries(out)
    folders = [entry["output_folder"] for entry in summary["images"]]
    assert folders == ["a/photo.png", "b/photo.png", "a/same.jpg", "a/same.png"]
    betas = set()
    for path, folder in zip(inputs, folders):
        result = json.loads((out / folder / "result.json").read_text())
        assert result["image"] == str(path)
        betas.add(float(np.load(out / folder / "person0_params.npz")["betas"][0, 0]))
        assert (out / folder / "person0.ply").is_file() and (out / folder / "overlay.png").is_file()
    assert len(betas) == 4  # four different results, none overwritten by another


def test_every_file_the_summary_lists_exists_with_its_digest(tmp_path):
    save(tmp_path / "in/x.png")
    out = tmp_path / "out"
    run_images([str(tmp_path / "in/x.png")], out, boxes=[[0, 0, 30, 30], [10, 5, 50, 40]], pipeline=StandInPipeline())
    entry, = summaries(out)[0]["images"]
    assert sorted(entry["files"]) == sorted(f"x.png/{name}" for name in
                                            ["result.json", "overlay.png", "person0_params.npz", "person0.ply",
                                             "person0.obj", "person1_params.npz", "person1.ply", "person1.obj"])
    for name, digest in entry["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert entry["boxes"] == [[0, 0, 30, 30], [10, 5, 50, 40]] and entry["boxes_from"] == "--box"
    assert (entry["width"], entry["height"]) == (60, 40)


# -- inputs: folders and globs -------------------------------------------------------------------------
def test_folders_and_glob_patterns_expand_to_their_images(tmp_path):
    save(tmp_path / "in/one.jpg")
    save(tmp_path / "in/sub/two.PNG")
    save(tmp_path / "in/.hidden.png")
    (tmp_path / "in/notes.txt").write_text("not an image")
    save(tmp_path / "other/three.png")
    images = expand_inputs([str(tmp_path / "in"), str(tmp_path / "other/*.png"), str(tmp_path / "in/one.jpg")])
    assert [image.path.name for image in images] == ["one.jpg", "two.PNG", "three.png"]  # each once
    assert [image.output_folder.as_posix() for image in images] == ["in/one.jpg", "in/sub/two.PNG", "other/three.png"]
    missing = expand_inputs([str(tmp_path / "nothing/*.jpg")])
    assert missing[0].error.endswith("pattern matches no JPEG or PNG file")


def test_a_rerun_over_a_folder_does_not_take_its_own_outputs_as_inputs(tmp_path):
    save(tmp_path / "photos/p.png")
    out = tmp_path / "photos/results"
    run_images([str(tmp_path / "photos")], out, pipeline=StandInPipeline())
    assert (out / "p.png/overlay.png").is_file()
    run_images([str(tmp_path / "photos")], out, pipeline=StandInPipeline())
    assert [entry["image"] for entry in summaries(out)[-1]["images"]] == [str(tmp_path / "photos/p.png")]


# -- reruns, failures, concurrency of runs into one --out -----------------------------------------------
def test_a_rerun_with_fewer_people_leaves_no_stale_person_files(tmp_path):
    image = save(tmp_path / "img.png")
    out = tmp_path / "out"
    run_images([str(image)], out, boxes=[[0, 0, 30, 30], [10, 5, 50, 40]], pipeline=StandInPipeline())
    assert (out / "img.png/person1.ply").is_file()
    run_images([str(image)], out, boxes=[[0, 0, 30, 30]], pipeline=StandInPipeline())
    assert sorted(os.listdir(out / "img.png")) == ["overlay.png", "person0.obj", "person0.ply",
                                                    "person0_params.npz", "result.json"]
    latest = summaries(out)[-1]
    assert len(latest["images"][0]["people"]) == 1
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no staging or retired folder left


def test_each_run_has_its_own_summary_and_earlier_ones_stay(tmp_path):
    save(tmp_path / "a.png")
    out = tmp_path / "out"
    first = run_images([str(tmp_path / "a.png")], out, pipeline=StandInPipeline())
    first_bytes = first.read_bytes()
    second = run_images([str(tmp_path / "a.png")], out, pipeline=StandInPipeline())
    assert first != second and first.read_bytes() == first_bytes
    assert json.loads(second.read_text())["run_id"] == json.loads((out / "a.png/result.json").read_text())["run_id"]


def test_a_failed_input_changes_no_other_output_and_no_earlier_summary(tmp_path, capsys):
    good, bad = save(tmp_path / "in/good.png", 50), save(tmp_path / "in/bad.png", 60)
    out = tmp_path / "out"
    run_images([str(good), str(bad)], out, pipeline=StandInPipeline())
    before = tree(out)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    save(good, 70)  # changed: its results change
    with pytest.raises(InputError, match="1 of 2 images failed"):
        run_images([str(good), str(bad)], out, pipeline=StandInPipeline())
    after = tree(out)
    bad_files = [name for name in before if name.startswith("bad.png/")]
    assert bad_files and all(after[name] == before[name] for name in bad_files)  # the failed image's old results
    assert after["good.png/person0_params.npz"] != before["good.png/person0_params.npz"]
    old_summary = next(name for name in before if name.startswith("summary-"))
    assert after[old_summary] == before[old_summary]
    new = summaries(out)[-1]
    assert [entry["status"] for entry in new["images"]] == ["ok", "failed"]
    assert "bad.png" in new["images"][1]["error"] and new["counts"] == {"images": 2, "ok": 1, "failed": 1, "people": 1}


def test_a_run_where_everything_fails_keeps_the_good_summary(tmp_path):
    save(tmp_path / "a.png")
    out = tmp_path / "out"
    good = run_images([str(tmp_path / "a.png")], out, pipeline=StandInPipeline())
    content = good.read_bytes()
    with pytest.raises(InputError):
        run_images([str(tmp_path / "missing.png")], out, pipeline=StandInPipeline())
    assert good.read_bytes() == content and (out / "a.png/person0.ply").is_file()
    failed = summaries(out)[-1]
    assert failed["counts"]["ok"] == 0 and "no such image" in failed["images"][0]["error"]


def test_an_interrupted_write_leaves_the_previous_folder_and_no_partial(tmp_path, monkeypatch):
    import bodyrt.run

    image = save(tmp_path / "a.png")
    out = tmp_path / "out"
    run_images([str(image)], out, pipeline=StandInPipeline())
    before = tree(out / "a.png")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bodyrt.run, "write_obj", full_disk)
    with pytest.raises(InputError, match="a.png: writing its results failed"):
        run_images([str(image)], out, pipeline=StandInPipeline())
    assert tree(out / "a.png") == before
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_a_folder_bodyrt_did_not_write_is_never_replaced(tmp_path):
    image = save(tmp_path / "a.png")
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)
    (out / "a.png" / "thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="was not written by bodyrt run"):
        run_images([str(image)], out, pipeline=StandInPipeline())
    assert (out / "a.png" / "thesis.tex").read_text() == "precious"


def test_outputs_take_the_umask_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        save(tmp_path / "a.png")
        out = tmp_path / "out"
        summary = run_images([str(tmp_path / "a.png")], out, pipeline=StandInPipeline())
    finally:
        os.umask(previous)
    assert (out / "a.png").stat().st_mode & 0o777 == 0o755
    assert {(path.stat().st_mode & 0o777) for path in (out / "a.png").iterdir()} == {0o644}
    assert summary.stat().st_mode & 0o777 == 0o644


def test_overlay_off_writes_no_picture(tmp_path):
    save(tmp_path / "a.png")
    run_images([str(tmp_path / "a.png")], tmp_path / "out", overlay=False, pipeline=StandInPipeline())
    assert not (tmp_path / "out/a.png/overlay.png").exists()
    assert (tmp_path / "out/a.png/person0.ply").is_file()


# -- boxes files -----------------------------------------------------------------------------------------
def test_bodyrt_boxes_file_gives_each_image_its_boxes(tmp_path):
    save(tmp_path / "in/a/photo.png")
    save(tmp_path / "in/b/photo.png")
    save(tmp_path / "in/empty.png")
    boxes = {"a/photo.png": [[0, 0, 30, 30]], "in/b/photo.png": [[1, 2, 20, 30], [5, 5, 40, 35]],
             "empty.png": [], "elsewhere.png": [[0, 0, 1, 1]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    run_images([str(tmp_path / "in")], out, boxes_file=tmp_path / "boxes.json", pipeline=StandInPipeline())
    entries = {entry["output_folder"]: entry for entry in summaries(out)[0]["images"]}
    assert entries["a/photo.png"]["boxes"] == [[0, 0, 30, 30]]
    assert entries["b/photo.png"]["boxes"] == [[1, 2, 20, 30], [5, 5, 40, 35]]
    assert entries["empty.png"]["people"] == [] and entries["empty.png"]["boxes_from"] == "boxes file"
    assert len(entries["b/photo.png"]["people"]) == 2


def test_coco_detections_xywh_person_category_and_score(tmp_path):
    save(tmp_path / "000000397133.jpg")
    save(tmp_path / "street.jpg")
    detections = [
        {"image_id": 397133, "category_id": 1, "bbox": [10, 5, 20, 30], "score": 0.9},
        {"image_id": 397133, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1},  # below --min-score
        {"image_id": 397133, "category_id": 3, "bbox": [1, 1, 9, 9], "score": 0.99},  # a car
        {"file_name": "street.jpg", "category_id": 1, "bbox": [2, 3, 4, 5], "score": 0.7},
    ]
    (tmp_path / "dets.json").write_text(json.dumps(detections))
    images = expand_inputs([str(tmp_path / "000000397133.jpg"), str(tmp_path / "street.jpg")])
    match_boxes(images, read_boxes_file(tmp_path / "dets.json"), "dets.json")
    assert [image.boxes for image in images] == [[[10, 5, 30, 35]], [[2, 3, 6, 8]]]
    images = expand_inputs([str(tmp_path / "000000397133.jpg")])
    match_boxes(images, read_boxes_file(tmp_path / "dets.json", min_score=0.05), "dets.json")
    assert images[0].boxes == [[10, 5, 30, 35], [0, 0, 5, 5]]


def test_coco_dataset_file_maps_ids_through_its_images(tmp_path):
    save(tmp_path / "x.png")
    dataset = {"images": [{"id": 7, "file_name": "x.png"}],
               "annotations": [{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "coco.json").write_text(json.dumps(dataset))
    images = expand_inputs([str(tmp_path / "x.png")])
    match_boxes(images, read_boxes_file(tmp_path / "coco.json"), "coco.json")
    assert images[0].boxes == [[1, 2, 4, 6]]


def test_a_key_naming_two_images_or_no_key_is_an_error_for_that_image(tmp_path):
    save(tmp_path / "a/photo.png")
    save(tmp_path / "b/photo.png")
    save(tmp_path / "c.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"photo.png": [[0, 0, 9, 9]]}))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="3 of 3 images failed"):
        run_images([str(tmp_path / "a/photo.png"), str(tmp_path / "b/photo.png"), str(tmp_path / "c.png")], out,
                   boxes_file=tmp_path / "boxes.json", pipeline=StandInPipeline())
    errors = [entry["error"] for entry in summaries(out)[0]["images"]]
    assert "names 2 images" in errors[0] and "names 2 images" in errors[1]
    assert "no entry for this image" in errors[2]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON boxes file"),
    ('{"a.png": [[0, 0, 1]]}', "a box is 4 numbers"),
    ('{"a.png": [[5, 0, 1, 9]]}', "is empty"),
    ('{"a.png": [[0, 0, "NaN", 9]]}', "not finite"),
    ('[{"image_id": 1}]', "needs 'bbox'"),
    ('[{"image_id": 1, "bbox": [0, 0, 5, 5], "score": "high"}]', "score"),
    ('"just a string"', "expected an object"),
])
def test_a_bad_boxes_file_is_one_error_naming_the_file(tmp_path, content, message):
    (tmp_path / "boxes.json").write_text(content)
    with pytest.raises(InputError, match=message) as caught:
        read_boxes_file(tmp_path / "boxes.json")
    assert "boxes.json" in str(caught.value)


def test_cli_box_and_boxes_together_is_refused(tmp_path, capsys):
    save(tmp_path / "a.png")
    (tmp_path / "b.json").write_text("{}")
    code = main(["run", "--bundle", str(tmp_path), str(tmp_path / "a.png"), "--box", "0", "0", "5", "5",
                 "--boxes", str(tmp_path / "b.json"), "--out", str(tmp_path / "out")])
    assert code == 1 and "give --box or --boxes, not both" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- overlay ----------------------------------------------------------------------------------------------
def test_overlay_draws_boxes_and_joints_over_the_mesh():
    from bodyrt.overlay import JOINT_COLOUR, PART_BOX_COLOURS, PERSON_BOX_COLOUR, render_overlay

    image = np.zeros((200, 300, 3), np.uint8)
    box = np.array([[100.0, 20.0, 200.0, 180.0]], np.float32)
    result = StandInPipeline()(image, box)
    outputs = dict(result.outputs, camera_translation=np.zeros((1, 2), np.float32))
    outputs["part_boxes"] = np.array([[[120, 60, 20], [180, 60, 20], [150, 40, 30]]], np.float32)
    joints_2d = np.array([[[150.0, 100.0], [140.0, 150.0]]])
    plain = render_overlay(image, outputs, CUBE_FACES, 256, opacity=1.0)
    drawn = render_overlay(image, outputs, CUBE_FACES, 256, opacity=1.0, person_boxes=box, joints_2d=joints_2d)
    assert plain[100, 150].tolist() != [0, 0, 0]  # the mesh covers the joint's pixel
    assert drawn[100, 150].tolist() == list(JOINT_COLOUR) and drawn[150, 140].tolist() == list(JOINT_COLOUR)
    assert drawn[20, 160].tolist() == list(PERSON_BOX_COLOUR) and drawn[120, 100].tolist() == list(PERSON_BOX_COLOUR)
    for (cx, cy, size), colour in zip(outputs["part_boxes"][0], PART_BOX_COLOURS):
        assert drawn[int(cy - size / 2), int(cx)].tolist() == list(colour)  # top edge of each part box


# -- opening a bundle: hashing overlapped with session creation, still verified ----------------------------
def test_opening_reports_hashing_and_sessions_and_still_refuses_a_modified_file(bundle_dir, tmp_path):
    from bodyrt.errors import BundleError
    from bodyrt.run import open_bundle_overlapped

    pipeline, timings = open_bundle_overlapped(bundle_dir, threads=1)
    pipeline.close()
    assert set(timings) == {"open", "open_verify", "open_sessions"} and min(timings.values()) > 0
    copy = tmp_path / "bundle"
    copy.mkdir()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for name in manifest["files"]:
        (copy / name).symlink_to(bundle_dir / name)
    face_file = next(name for name in manifest["files"] if name.startswith("face"))
    manifest["files"][face_file] = "0" * 64  # as if the graph had been modified after export
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"{face_file}: sha256 does not match"):
        open_bundle_overlapped(copy, threads=1)


def test_two_runs_at_once_into_one_folder_never_mix_files_within_an_image(tmp_path):
    """Each image folder ends up wholly from one run: its files are the ones that run's summary lists."""
    from concurrent.futures import ThreadPoolExecutor

    images = [str(save(tmp_path / f"in/{name}.png", value)) for name, value in [("a", 10), ("b", 20), ("c", 30)]]
    out = tmp_path / "out"
    box_sets = [[[0, 0, 30, 30]], [[0, 0, 30, 30], [5, 5, 50, 35]]]  # one person, then two
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda boxes: run_images(images, out, boxes=boxes, pipeline=StandInPipeline()),
                              box_sets * 3))
    assert len(set(paths)) == 6  # six runs, six summaries
    by_run = {summary["run_id"]: summary for summary in summaries(out)}
    for name in ["a.png", "b.png", "c.png"]:
        run_id = json.loads((out / name / "result.json").read_text())["run_id"]
        entry = next(entry for entry in by_run[run_id]["images"] if entry["output_folder"] == name)
        on_disk = {f"{name}/{file}" for file in os.listdir(out / name)}
        assert on_disk == set(entry["files"])
        for file, digest in entry["files"].items():
            assert hashlib.sha256((out / file).read_bytes()).hexdigest() == digest
    assert not [name for name in os.listdir(out) if name.startswith(".")]


def test_an_out_folder_where_the_results_would_replace_the_image_is_refused(tmp_path, monkeypatch):
    image = save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="its results folder would be the image itself"):
        run_images(["photo.png"], ".", pipeline=StandInPipeline())
    assert image.is_file() and Image.open(image).size == (60, 40)


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_an_out_that_cannot_be_a_folder_is_one_error_before_anything_runs(tmp_path, where):
    save(tmp_path / "a.png")
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "results"
    pipeline = StandInPipeline()
    with pytest.raises(InputError, match="--out .*taken"):
        run_images([str(tmp_path / "a.png")], out, pipeline=pipeline)
    assert pipeline.calls == 0 and (tmp_path / "taken").read_text() == "a file"


def test_a_summary_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
    import bodyrt.run

    save(tmp_path / "a.png")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bodyrt.run, "write_new_file", full_disk)
    with pytest.raises(InputError, match="writing the run's summary failed \\(No space left on device\\)"):
        run_images([str(tmp_path / "a.png")], tmp_path / "out", pipeline=StandInPipeline())
