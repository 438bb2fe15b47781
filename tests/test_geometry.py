"""Coordinates of `bodyrt run`'s outputs: the full-image camera, placed meshes, 2D joints, the y-up
files, and smplx-ready parameters checked against the smplx package (an independent implementation).
"""

import json
import warnings

import numpy as np
import pytest

from bodyrt.cli import main
from bodyrt.geometry import full_image_camera, matrix_to_axis_angle, project, smplx_parameters, to_coords
from bodyrt.overlay import project_to_image
from bodyrt.runtime.outputs import read_ply

CROP = 256


def crop_transform(box):
    """The body crop transform of a box, as the reference computes it (REFERENCE.md, body crop)."""
    x0, y0, x1, y1 = box
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    size = 1.2 * max(x1 - x0, y1 - y0)
    transform = np.eye(3)
    transform[0, 0] = transform[1, 1] = CROP / size
    transform[:2, 2] = CROP * (0.5 - centre / size)
    return transform


def test_axis_angle_agrees_with_scipy_also_at_a_half_turn():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 3))
    vectors *= rng.uniform(0, np.pi, (500, 1)) / np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[:4] = [[np.pi, 0, 0], [0, 0, 0], [0, np.pi - 1e-7, 0], [1e-9, 0, 0]]
    matrices = Rotation.from_rotvec(vectors).as_matrix()
    ours = matrix_to_axis_angle(matrices)
    np.testing.assert_allclose(Rotation.from_rotvec(ours).as_matrix(), matrices, atol=1e-12)
    assert np.all(np.linalg.norm(ours, axis=1) <= np.pi + 1e-12)


def test_a_flat_mesh_projects_exactly_where_the_weak_perspective_camera_draws_it():
    """Hand-computed: for z = 0 the pinhole camera with the full-image translation and the network's
    weak-perspective camera (through the body crop, as the overlay draws it) agree to rounding."""
    image_size = (720, 1280)
    box = (700.0, 100.0, 900.0, 650.0)
    scale, translation = 0.9, np.array([0.05, -0.1])
    rng = np.random.default_rng(1)
    flat = np.concatenate([rng.uniform(-0.5, 0.5, (50, 2)), np.zeros((50, 1))], axis=1)
    camera = full_image_camera(scale, translation, crop_transform(box), 5000.0, image_size, CROP)
    size = 1.2 * 550
    assert camera["transl"][2] == pytest.approx(2 * 5000 / (scale * size))  # ExPose's depth
    expected_xy = translation + 2 * (np.array([800.0, 375.0]) - np.array([640.0, 360.0])) / (scale * size)
    np.testing.assert_allclose(camera["transl"][:2], expected_xy, rtol=1e-12)
    np.testing.assert_allclose(camera["camera_intrinsics"], [[5000, 0, 640], [0, 5000, 360], [0, 0, 1]])
    pinhole = project(flat + camera["transl"], camera["camera_intrinsics"])
    weak = project_to_image(flat, scale, translation, crop_transform(box), CROP)
    np.testing.assert_allclose(pinhole, weak, atol=1e-6)
    by_hand = np.array([800.0, 375.0]) + scale * size / 2 * (flat[:, :2] + translation)
    np.testing.assert_allclose(pinhole, by_hand, atol=1e-6)


def test_two_people_of_one_photo_are_placed_where_their_boxes_are():
    """A body 1.7 m tall fitted to each box (as a perfect network would) lands inside its box after
    placement and perspective projection, and the smaller box is the farther person."""
    rng = np.random.default_rng(2)
    body = np.concatenate([rng.uniform(-0.25, 0.25, (400, 1)), rng.uniform(-0.85, 0.85, (400, 1)),
                           rng.uniform(-0.15, 0.15, (400, 1))], axis=1)
    image_size = (720, 1280)
    boxes = [(100.0, 80.0, 400.0, 680.0), (900.0, 300.0, 1050.0, 600.0)]
    placed = []
    for box in boxes:
        height = box[3] - box[1]
        scale = 2 / (1.2 * 1.7)  # the body's 1.7 m spans the box height: s * 1.7 / 2 * S = height, S = 1.2 height
        camera = full_image_camera(scale, np.zeros(2), crop_transform(box), 5000.0, image_size, CROP)
        points = project(body + camera["transl"], camera["camera_intrinsics"])
        margin = 0.02 * height
        assert points[:, 0].min() > box[0] - margin and points[:, 0].max() < box[2] + margin
        assert points[:, 1].min() > box[1] - margin and points[:, 1].max() < box[3] + margin
        assert points[:, 1].max() - points[:, 1].min() > 0.95 * height
        placed.append(body + camera["transl"])
    assert placed[1][:, 2].mean() == pytest.approx(2 * placed[0][:, 2].mean(), rel=1e-3)  # box half as tall
    assert placed[0][:, 0].mean() < 0 < placed[1][:, 0].mean()  # left of the camera axis, right of it


def test_yup_is_a_half_turn_that_keeps_triangles_facing_the_camera():
    triangle = np.array([[0.0, 0.0, 5.0], [0.0, 1.0, 5.0], [1.0, 0.0, 5.0]])  # camera frame, in front
    normal = np.cross(triangle[1] - triangle[0], triangle[2] - triangle[0])
    assert normal[2] < 0  # faces the camera (which looks along +z)
    turned = to_coords(triangle, "yup")
    np.testing.assert_array_equal(turned, triangle * [1, -1, -1])
    turned_normal = np.cross(turned[1] - turned[0], turned[2] - turned[0])
    assert turned[0, 2] < 0 and turned_normal[2] > 0  # still in front (-z) and facing the camera at the origin


