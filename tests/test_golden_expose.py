"""bodyrt against the official ExPose code: its golden outputs on two cases, stage by stage.

tests/data/golden_expose/ holds what the official implementation (commit 9651d09, its own SMPLXNet
forward, PyTorch on the CPU) computed on a bodyrt-rendered scene and on a real photograph, with a
checkpoint and body model that bodyrt's own generators regenerate bit-exactly (checked by a hash).
Nothing here shares code with what it checks except the regenerated inputs: the golden values are the
official model's, and the start vectors are recomputed below with plain numpy from checkpoint tensors.

Tolerances, and why they are not tighter:
- body crop 1e-5 and crop transform 1e-4 px (float32 translations of ~60 px; measured 2e-5);
- body network rotations, betas, expression 1e-4; camera 1e-5 (measured up to 5e-5 and 1.5e-6: the
  checkpoint's regressor gain of 30 amplifies float32 convolution rounding, which differs per kernel);
- part boxes end to end 1e-2 px: a 1.5e-6 difference of the camera translation moves a box by
  ~2e-3 px at the astronaut's scale. The box maths alone, fed the official joints, camera and
  transform, is held to 1e-3 px (measured 5e-5);
- part crops at the official boxes 3e-4: the boxes are stored as float32 corners (half an ulp at
  500 px is 3e-5 px) and the image changes by up to ~4.4 normalised units per pixel (measured 1.3e-4);
- final finger rotations 2e-3 (0.1 degree), other rotations 3e-4: the hand network turns the ~2e-3 px
  box difference above into finger rotations up to 1.1e-4 (PyTorch) and 8.3e-4 (ONNX Runtime,
  OpenVINO) apart on the astronaut; the bug this test was written for moved them by 0.3 to 1.1.
  Betas and expression 1e-4; joints and vertices 1e-4 m (0.1 mm, the target; measured 8e-6 m on the
  PyTorch reference, 3.6e-5 m on ONNX Runtime and OpenVINO).
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "golden_expose"
# The inputs the official code ran, golden_inputs and golden_bundle: tests/conftest.py (shared with
# tests/test_capi_native.py).
CASES = ("scene_seed11", "astronaut")
ROTATIONS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose")
MIRRORED_ENTRIES = (1, 2, 3, 6)  # row-major entries of a 3x3 rotation negated by a left/right mirror
RIGHT_HAND_JOINTS = [21, *range(40, 55), *range(71, 76)]
LEFT_HAND_JOINTS = [20, *range(25, 40), *range(66, 71)]
HEAD_JOINTS = [15, 22, 23, 24, *range(55, 60), *range(76, 144)]
# (offset, size) of each field of the body regressor's 341 outputs
BODY_FIELDS = {"global_orient": (0, 6), "body_pose": (6, 126), "left_hand_pose": (132, 90),
               "right_hand_pose": (222, 90), "jaw_pose": (312, 6), "betas": (318, 10),
               "expression": (328, 10), "camera": (338, 3)}


@pytest.fixture(scope="session")
def golden_reference(golden_inputs):
    from bodyrt.export.reference import ReferencePipeline

    return ReferencePipeline(*golden_inputs, threads=2)


@pytest.fixture(scope="session")
def golden_pipelines(golden_bundle):
    """backend name -> opened fp32 pipeline, opened once."""
    from bodyrt.runtime import open_bundle

    pipelines = {}
    yield lambda backend: pipelines.setdefault(
        backend, open_bundle(golden_bundle, backend=backend, threads=2, precision="fp32"))
    for pipeline in pipelines.values():
        pipeline.close()


def load_case(name: str):
    from bodyrt.images import load_image

    golden = dict(np.load(GOLDEN / f"official_{name}.npz"))
    image = load_image(GOLDEN / str(golden["image_path"]))
    assert list(image.shape[:2]) == golden["image_hw"].tolist()
    assert hashlib.sha256((GOLDEN / str(golden["image_path"])).read_bytes()).hexdigest() == str(golden["image_sha256"])
    return image, golden


def run_path(path: str, image, boxes, golden_reference, golden_pipelines):
    """-> (outputs, intermediates) as numpy arrays, person on the first axis."""
    if path == "reference":
        outputs = golden_reference(image, boxes).outputs
        intermediates = {key: value.numpy() for key, value in golden_reference.last_intermediates.items()}
        return outputs, intermediates
    pipeline = golden_pipelines(path)
    outputs = pipeline(image, boxes).outputs
    return outputs, dict(pipeline.last_tensors)


# ------------------------------------------------------------ plain numpy: the maths, written again

def decode_6d(values: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3): the 6 numbers as a row-major 3x2, Gram-Schmidt of its columns."""
    pairs = values.astype(np.float64).reshape(values.shape[:-1] + (3, 2))
    first, second = pairs[..., 0], pairs[..., 1]
    b1 = first / np.linalg.norm(first, axis=-1, keepdims=True)
    second = second - np.sum(b1 * second, axis=-1, keepdims=True) * b1
    b2 = second / np.linalg.norm(second, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-1)


