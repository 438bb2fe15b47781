"""The synthetic body-model generator: deterministic, the official layouts, and a body that reads as a person.

Geometry is checked on the regressed joints (J_regressor @ v_template) and the mesh, with the layout facts
of the official files (REFERENCE.md section 3) and the smplx package's joint names and vertex ids as the
independent references. Units: metres, y up, the body facing +z, its left at +x.
"""

import hashlib

import numpy as np
import pytest
import torch

from bodyrt.errors import BodyModelError
from bodyrt.export.body_model import BodyModel, load_body_model
from bodyrt.export.rotations import axis_angle_to_matrix
from bodyrt.export.fixtures.body_models import (SMPL_JOINT_NAMES, SMPLX_JOINT_NAMES, smpl_arrays, smplx_arrays,
                                     write_smpl_model)

# The official kinematic trees (kintree_table row 0, root as -1), written out by hand.
SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]
SMPL_PARENTS = SMPLX_PARENTS[:22] + [20, 21]
FINGERS = ("index", "middle", "pinky", "ring", "thumb")

SMPLX_LAYOUT = {  # key -> (shape, dtype kind)
    "v_template": ((10475, 3), "f"), "f": ((20908, 3), "i"), "posedirs": ((10475, 3, 486), "f"),
    "J_regressor": ((55, 10475), "f"), "weights": ((10475, 55), "f"), "kintree_table": ((2, 55), "i"),
    "hands_componentsl": ((45, 45), "f"), "hands_componentsr": ((45, 45), "f"),
    "hands_meanl": ((45,), "f"), "hands_meanr": ((45,), "f"),
    "lmk_faces_idx": ((51,), "i"), "lmk_bary_coords": ((51, 3), "f"),
    "dynamic_lmk_faces_idx": ((79, 17), "i"), "dynamic_lmk_bary_coords": ((79, 17, 3), "f"),
}
SMPL_LAYOUT = {
    "v_template": ((6890, 3), "f"), "f": ((13776, 3), "u"), "shapedirs": ((6890, 3, 10), "f"),
    "posedirs": ((6890, 3, 207), "f"), "J_regressor": ((24, 6890), "f"), "weights": ((6890, 24), "f"),
    "kintree_table": ((2, 24), "i"), "J": ((24, 3), "f"),
}


@pytest.fixture(scope="module")
def smplx(synthetic_smplx_path):
    """The session's synthetic SMPLX_NEUTRAL.npz (v1.1, seed 0) as a dict of arrays."""
    with np.load(synthetic_smplx_path) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def smplx_v10():
    return smplx_arrays(seed=1, version="1.0")


@pytest.fixture(scope="module")
def joints(smplx):
    """name -> (3,) rest position of each of the 55 joints, regressed from the template."""
    positions = smplx["J_regressor"] @ smplx["v_template"]
    return dict(zip(SMPLX_JOINT_NAMES, positions))


# ---------------------------------------------------------------------------------------------
# Determinism


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_arrays_and_bytes(smplx_v10, tmp_path):
    regenerated = smplx_arrays(seed=1, version="1.0")
    assert sorted(regenerated) == sorted(smplx_v10)
    for key, array in regenerated.items():
        np.testing.assert_array_equal(array, smplx_v10[key], err_msg=key)
    for fmt in ("pkl", "npz"):
        first = write_smpl_model(tmp_path / "first", seed=5, fmt=fmt)
        second = write_smpl_model(tmp_path / "second", seed=5, fmt=fmt)
        assert digest(first) == digest(second)


def test_different_seeds_differ_in_blend_shapes_only(smplx, smplx_v10):
    np.testing.assert_array_equal(smplx_v10["v_template"], smplx["v_template"])
    np.testing.assert_array_equal(smplx_v10["f"], smplx["f"])
    assert not np.allclose(smplx_v10["posedirs"], smplx["posedirs"])
    assert not np.allclose(smplx_v10["hands_componentsl"], smplx["hands_componentsl"])
    first, second = smpl_arrays(seed=0), smpl_arrays(seed=1)
    np.testing.assert_array_equal(first["v_template"], second["v_template"])
    assert not np.allclose(first["shapedirs"][:, :, 2:], second["shapedirs"][:, :, 2:])
    assert not np.allclose(first["posedirs"], second["posedirs"])


