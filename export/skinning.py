"""The SMPL / SMPL-X skinning steps as pure functions, one per step of the paper's formula.

Shape and expression blend shapes, pose blend shapes from (R - I), the rigid transform chain along
the kinematic tree, linear blend skinning, barycentric landmarks and the dynamic face-contour bin.
The tree is a Python list and nothing uses einsum, so both torch ONNX exporters take them as they
are. The model files are read by bodyrt.export.body_model, which chains these steps in BodyModel.
"""

import math

import torch

from bodyrt.export.rotations import joint_order_after_levels, take_joints, tree_levels

NUM_CONTOUR_BINS = 79  # rows of dynamic_lmk_*: yaw 0..39 degrees, then -1..-39, the last also < -39
MAX_CONTOUR_YAW_DEGREES = 39


# ---------------------------------------------------------------------------------------------
# The skinning steps, as pure functions. N = batch, V = vertices (or a subset), J = skeleton joints,
# C = shape + expression coefficients.

def blend_shapes(coefficients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """(N, C) coefficients, (C, V * 3) directions -> (N, V, 3) offsets."""
    return (coefficients @ directions).reshape(coefficients.shape[0], -1, 3)


def pose_features(rotations: torch.Tensor) -> torch.Tensor:
    """(N, J, 3, 3) local rotations -> (N, 9 (J - 1)): R - I of every joint but the root, row-major."""
    identity = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - identity).reshape(rotations.shape[0], -1)


def rigid_transform_chain(rotations: torch.Tensor, rest_joints: torch.Tensor, parents: list):
    """Pose the skeleton along the kinematic tree, one tree level at a time.

    rotations (N, J, 3, 3) local; rest_joints (N, J, 3) shaped rest positions; parents Python list.
    Returns (global_rotations (N, J, 3, 3), posed_joints (N, J, 3), skinning_translations (N, J, 3))
    where a rest point x bound to joint j moves to global_rotations[j] @ x + skinning_translations[j].
    G_j = G_parent @ R_j and P_j = G_parent @ (rest_j - rest_parent) + P_parent, for all the joints
    of a level at once.
    """
    levels = tree_levels(parents)
    rotated = [take_joints(rotations, levels[0])]
    positions = [take_joints(rest_joints, levels[0])]
    for previous, level in zip(levels, levels[1:]):
        parents_in_previous = [previous.index(parents[joint]) for joint in level]
        parent_rotations = take_joints(rotated[-1], parents_in_previous)
        bones = take_joints(rest_joints, level) - take_joints(rest_joints, [parents[joint] for joint in level])
        parent_positions = take_joints(positions[-1], parents_in_previous)
        positions.append((parent_rotations @ bones[..., None])[..., 0] + parent_positions)
        rotated.append(parent_rotations @ take_joints(rotations, level))
    joint_order = joint_order_after_levels(levels)
    global_rotation = take_joints(torch.cat(rotated, dim=1), joint_order)
    posed_joints = take_joints(torch.cat(positions, dim=1), joint_order)
    translations = posed_joints - (global_rotation @ rest_joints[..., None])[..., 0]
    return global_rotation, posed_joints, translations


def skin(points: torch.Tensor, weights: torch.Tensor, joint_rotations: torch.Tensor,
         joint_translations: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning.

    points (N, V, 3) rest pose with blend shapes; weights (V, J); joint_rotations (N, J, 3, 3);
    joint_translations (N, J, 3). Returns (N, V, 3): (sum_j w_vj [R_j | t_j]) applied to each point.
    """
    n, joints = joint_rotations.shape[0], joint_rotations.shape[1]
    per_joint = torch.cat([joint_rotations.reshape(n, joints, 9), joint_translations], dim=2)  # (N, J, 12)
    per_point = weights @ per_joint  # (N, V, 12)
    rotation = per_point[..., :9].reshape(n, -1, 3, 3)
    return (rotation * points[:, :, None, :]).sum(dim=-1) + per_point[..., 9:]


def barycentric_points(points: torch.Tensor, corner_ids: torch.Tensor, barycentric: torch.Tensor) -> torch.Tensor:
    """points (N, V, 3); corner_ids (L, 3) int64 rows of `points`; barycentric (L, 3) -> (N, L, 3)."""
    corners = points[:, corner_ids.reshape(-1)].reshape(points.shape[0], -1, 3, 3)  # (N, L, corner, xyz)
    return (corners * barycentric[None, :, :, None]).sum(dim=2)


def contour_bin_one_hot(neck_rotation: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) model-space neck rotation -> (N, 79) one-hot row of the dynamic-landmark tables.

    As smplx does it: yaw = atan2(-R20, sqrt(R00^2 + R10^2)) in degrees, negated, rounded (half
    to even) after clamping to at most 39; rows 0..39 hold yaw 0..39, rows 40..78 hold yaw -1..-39
    and row 78 also every yaw below -39. A one-hot row instead of an index keeps the export free of
    data-dependent indexing.
    """
    r = neck_rotation
    yaw = torch.atan2(-r[:, 2, 0], torch.sqrt(r[:, 0, 0] * r[:, 0, 0] + r[:, 1, 0] * r[:, 1, 0]))
    degrees = torch.round(torch.clamp(-yaw * 180.0 / math.pi, max=float(MAX_CONTOUR_YAW_DEGREES)))
    last = float(NUM_CONTOUR_BINS - 1)
    row = torch.where(degrees < 0, torch.where(degrees < -MAX_CONTOUR_YAW_DEGREES, last,
                                               MAX_CONTOUR_YAW_DEGREES - degrees), degrees)
    bins = torch.arange(NUM_CONTOUR_BINS, dtype=r.dtype, device=r.device)
    return (row[:, None] == bins).to(r.dtype)
