"""Rotation helpers against independent references: scipy's Rotation and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from bodyrt.errors import InputError
from bodyrt.export.rotations import (MIRROR_NEGATED_ENTRIES, axis_angle_to_matrix, global_rotations,
                                     matrix_to_axis_angle, matrix_to_quaternion, matrix_to_rot6d,
                                     mirror_rotation, rot6d_to_matrix, tree_levels)

# The official SMPL-X kinematic tree (kintree_table row 0, root as -1), written out by hand.
SMPLX_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]
MIRROR = np.diag([-1.0, 1.0, 1.0])  # the x -> -x reflection that swaps left and right


def random_rotvecs(count, seed, max_angle=math.pi - 1e-3):
    """(count, 3) float64 axis-angle vectors with uniform axes and angles in [0, max_angle]."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return axes * rng.uniform(0.0, max_angle, size=(count, 1))


def as_tensor(array):
    return torch.as_tensor(np.asarray(array), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# 6D representation


def test_rot6d_encoding_is_the_first_two_columns_row_major():
    quarter_turn_about_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    encoded = matrix_to_rot6d(as_tensor(quarter_turn_about_z))
    assert encoded.tolist() == [0.0, -1.0, 1.0, 0.0, 0.0, 0.0]
    assert torch.equal(rot6d_to_matrix(as_tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])), torch.eye(3))


def test_rot6d_round_trip_of_rotation_matrices():
    matrices = Rotation.from_rotvec(random_rotvecs(500, seed=1)).as_matrix()
    decoded = rot6d_to_matrix(matrix_to_rot6d(as_tensor(matrices)))
    assert decoded.shape == (500, 3, 3)
    np.testing.assert_allclose(decoded.numpy(), matrices, atol=1e-6)