# ---------------------------------------------------------------------------------------------
# Layouts


def check_layout(arrays, layout):
    for key, (shape, kind) in layout.items():
        assert arrays[key].shape == shape, key
        assert arrays[key].dtype.kind == kind, f"{key}: dtype {arrays[key].dtype}"


def test_smplx_layouts_match_the_official_files(smplx, smplx_v10):
    check_layout(smplx, SMPLX_LAYOUT)
    check_layout(smplx_v10, SMPLX_LAYOUT)
    assert set(smplx) == set(SMPLX_LAYOUT) | {"shapedirs"}
    assert smplx["shapedirs"].shape == (10475, 3, 400)  # v1.1: 300 shape + 100 expression
    assert smplx_v10["shapedirs"].shape == (10475, 3, 20)  # v1.0: 10 + 10
    for arrays in (smplx, smplx_v10):
        kintree = arrays["kintree_table"]
        assert kintree[0, 0] == 2**32 - 1  # the root's parent as the official files store it
        assert kintree[0, 1:].tolist() == SMPLX_PARENTS[1:] and kintree[1].tolist() == list(range(55))
    with pytest.raises(BodyModelError, match="unknown version '2.0'"):
        smplx_arrays(version="2.0")


def test_smpl_layout_matches_the_official_file():
    arrays = smpl_arrays(seed=0)
    check_layout(arrays, SMPL_LAYOUT)
    assert arrays["kintree_table"][0, 1:].tolist() == SMPL_PARENTS[1:]
    np.testing.assert_allclose(arrays["J"], arrays["J_regressor"] @ arrays["v_template"])


def test_names_and_vertex_ids_are_those_of_the_smplx_package():
    from smplx.joint_names import JOINT_NAMES
    from smplx.vertex_ids import vertex_ids

    from bodyrt.export.body_model import SMPL_VERTEX_JOINT_IDS, SMPLX_VERTEX_JOINT_IDS, VERTEX_JOINT_NAMES
    from bodyrt.export.fixtures.body_models import SMPL_KEYPOINT_VERTICES, SMPLX_KEYPOINT_VERTICES

    assert [name.replace("_smplhf", "") for name in JOINT_NAMES[:55]] == list(SMPLX_JOINT_NAMES)
    assert JOINT_NAMES[55:76] == list(VERTEX_JOINT_NAMES)
    assert SMPL_JOINT_NAMES == SMPLX_JOINT_NAMES[:22] + ("left_hand", "right_hand")
    assert SMPLX_KEYPOINT_VERTICES == {name: int(index) for name, index in vertex_ids["smplx"].items()}
    assert SMPL_KEYPOINT_VERTICES == {name: int(index) for name, index in vertex_ids["smplh"].items()}
    selector_order = ["nose", "reye", "leye", "rear", "lear", "LBigToe", "LSmallToe", "LHeel", "RBigToe",
                      "RSmallToe", "RHeel", "lthumb", "lindex", "lmiddle", "lring", "lpinky",
                      "rthumb", "rindex", "rmiddle", "rring", "rpinky"]
    assert SMPLX_VERTEX_JOINT_IDS == tuple(vertex_ids["smplx"][name] for name in selector_order)
    assert SMPL_VERTEX_JOINT_IDS == tuple(vertex_ids["smplh"][name] for name in selector_order)


@pytest.mark.parametrize("kind", ["smplx", "smpl"])
def test_mesh_weights_and_regressor_are_well_formed(kind, smplx):
    arrays = smplx if kind == "smplx" else smpl_arrays(seed=0)
    vertices, faces = arrays["v_template"], arrays["f"].astype(np.int64)
    assert faces.min() == 0 and faces.max() == len(vertices) - 1
    assert np.all((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2]))
    assert len(np.unique(faces)) == len(vertices)  # every vertex is used
    areas = 0.5 * np.linalg.norm(np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]],
                                          vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1)
    assert np.all(areas > 0)
    weights, regressor = arrays["weights"], arrays["J_regressor"]
    assert weights.min() >= 0 and np.abs(weights.sum(axis=1) - 1).max() < 1e-12
    assert regressor.min() >= 0 and np.abs(regressor.sum(axis=1) - 1).max() < 1e-12