def test_smplx_parameters_of_identity_rotations_are_zero_and_complete():
    eye = np.eye(3)
    person = {"global_orient": eye, "body_pose": np.tile(eye, (21, 1, 1)), "left_hand_pose": np.tile(eye, (15, 1, 1)),
              "right_hand_pose": np.tile(eye, (15, 1, 1)), "jaw_pose": eye, "betas": np.ones(10),
              "expression": np.zeros(10), "transl": np.array([1.0, 2.0, 3.0])}
    parameters = smplx_parameters(person)
    shapes = {name: value.shape for name, value in parameters.items()}
    assert shapes == {"global_orient": (1, 3), "body_pose": (1, 63), "jaw_pose": (1, 3), "leye_pose": (1, 3),
                      "reye_pose": (1, 3), "left_hand_pose": (1, 45), "right_hand_pose": (1, 45),
                      "full_pose": (1, 165), "betas": (1, 10), "expression": (1, 10), "transl": (1, 3)}
    assert not parameters["full_pose"].any()


# -- the real pipeline -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_people_run(bundle_dir, demo_files, tmp_path_factory):
    """The demo bundle on a synthetic photo with two boxes; default options (y-up meshes)."""
    from bodyrt.export.fixtures.scenes import sample_scene
    from bodyrt.images import save_png

    folder = tmp_path_factory.mktemp("two-people")
    image, box = sample_scene(demo_files[1], size=(360, 640))
    save_png(folder / "scene.png", image)
    boxes = [box[0].tolist(), [420.0, 60.0, 560.0, 330.0]]
    (folder / "boxes.json").write_text(json.dumps({"scene.png": boxes}))
    out = folder / "out"
    assert main(["run", "--bundle", str(bundle_dir), str(folder / "scene.png"), "--boxes", str(folder / "boxes.json"),
                 "--out", str(out)]) == 0
    return out / "scene.png", boxes, image.shape[:2]


def test_smplx_package_reproduces_bodyrts_vertices_from_the_saved_parameters(two_people_run, demo_files):
    import smplx

    folder, _, _ = two_people_run
    for person in (0, 1):
        params = np.load(folder / f"person{person}_params.npz")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = smplx.SMPLX(str(demo_files[1]), use_pca=False, flat_hand_mean=True, use_face_contour=True,
                                **params)
        output = model(return_full_pose=True)
        placed = params["vertices"] + params["transl"]
        assert np.abs(output.vertices[0].detach().numpy() - placed).max() < 1e-5
        assert np.abs(output.joints[0].detach().numpy() - (params["joints"] + params["transl"])).max() < 1e-5
        np.testing.assert_allclose(output.full_pose.detach().numpy(), params["full_pose"], atol=1e-6)
        assert params["global_orient_rotmat"].shape == (3, 3) and params["body_pose_rotmat"].shape == (21, 3, 3)


def test_2d_joints_are_the_placed_joints_through_the_full_image_camera(two_people_run):
    folder, boxes, (height, width) = two_people_run
    for person, box in enumerate(boxes):
        params = np.load(folder / f"person{person}_params.npz")
        focal = float(params["focal_length"])
        intrinsics = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
        np.testing.assert_allclose(params["camera_intrinsics"], intrinsics)
        placed = params["joints"].astype(np.float64) + params["transl"][0]
        by_hand = placed[:, :2] / placed[:, 2:] * focal + [width / 2, height / 2]
        np.testing.assert_allclose(params["joints_2d"], by_hand, atol=1e-3)
        # and they sit where the weak-perspective camera puts them, within the perspective effect
        weak = project_to_image(params["joints"], float(params["camera_scale"]), params["camera_translation"],
                                params["crop_transforms"], CROP)
        box_size = max(box[2] - box[0], box[3] - box[1])
        assert np.abs(params["joints_2d"] - weak).max() < 0.05 * box_size


def test_meshes_are_placed_y_up_by_default_and_in_the_camera_frame_on_request(two_people_run, bundle_dir, tmp_path):
    folder, boxes, _ = two_people_run
    params = np.load(folder / "person1_params.npz")
    placed = params["vertices"] + params["transl"]
    vertices, faces = read_ply(folder / "person1.ply")
    np.testing.assert_allclose(vertices, placed * [1, -1, -1], atol=1e-5)
    obj = [line.split() for line in (folder / "person1.obj").read_text().splitlines() if line.startswith("v ")]
    np.testing.assert_allclose(np.array(obj)[:, 1:].astype(float), placed * [1, -1, -1], atol=2e-6)
    first, _ = read_ply(folder / "person0.ply")
    assert first[:, 0].mean() < vertices[:, 0].mean()  # the left box's person is left of the right box's
    code = main(["run", "--bundle", str(bundle_dir), str(folder.parent.parent / "scene.png"), "--box",
                 *map(str, boxes[1]), "--coords", "camera", "--overlay", "off", "--out", str(tmp_path / "camera")])
    assert code == 0
    camera_vertices, _ = read_ply(tmp_path / "camera/scene.png/person0.ply")
    np.testing.assert_allclose(camera_vertices, placed, atol=3e-5)  # alone in its batch now
    assert not (tmp_path / "camera/scene.png/overlay.png").exists()
    summary = json.loads(next((tmp_path / "camera").glob("summary-*.json")).read_text())
    assert summary["coords"] == "camera"