def test_rot6d_decodes_any_six_numbers_to_a_rotation_by_gram_schmidt():
    raw = torch.randn(400, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    matrices = rot6d_to_matrix(raw)
    np.testing.assert_allclose((matrices.transpose(1, 2) @ matrices).numpy(), np.broadcast_to(np.eye(3), (400, 3, 3)),
                               atol=1e-12)
    np.testing.assert_allclose(torch.linalg.det(matrices).numpy(), 1.0, atol=1e-12)
    columns = raw.reshape(-1, 3, 2).numpy()
    first = columns[:, :, 0] / np.linalg.norm(columns[:, :, 0], axis=1, keepdims=True)
    np.testing.assert_allclose(matrices[:, :, 0].numpy(), first, atol=1e-12)
    # The second column stays in the plane of the two input columns, on the same side as the input.
    normal = np.cross(columns[:, :, 0], columns[:, :, 1])
    np.testing.assert_allclose(np.sum(matrices[:, :, 1].numpy() * normal, axis=1), 0.0, atol=1e-9)
    assert np.all(np.sum(matrices[:, :, 1].numpy() * columns[:, :, 1], axis=1) > 0)
    # Decoding is idempotent through the encoding.
    np.testing.assert_allclose(rot6d_to_matrix(matrix_to_rot6d(matrices)).numpy(), matrices.numpy(), atol=1e-12)


def test_rot6d_keeps_leading_axes():
    raw = torch.randn(2, 5, 7, 6, generator=torch.Generator().manual_seed(3))
    matrices = rot6d_to_matrix(raw)
    assert matrices.shape == (2, 5, 7, 3, 3)
    assert matrix_to_rot6d(matrices).shape == (2, 5, 7, 6)
    assert torch.allclose(matrices[1, 3, 2], rot6d_to_matrix(raw[1, 3, 2]))


# ---------------------------------------------------------------------------------------------
# Axis-angle and quaternions


def test_axis_angle_hand_computed_cases():
    quarter_about_z = axis_angle_to_matrix(as_tensor([0.0, 0.0, math.pi / 2]))
    np.testing.assert_allclose(quarter_about_z.numpy(), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-7)
    half_about_x = axis_angle_to_matrix(as_tensor([math.pi, 0.0, 0.0]))
    np.testing.assert_allclose(half_about_x.numpy(), np.diag([1.0, -1.0, -1.0]), atol=1e-6)
    assert torch.equal(axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))
    # A third of a turn about (1, 1, 1) permutes the axes: x -> y -> z -> x.
    third = axis_angle_to_matrix(as_tensor(np.full(3, 2 * math.pi / 3 / math.sqrt(3))))
    np.testing.assert_allclose(third.numpy(), [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-6)


@pytest.mark.parametrize("max_angle", [math.pi, 1e-3, 1e-6])
def test_axis_angle_to_matrix_matches_scipy(max_angle):
    rotvecs = random_rotvecs(1000, seed=4, max_angle=max_angle)
    expected = Rotation.from_rotvec(rotvecs).as_matrix()
    np.testing.assert_allclose(axis_angle_to_matrix(as_tensor(rotvecs)).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(axis_angle_to_matrix(torch.as_tensor(rotvecs)).numpy(), expected, atol=1e-12)


def test_axis_angle_gradient_is_finite_at_zero():
    rotvec = torch.zeros(4, 3, requires_grad=True)
    axis_angle_to_matrix(rotvec).sum().backward()
    assert torch.isfinite(rotvec.grad).all()
    # d R / d v at v = 0 is skew(e_k): sum of its entries is 0 for every k.
    assert torch.allclose(rotvec.grad, torch.zeros(4, 3))


def test_matrix_to_axis_angle_matches_scipy():
    rotvecs = random_rotvecs(1000, seed=5, max_angle=math.pi - 0.05)
    matrices = Rotation.from_rotvec(rotvecs).as_matrix()
    np.testing.assert_allclose(matrix_to_axis_angle(torch.as_tensor(matrices)).numpy(), rotvecs, atol=1e-9)
    np.testing.assert_allclose(matrix_to_axis_angle(as_tensor(matrices)).numpy(), rotvecs, atol=2e-5)


def test_matrix_to_axis_angle_near_zero_and_at_half_turn():
    tiny = np.array([[1e-7, -2e-7, 3e-7], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(matrix_to_axis_angle(torch.as_tensor(Rotation.from_rotvec(tiny).as_matrix())).numpy(),
                               tiny, atol=1e-12)
    axes = random_rotvecs(50, seed=6)
    half_turns = axes / np.linalg.norm(axes, axis=1, keepdims=True) * math.pi
    matrices = torch.as_tensor(Rotation.from_rotvec(half_turns).as_matrix())
    recovered = matrix_to_axis_angle(matrices)
    np.testing.assert_allclose(torch.linalg.norm(recovered, dim=1).numpy(), math.pi, atol=1e-7)
    np.testing.assert_allclose(axis_angle_to_matrix(recovered).numpy(), matrices.numpy(), atol=1e-7)


def test_matrix_to_quaternion_matches_scipy_with_non_negative_w():
    rotations = Rotation.from_rotvec(random_rotvecs(1000, seed=7, max_angle=math.pi))
    x, y, z, w = rotations.as_quat().T  # scipy is scalar-last
    expected = np.stack([w, x, y, z], axis=1) * np.sign(w + (w == 0))[:, None]
    quaternions = matrix_to_quaternion(torch.as_tensor(rotations.as_matrix())).numpy()
    np.testing.assert_allclose(quaternions, expected, atol=1e-9)
    assert np.all(quaternions[:, 0] >= 0)


# ---------------------------------------------------------------------------------------------
# Mirroring


def test_mirror_negates_the_reference_entries():
    assert MIRROR_NEGATED_ENTRIES == (1, 2, 3, 6)
    matrix = torch.arange(1.0, 10.0).reshape(3, 3)
    assert mirror_rotation(matrix).reshape(9).tolist() == [1, -2, -3, -4, 5, 6, -7, 8, 9]


def test_mirror_is_the_reflection_conjugate():
    matrices = Rotation.from_rotvec(random_rotvecs(200, seed=8)).as_matrix()
    mirrored = mirror_rotation(torch.as_tensor(matrices)).numpy()
    np.testing.assert_allclose(mirrored, MIRROR @ matrices @ MIRROR, atol=0)
    np.testing.assert_allclose(mirror_rotation(torch.as_tensor(mirrored)).numpy(), matrices, atol=0)
    np.testing.assert_allclose(np.linalg.det(mirrored), 1.0, atol=1e-12)


def test_mirror_semantics():
    rotvecs = random_rotvecs(200, seed=9)
    matrices = torch.as_tensor(Rotation.from_rotvec(rotvecs).as_matrix())
    mirrored = mirror_rotation(matrices)
    # The mirrored rotation turns about the mirrored axis the other way: axis-angle (x, -y, -z).
    np.testing.assert_allclose(matrix_to_axis_angle(mirrored).numpy(), rotvecs * [1.0, -1.0, -1.0], atol=1e-9)
    # Rotating a mirrored point by the mirrored rotation gives the mirror image of the rotated point.
    points = np.random.default_rng(10).normal(size=(200, 3))
    rotated = np.einsum("nij,nj->ni", matrices.numpy(), points)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", mirrored.numpy(), points @ MIRROR), rotated @ MIRROR,
                               atol=1e-12)
    # Mirroring commutes with composing rotations, so mirroring each joint mirrors a whole chain.
    a, b = matrices[:100], matrices[100:]
    np.testing.assert_allclose(mirror_rotation(a @ b).numpy(), (mirror_rotation(a) @ mirror_rotation(b)).numpy(),
                               atol=1e-12)


# ---------------------------------------------------------------------------------------------
# The kinematic chain


def test_tree_levels_of_smplx():
    levels = tree_levels(SMPLX_PARENTS)
    assert levels[0] == [0] and len(levels) == 11
    assert sorted(joint for level in levels for joint in level) == list(range(55))
    for previous, level in zip(levels, levels[1:]):
        assert all(SMPLX_PARENTS[joint] in previous for joint in level)
    assert tree_levels([-1, 0, 1, 0, 3, 2]) == [[0], [1, 3], [2, 4], [5]]


def test_global_rotations_matches_a_joint_by_joint_chain():
    local = Rotation.from_rotvec(random_rotvecs(3 * 55, seed=11)).as_matrix().reshape(3, 55, 3, 3)
    expected = np.zeros_like(local)
    for joint, parent in enumerate(SMPLX_PARENTS):
        expected[:, joint] = local[:, joint] if parent < 0 else expected[:, parent] @ local[:, joint]
    result = global_rotations(torch.as_tensor(local), SMPLX_PARENTS)
    np.testing.assert_allclose(result.numpy(), expected, atol=1e-12)
    # The wrists of the 22-joint body alone, as the hand starts use them.
    np.testing.assert_allclose(global_rotations(torch.as_tensor(local[:, :22]), SMPLX_PARENTS[:22]).numpy(),
                               expected[:, :22], atol=1e-12)


def test_global_rotations_rejects_a_parent_list_of_the_wrong_length():
    with pytest.raises(InputError, match=r"54 parents .*\(2, 55, 3, 3\); expected \(N, 54, 3, 3\)"):
        global_rotations(torch.eye(3).expand(2, 55, 3, 3), SMPLX_PARENTS[:54])