# ---------------------------------------------------------------------------------------------
# Blend shapes


def test_blend_shapes_are_non_zero_and_placed(smplx, joints):
    vertices = smplx["v_template"]
    shape, expression = smplx["shapedirs"][:, :, :300], smplx["shapedirs"][:, :, 300:]
    assert np.linalg.norm(shape, axis=(0, 1)).min() > 1e-3
    assert np.linalg.norm(expression, axis=(0, 1)).min() > 1e-4
    # Expressions move the face only: nothing below the chin, nothing behind the head's centre.
    moved = np.linalg.norm(expression, axis=(1, 2)) > 0
    assert moved.sum() > 500
    assert vertices[moved, 1].min() > joints["neck"][1] and vertices[moved, 2].min() > joints["head"][2] - 0.02
    # The first shape direction makes the body taller.
    height = np.ptp(vertices[:, 1])
    assert np.ptp((vertices + 2.0 * shape[:, :, 0])[:, 1]) > height + 0.05
    # Every joint but the root has a non-zero pose blend shape, acting around that joint.
    posedirs = smplx["posedirs"].reshape(len(vertices), 3, 54, 9)
    per_joint = np.linalg.norm(posedirs, axis=(1, 3))  # (V, 54)
    assert per_joint.max(axis=0).min() > 0
    left_elbow = SMPLX_JOINT_NAMES.index("left_elbow")
    assert np.all(per_joint[vertices[:, 0] < 0, left_elbow - 1] == 0)  # not on the right half of the body


# ---------------------------------------------------------------------------------------------
# It reads as a person


def test_skeleton_is_a_standing_t_posed_person(joints):
    y = {name: position[1] for name, position in joints.items()}
    for side in ("left", "right"):
        assert y["head"] > y[f"{side}_shoulder"] > y[f"{side}_hip"] > y[f"{side}_knee"] > y[f"{side}_ankle"]
        assert y[f"{side}_ankle"] > y[f"{side}_foot"]
    assert y["head"] > y["neck"] > y["spine3"] > y["spine2"] > y["spine1"] > y["pelvis"]
    assert 1.5 < y["head"] - y["left_foot"] < 2.0  # metres, an adult
    for side, sign in (("left", 1.0), ("right", -1.0)):
        shoulder, elbow, wrist = (joints[f"{side}_{name}"] for name in ("shoulder", "elbow", "wrist"))
        assert sign * wrist[0] > sign * elbow[0] > sign * shoulder[0] > 0.1  # arms spread sideways
        assert abs(wrist[1] - shoulder[1]) < 0.05 and sign * (wrist[0] - shoulder[0]) > 0.4
        assert sign * joints[f"{side}_hip"][0] > 0.03 and sign * joints[f"{side}_eye"][0] > 0.01
        assert joints[f"{side}_foot"][2] > joints[f"{side}_ankle"][2]  # feet point forward
        np.testing.assert_allclose(joints[f"{side}_wrist"] * [sign, 1, 1], joints["left_wrist"], atol=1e-3)