def encode_6d(rotations: np.ndarray) -> np.ndarray:
    return rotations[..., :, :2].reshape(rotations.shape[:-2] + (6,))


def mirror(rotations: np.ndarray) -> np.ndarray:
    flat = rotations.reshape(rotations.shape[:-2] + (9,)).copy()
    flat[..., list(MIRRORED_ENTRIES)] *= -1
    return flat.reshape(rotations.shape)


def body_field(params: np.ndarray, name: str) -> np.ndarray:
    offset, size = BODY_FIELDS[name]
    return params[..., offset:offset + size].astype(np.float64)


def absolute_rotation(local: np.ndarray, parents, joint: int) -> np.ndarray:
    """Product of the local rotations from the root down to `joint`."""
    chain = [joint]
    while parents[chain[-1]] >= 0:
        chain.append(parents[chain[-1]])
    rotation = np.eye(3)
    for index in reversed(chain):
        rotation = rotation @ local[index]
    return rotation


def max_deviation(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max())


def box_corners(box) -> np.ndarray:
    """(cx, cy, size) -> x0, y0, x1, y1 (the centres of the first and last crop samples)."""
    cx, cy, size = np.asarray(box, dtype=np.float64)
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def stage_deviations(outputs: dict, intermediates: dict, golden: dict, person: int = 0) -> list:
    """[(stage, deviation, tolerance), ...] in pipeline order."""
    params = intermediates["body_params"][person]
    rows = [
        ("body crop", max_deviation(intermediates["body_crops"][person], golden["body_crop"]), 1e-5),
        ("body crop transform (px)", max_deviation(intermediates["crop_transforms"][person],
                                                   golden["body_crop_transform"]), 1e-4),
    ]
    for name in ROTATIONS:
        offset, size = BODY_FIELDS[name]
        rotations = decode_6d(params[offset:offset + size].reshape(-1, 6))
        rows.append((f"body network {name}", max_deviation(rotations, golden[f"body_{name}"].reshape(-1, 3, 3)), 1e-4))
    for name in ("betas", "expression"):
        rows.append((f"body network {name}", max_deviation(body_field(params, name), golden[f"body_{name}"]), 1e-4))
    rows.append(("camera scale", max_deviation(outputs["camera_scale"][person:person + 1], golden["camera_scale"]), 1e-5))
    rows.append(("camera translation", max_deviation(outputs["camera_translation"][person],
                                                     golden["camera_translation"]), 1e-5))
    for index, part in enumerate(("right_hand", "left_hand", "head")):
        rows.append((f"part box {part} (px)", max_deviation(box_corners(intermediates["part_boxes"][person, index]),
                                                            golden[f"{part}_box"]), 1e-2))
    for name in ROTATIONS:
        tolerance = 2e-3 if name.endswith("hand_pose") else 3e-4
        rows.append((f"final {name}", max_deviation(outputs[name][person].reshape(-1, 3, 3),
                                                    golden[name].reshape(-1, 3, 3)), tolerance))
    for name in ("betas", "expression"):
        rows.append((f"final {name}", max_deviation(outputs[name][person], golden[name]), 1e-4))
    rows.append(("final joints (m)", max_deviation(outputs["joints"][person], golden["joints"]), 1e-4))
    rows.append(("final vertices (m)", max_deviation(outputs["vertices"][person], golden["vertices"]), 1e-4))
    rows.append(("pinhole translation (m)", max_deviation(outputs["pinhole_translation"][person],
                                                          golden["pinhole_transl"]), 1e-4))
    return rows


