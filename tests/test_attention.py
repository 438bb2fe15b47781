"""Body-driven attention and merge: boxes, crops, mirroring, starts and the merge rule."""

import math

import numpy as np
import pytest
import torch

from bodyrt.export import layout
from bodyrt.export.checkpoint import default_part_means
from bodyrt.export.reference import sample_part_crops
from bodyrt.export.rotations import axis_angle_to_matrix, matrix_to_rot6d, mirror_rotation
from bodyrt.export.stages import (BodyStage, box_to_full_image, merge_parts, part_box, project_to_body_crop,
                                  split_body_params)


def crop_transform(box):
    """Hand-written body crop transform for a person box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    size = 1.2 * max(x1 - x0, y1 - y0)
    k = 256 / size
    return torch.tensor([[k, 0, 256 * (0.5 - cx / size)], [0, k, 256 * (0.5 - cy / size)], [0, 0, 1.0]])


def test_part_box_is_square_around_the_tight_box():
    points = torch.tensor([[[10.0, 20.0], [30.0, 25.0], [14.0, 60.0]]])
    box = part_box(points, scale_factor=3.0)
    # tight box x 10..30, y 20..60: centre (20, 40), longer side 40
    assert box.tolist() == [[20.0, 40.0, 120.0]]


def test_box_maps_back_through_the_inverse_crop_transform():
    transform = crop_transform((100.0, 50.0, 300.0, 450.0))  # size 480, centre (200, 250)
    box_in_crop = torch.tensor([[128.0, 128.0, 64.0]])  # crop centre, a quarter of the crop
    full = box_to_full_image(box_in_crop, transform[None])
    assert torch.allclose(full, torch.tensor([[200.0, 250.0, 120.0]]), atol=1e-4)
    corner = box_to_full_image(torch.tensor([[0.0, 0.0, 256.0]]), transform[None])
    assert torch.allclose(corner, torch.tensor([[200 - 240.0, 250 - 240.0, 480.0]]), atol=1e-4)


def test_projection_into_the_body_crop():
    joints = torch.tensor([[[0.0, 0.0, 5.0], [0.5, -0.25, 0.0]]])
    camera = torch.tensor([[math.log(math.expm1(2.0)), 0.1, 0.0]])  # scale 2, translation (0.1, 0)
    pixels = project_to_body_crop(joints, camera, 256)
    expected = [[(2 * 0.1 * 0.5 + 0.5) * 256, 128.0], [(2 * 0.6 * 0.5 + 0.5) * 256, (2 * -0.25 * 0.5 + 0.5) * 256]]
    assert torch.allclose(pixels[0], torch.tensor(expected), atol=1e-4)


def bilinear_by_hand(image, x, y):
    """Bilinear sample of (C, H, W) at (x, y), zero outside, written out tap by tap."""
    channels, height, width = image.shape
    x0, y0 = math.floor(x), math.floor(y)
    value = np.zeros(channels)
    for xi, yi, weight in [(x0, y0, (x0 + 1 - x) * (y0 + 1 - y)), (x0 + 1, y0, (x - x0) * (y0 + 1 - y)),
                           (x0, y0 + 1, (x0 + 1 - x) * (y - y0)), (x0 + 1, y0 + 1, (x - x0) * (y - y0))]:
        if 0 <= xi < width and 0 <= yi < height:
            value += weight * image[:, yi, xi]
    return value


@pytest.mark.parametrize("mirror", [False, True])
def test_part_crops_against_hand_computed_bilinear_samples(mirror):
    rng = np.random.default_rng(3)
    image = rng.normal(size=(3, 37, 53)).astype(np.float32)
    box = (40.5, 10.25, 30.0)  # cx, cy, S: partly outside the image on the right and top
    n = 9
    crops = sample_part_crops(torch.from_numpy(image)[None], torch.tensor([box]), n, torch.tensor([mirror]))
    for u, v in [(0, 0), (3, 5), (8, 8), (7, 1), (4, 4)]:
        source_u = n - 1 - u if mirror else u
        x = box[0] - box[2] / 2 + box[2] * source_u / (n - 1)
        y = box[1] - box[2] / 2 + box[2] * v / (n - 1)
        np.testing.assert_allclose(crops[0, :, v, u].numpy(), bilinear_by_hand(image, x, y), atol=1e-5)


def test_mirror_is_its_own_inverse_and_mirrors_the_axis_angle():
    rotations = axis_angle_to_matrix(torch.randn(20, 3))
    assert torch.allclose(mirror_rotation(mirror_rotation(rotations)), rotations)
    axis_angle = torch.tensor([[0.3, -0.7, 0.2]])
    mirrored = axis_angle_to_matrix(axis_angle * torch.tensor([1.0, -1.0, -1.0]))  # reflect through x = 0
    assert torch.allclose(mirror_rotation(axis_angle_to_matrix(axis_angle)), mirrored, atol=1e-6)


class FixedBodyNetwork(torch.nn.Module):
    """Stands in for the body network: returns the given parameters whatever the image."""

    def __init__(self, params):
        super().__init__()
        self.params = params

    def forward(self, images):
        return self.params.expand(images.shape[0], -1)


def random_body_params(people: int, seed: int = 0, pose_scale: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    params = torch.zeros(people, layout.BODY_PARAM_SIZE)
    def put(name, rotations):
        params[:, layout.BODY_PARAMS[name]] = matrix_to_rot6d(rotations).reshape(people, -1)
    put("global_orient", axis_angle_to_matrix(torch.tensor([[math.pi, 0, 0]]) + 0.1 * torch.randn(people, 3, generator=generator)))
    put("body_pose", axis_angle_to_matrix(pose_scale * torch.randn(people, 21, 3, generator=generator)))
    put("left_hand_pose", axis_angle_to_matrix(pose_scale * torch.randn(people, 15, 3, generator=generator)))
    put("right_hand_pose", axis_angle_to_matrix(pose_scale * torch.randn(people, 15, 3, generator=generator)))
    put("jaw_pose", axis_angle_to_matrix(0.2 * torch.randn(people, 3, generator=generator)))
    params[:, layout.BODY_PARAMS["betas"]] = torch.randn(people, 10, generator=generator)
    params[:, layout.BODY_PARAMS["expression"]] = torch.randn(people, 10, generator=generator)
    params[:, layout.BODY_PARAMS["camera"]] = torch.tensor([layout.inverse_softplus(1.0), 0.02, 0.1])
    return params


@pytest.fixture(scope="module")
def body_model(synthetic_smplx_path):
    from bodyrt.export.body_model import BodyModel, load_body_model

    return BodyModel(load_body_model(synthetic_smplx_path))


def test_merge_of_the_starts_gives_back_the_body_prediction(body_model):
    """Hand and face networks that return their start exactly must leave the body prediction as it was."""
    params = random_body_params(3)
    stage = BodyStage(FixedBodyNetwork(params), body_model, default_part_means())
    transforms = crop_transform((0, 0, 400, 600))[None].expand(3, 3, 3)
    _, _, hand_starts, face_starts = stage(torch.zeros(3, 3, 256, 256), transforms)
    body = split_body_params(params)
    merged = merge_parts(body, hand_starts, face_starts, body_model.parents)
    for name in ["global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "betas",
                 "expression"]:
        assert torch.allclose(merged[name], body[name], atol=2e-5), name


def test_merge_changes_wrists_fingers_jaw_and_expression_only(body_model):
    params = random_body_params(2, seed=1)
    body = split_body_params(params)
    generator = torch.Generator().manual_seed(5)
    hand_params = torch.randn(2, 2, layout.HAND_PARAM_SIZE, generator=generator)
    face_params = torch.randn(2, 1, layout.FACE_PARAM_SIZE, generator=generator)
    merged = merge_parts(body, hand_params, face_params, body_model.parents)
    assert torch.equal(merged["global_orient"], body["global_orient"])
    assert torch.equal(merged["betas"], body["betas"])
    wrists = [layout.LEFT_WRIST_IN_BODY_POSE, layout.RIGHT_WRIST_IN_BODY_POSE]
    others = [i for i in range(21) if i not in wrists]
    assert torch.equal(merged["body_pose"][:, others], body["body_pose"][:, others])
    for index in wrists:
        assert not torch.allclose(merged["body_pose"][:, index], body["body_pose"][:, index], atol=1e-3)
    for name in ["left_hand_pose", "right_hand_pose", "jaw_pose", "expression"]:
        assert not torch.allclose(merged[name], body[name], atol=1e-3), name
    assert torch.allclose(merged["expression"], face_params[:, 0, layout.FACE_PARAMS["expression"]][:, :10])


def dominant_joint_vertices(body_model_data, joints):
    weights = body_model_data.arrays["weights"]
    return np.flatnonzero(np.isin(weights.argmax(axis=1), joints))


def test_oracle_part_boxes_contain_the_projected_parts(body_model, synthetic_smplx_path):
    """Pose the body with known parameters, project it into an image, and check the attention boxes."""
    from bodyrt.export.body_model import load_body_model

    data = load_body_model(synthetic_smplx_path)
    people = 3
    params = random_body_params(people, seed=2, pose_scale=0.25)
    person_boxes = [(200.0, 40.0, 520.0, 700.0), (700.0, 100.0, 900.0, 500.0), (10.0, 10.0, 300.0, 300.0)]
    transforms = torch.stack([crop_transform(box) for box in person_boxes])
    stage = BodyStage(FixedBodyNetwork(params), body_model, default_part_means())
    with torch.no_grad():
        _, part_boxes, _, _ = stage(torch.zeros(people, 3, 256, 256), transforms)
        body = split_body_params(params)
        vertices, _ = body_model(betas=body["betas"], global_orient=body["global_orient"],
                                 body_pose=body["body_pose"], left_hand_pose=body["left_hand_pose"],
                                 right_hand_pose=body["right_hand_pose"], jaw_pose=body["jaw_pose"],
                                 expression=body["expression"])
        crop_pixels = project_to_body_crop(vertices, body["camera"], 256)
    k = transforms[:, 0, 0][:, None, None]
    image_pixels = (crop_pixels - transforms[:, None, :2, 2]) / k
    parts = {
        0: dominant_joint_vertices(data, [21, *range(40, 55)]),  # right hand
        1: dominant_joint_vertices(data, [20, *range(25, 40)]),  # left hand
        2: dominant_joint_vertices(data, [15, 22, 23, 24]),  # head, jaw, eyes
    }
    for person in range(people):
        for part, vertex_ids in parts.items():
            assert len(vertex_ids) > 20
            cx, cy, size = part_boxes[person, part].tolist()
            points = image_pixels[person, vertex_ids]
            inside = ((points[:, 0] >= cx - size / 2) & (points[:, 0] <= cx + size / 2)
                      & (points[:, 1] >= cy - size / 2) & (points[:, 1] <= cy + size / 2))
            assert bool(inside.all()), (person, part, float(inside.float().mean()))
            # and the box is about the part, not the whole body
            assert size < 0.8 * float((image_pixels[person, :, 1].max() - image_pixels[person, :, 1].min()))