def test_hands_end_the_arms_with_five_finger_chains(joints, smplx):
    from smplx.vertex_ids import vertex_ids

    for side, sign in (("left", 1.0), ("right", -1.0)):
        wrist, elbow = joints[f"{side}_wrist"], joints[f"{side}_elbow"]
        forearm = (wrist - elbow) / np.linalg.norm(wrist - elbow)
        bases, tips = [], []
        for finger in FINGERS:
            chain = [wrist] + [joints[f"{side}_{finger}{k}"] for k in (1, 2, 3)]
            tip = smplx["v_template"][vertex_ids["smplx"][side[0] + finger]]
            chain.append(tip)
            steps = np.diff(np.array(chain), axis=0)
            lengths = np.linalg.norm(steps, axis=1)
            assert np.all(lengths > 0.01) and lengths[1:].sum() < 0.12, f"{side} {finger}: {lengths}"
            assert np.all(steps[1:] @ forearm > 0), f"{side} {finger} does not point away from the wrist"
            bases.append(chain[1])
            tips.append(tip)
        bases, tips = np.array(bases), np.array(tips)
        separation = np.linalg.norm(bases[:, None] - bases[None], axis=-1) + np.eye(5)
        assert separation.min() > 0.01  # five distinct chains
        assert np.all(sign * (tips[:, 0] - wrist[0]) > 0.05)  # tips beyond the wrist
        thumb = FINGERS.index("thumb")
        assert tips[thumb, 2] == tips[:, 2].max()  # the thumb is in front of the palm (palms down)


def test_head_face_and_jaw(joints, smplx):
    from smplx.vertex_ids import vertex_ids

    vertices = smplx["v_template"]
    ids = vertex_ids["smplx"]
    nose, left_ear, right_ear = vertices[ids["nose"]], vertices[ids["lear"]], vertices[ids["rear"]]
    head, neck, jaw = joints["head"], joints["neck"], joints["jaw"]
    assert vertices[:, 1].max() > nose[1] > neck[1]
    assert nose[2] > head[2] + 0.08 and abs(nose[0]) < 0.01  # the nose sticks out in front, on the midline
    assert left_ear[0] > 0.06 and right_ear[0] < -0.06 and abs(left_ear[1] - nose[1]) < 0.05
    for side in ("left", "right"):
        assert vertices[ids[side[0] + "eye"], 2] > head[2] + 0.05
        assert nose[1] < joints[f"{side}_eye"][1] < vertices[:, 1].max()
    # The jaw joint: in the head, below the eyes, above the neck and the chin; the jaw carries the chin.
    assert neck[1] < jaw[1] < joints["left_eye"][1] and jaw[2] > head[2]
    jaw_vertices = vertices[smplx["weights"][:, SMPLX_JOINT_NAMES.index("jaw")] > 0.5]
    assert len(jaw_vertices) > 50
    assert jaw_vertices[:, 1].max() < jaw[1] and jaw_vertices[:, 2].min() > head[2]
    assert jaw_vertices[:, 1].min() < nose[1] - 0.05


def test_face_landmarks_lie_on_the_face(smplx, joints):
    vertices, faces = smplx["v_template"], smplx["f"].astype(np.int64)
    barycentric = smplx["lmk_bary_coords"]
    assert barycentric.min() > 0 and np.abs(barycentric.sum(axis=1) - 1).max() < 1e-9
    landmarks = np.einsum("lk,lkd->ld", barycentric, vertices[faces[smplx["lmk_faces_idx"]]])
    assert np.all(landmarks[:, 2] > joints["head"][2] + 0.03)  # all on the front of the head
    brows, bridge, right_eye, left_eye, mouth = (landmarks[0:10], landmarks[10:14], landmarks[19:25],
                                                 landmarks[25:31], landmarks[31:51])
    assert np.all(np.diff(bridge[:, 1]) < 0) and np.abs(bridge[:, 0]).max() < 0.005
    assert right_eye[:, 0].max() < 0 < left_eye[:, 0].min()
    assert brows[:, 1].min() > left_eye[:, 1].max() > mouth[:, 1].max()
    # The contour for a frontal head runs from the right ear round the chin to the left ear.
    contour = np.einsum("ck,ckd->cd", smplx["dynamic_lmk_bary_coords"][0],
                        vertices[faces[smplx["dynamic_lmk_faces_idx"][0]]])
    assert np.all(np.diff(contour[:, 0]) > 0)
    assert contour[8, 1] == contour[:, 1].min() and contour[8, 1] < mouth[:, 1].min()