def assert_stages_agree(rows: list, label: str) -> None:
    failing = [row for row in rows if not row[1] <= row[2]]
    if failing:
        table = "\n".join(f"  {stage:32s} {deviation:.3g} (tolerance {tolerance:g})" for stage, deviation, tolerance in rows)
        pytest.fail(f"{label}: first stage that disagrees with the official ExPose code: {failing[0][0]}\n{table}")


# ------------------------------------------------------------------------------------------ tests

def test_regenerated_checkpoint_has_the_official_hand_pca_shape(golden_inputs):
    """The released SMPL-X layer holds (6, 45) hand PCA components and refuses (45, 45)."""
    model = torch.load(golden_inputs[0], weights_only=True)["model"]
    assert tuple(model["smplx.body_model.left_hand_components"].shape) == (6, 45)
    assert tuple(model["smplx.body_model.right_hand_components"].shape) == (6, 45)


def test_checkpoints_with_full_hand_components_still_load(golden_inputs, tmp_path):
    from bodyrt.export.checkpoint import load_expose_checkpoint

    contents = torch.load(golden_inputs[0], weights_only=True)
    for side in ("left", "right"):
        contents["model"][f"smplx.body_model.{side}_hand_components"] = torch.eye(45)
    torch.save(contents, tmp_path / "full-components.ckpt")
    weights = load_expose_checkpoint(tmp_path / "full-components.ckpt")
    reference = load_expose_checkpoint(golden_inputs[0])
    assert torch.equal(weights.body["regressor.mean_param"], reference.body["regressor.mean_param"])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", ["reference", "onnxruntime", "openvino"])
def test_matches_the_official_code_stage_by_stage(case, path, golden_reference, golden_pipelines):
    image, golden = load_case(case)
    outputs, intermediates = run_path(path, image, golden["bbox"][None], golden_reference, golden_pipelines)
    assert_stages_agree(stage_deviations(outputs, intermediates, golden), f"{case} on {path}")


@pytest.mark.parametrize("case", CASES)
def test_part_boxes_from_the_official_joints(case):
    """The attention maths alone: the official body joints, camera and crop transform in, boxes out."""
    from bodyrt.export.stages import box_to_full_image, part_box, project_to_body_crop

    _, golden = load_case(case)
    joints = torch.from_numpy(golden["body_joints"])[None]
    camera = torch.tensor([[float(np.log(np.expm1(golden["camera_scale"][0]))), *golden["camera_translation"]]])
    transform = torch.from_numpy(golden["body_crop_transform"])[None]
    pixels = project_to_body_crop(joints, camera, 256)
    for part, joint_ids, scale in (("right_hand", RIGHT_HAND_JOINTS, 3.0), ("left_hand", LEFT_HAND_JOINTS, 3.0),
                                   ("head", HEAD_JOINTS, 2.0)):
        box = box_to_full_image(part_box(pixels[:, joint_ids], scale), transform)[0]
        assert max_deviation(box_corners(box), golden[f"{part}_box"]) <= 1e-3, part