def test_skinning_weights_follow_the_nearest_bone(smplx, joints):
    """Around the middle of each limb bone, the vertices belong to that bone's joint.

    Bones run from a joint to its child's rest position. The palm bones (wrist to each finger base) only
    compete for the nearest vertices; the palm blends the wrist and the finger bases on purpose.
    """
    vertices, weights = smplx["v_template"], smplx["weights"]
    tested = [("neck", "head")]  # the torso blends spine, collars and neck on purpose: not tested
    palm = []
    for side in ("left", "right"):
        tested += [(f"{side}_shoulder", f"{side}_elbow"), (f"{side}_elbow", f"{side}_wrist"),
                   (f"{side}_hip", f"{side}_knee"), (f"{side}_knee", f"{side}_ankle")]
        tested += [(f"{side}_{finger}{k}", f"{side}_{finger}{k + 1}") for finger in FINGERS for k in (1, 2)]
        palm += [(f"{side}_wrist", f"{side}_{finger}1") for finger in FINGERS]
    distances, along = [], []
    for start, end in tested + palm:
        a, b = joints[start], joints[end]
        t = np.clip((vertices - a) @ (b - a) / np.dot(b - a, b - a), 0.0, 1.0)
        distances.append(np.linalg.norm(vertices - (a + t[:, None] * (b - a)), axis=1))
        along.append(t)
    distances, along = np.array(distances), np.array(along)
    nearest = distances.argmin(axis=0)
    for index, (start, _) in enumerate(tested):
        middle = (nearest == index) & (along[index] > 0.3) & (along[index] < 0.7) & (distances[index] < 0.1)
        assert middle.sum() >= 8, start
        own = weights[middle, SMPLX_JOINT_NAMES.index(start)]
        assert np.median(own) > 0.9, f"{start}: median own weight {np.median(own):.2f}"
        # Where fingers touch at their bases a vertex may go to the neighbouring finger; nowhere else.
        assert np.mean(own > 0.5) > 0.85, f"{start}: {np.mean(own > 0.5):.0%} of its vertices carried by it"


def test_elbow_bend_moves_the_forearm_only(synthetic_smplx_path, smplx, joints):
    model = BodyModel(load_body_model(synthetic_smplx_path))
    left_elbow = SMPLX_JOINT_NAMES.index("left_elbow")
    bend = torch.zeros(1, 21, 3)
    bend[0, left_elbow - 1] = torch.tensor([0.0, -np.pi / 2, 0.0])  # forearm swings forward (+z)
    eye = torch.eye(3)[None]
    with torch.no_grad():
        rest, rest_joints = model(torch.zeros(1, 10), eye, torch.eye(3).repeat(1, 21, 1, 1))
        bent, bent_joints = model(torch.zeros(1, 10), eye, axis_angle_to_matrix(bend))
    displacement = np.linalg.norm((bent - rest)[0].numpy(), axis=1)
    weights, vertices = smplx["weights"], smplx["v_template"]
    forearm = weights[:, left_elbow] > 0.9
    assert forearm.sum() > 100 and np.median(displacement[forearm]) > 0.05
    right_arm = vertices[:, 0] < -0.15
    assert displacement[right_arm].max() == 0
    # The upper arm moves by the elbow's pose-corrective blend shapes only: millimetres, fading away from it.
    elbow_x = joints["left_elbow"][0]
    upper_arm = weights[:, SMPLX_JOINT_NAMES.index("left_shoulder")] > 0.99
    far, near = upper_arm & (vertices[:, 0] < elbow_x - 0.13), upper_arm & (vertices[:, 0] > elbow_x - 0.09)
    assert far.sum() > 10 and near.sum() > 10
    assert displacement[far].max() < 0.01 and np.median(displacement[far]) < np.median(displacement[near]) < 0.03
    # The hand follows: the wrist turns about the elbow by a quarter turn, to the front.
    elbow, wrist = rest_joints[0, left_elbow].numpy(), rest_joints[0, left_elbow + 2].numpy()
    radius = np.linalg.norm(wrist - elbow)
    np.testing.assert_allclose(bent_joints[0, left_elbow + 2].numpy(), elbow + [0.0, 0.0, radius], atol=0.02)