@pytest.mark.parametrize("case", CASES)
def test_part_crops_at_the_official_boxes(case):
    """Both samplers (the runtime's host crops and the reference's grid_sample) at the official boxes."""
    from bodyrt.export.reference import normalise_image, sample_part_crops
    from bodyrt.runtime.crops import part_crops

    image, golden = load_case(case)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for part, size in (("right_hand", 224), ("left_hand", 224), ("head", 256)):
        x0, y0, x1, y1 = golden[f"{part}_box"].astype(np.float64)
        centre, side = np.array([[(x0 + x1) / 2, (y0 + y1) / 2]]), np.array([x1 - x0])
        host = part_crops(image, centre, side, size, np.array([False]), mean, std, pixel_scale=1.0 / 255.0)[0]
        assert max_deviation(host, golden[f"{part}_crop"]) <= 3e-4, f"runtime crops, {part}"
        sampled = sample_part_crops(normalise_image(image), torch.tensor([[*centre[0], side[0]]]), size,
                                    torch.tensor([False]))[0]
        assert max_deviation(sampled, golden[f"{part}_crop"]) <= 3e-4, f"reference crops, {part}"


@pytest.mark.parametrize("path", ["reference", "onnxruntime"])
def test_starts_are_what_the_official_model_feeds_its_part_regressors(path, golden_inputs, golden_reference,
                                                                       golden_pipelines):
    """Each start recomputed with numpy from the checkpoint's tensors and the body network's outputs."""
    image, golden = load_case("astronaut")
    _, intermediates = run_path(path, image, golden["bbox"][None], golden_reference, golden_pipelines)
    model = torch.load(golden_inputs[0], weights_only=True)["model"]
    tensor = lambda key: model[key].double().numpy().reshape(-1)  # noqa: E731
    parents = np.load(golden_inputs[1])["kintree_table"][0].astype(np.int64)
    parents[0] = -1
    params = intermediates["body_params"][0]

    local = decode_6d(np.concatenate([body_field(params, "global_orient"),
                                      body_field(params, "body_pose")]).reshape(22, 6))
    right_wrist = absolute_rotation(local, parents, 21)
    left_wrist = absolute_rotation(local, parents, 20)
    hand_tail = np.concatenate([tensor("smplx.hand_predictor.shape_mean"), tensor("smplx.hand_predictor.camera_mean")])
    right = np.concatenate([encode_6d(right_wrist), body_field(params, "right_hand_pose"), hand_tail])
    left_fingers = encode_6d(mirror(decode_6d(body_field(params, "left_hand_pose").reshape(15, 6)))).reshape(-1)
    left = np.concatenate([encode_6d(mirror(left_wrist)), left_fingers, hand_tail])
    face = np.concatenate([tensor("smplx.head_predictor.neck_pose_mean"), body_field(params, "jaw_pose"),
                           tensor("smplx.head_predictor.shape_mean"), body_field(params, "expression"),
                           np.zeros(40), tensor("smplx.head_predictor.camera_mean")])
    # the raw right-hand and jaw outputs are far from orthonormal here (gain 30): a decode/encode
    # round trip would be caught
    assert np.abs(encode_6d(decode_6d(body_field(params, "right_hand_pose").reshape(15, 6))).reshape(-1)
                  - body_field(params, "right_hand_pose")).max() > 1e-2
    assert max_deviation(intermediates["hand_starts"][0, 0], right) <= 1e-5
    assert max_deviation(intermediates["hand_starts"][0, 1], left) <= 1e-5
    assert max_deviation(intermediates["face_starts"][0, 0], face) <= 1e-5


@pytest.mark.parametrize("path", ["reference", "onnxruntime", "openvino"])
def test_several_people_in_one_image(path, golden_reference, golden_pipelines):
    """Another person first, the golden one second: the golden person still matches the official code,
    and each person of the batch equals that person run alone."""
    image, golden = load_case("scene_seed11")
    other = golden["bbox"] + np.array([-150.0, 20.0, -150.0, 20.0], dtype=np.float32)
    boxes = np.stack([other, golden["bbox"]])
    outputs, intermediates = run_path(path, image, boxes, golden_reference, golden_pipelines)
    assert_stages_agree(stage_deviations(outputs, intermediates, golden, person=1), f"person 2 of 2 on {path}")
    for person, box in enumerate(boxes):
        alone, _ = run_path(path, image, box[None], golden_reference, golden_pipelines)
        for name in ("vertices", "joints"):
            assert max_deviation(outputs[name][person], alone[name][0]) <= 1e-5, (person, name)
