"""Rotation conversions and the kinematic chain, as plain torch functions that export to ONNX.

Every function works on any number of leading axes (the chain functions on (N, J, ...)) and uses
only elementwise math, matmul, slices and gathers with constant indices and `torch.where`: no
einsum, no data-dependent shapes, no `torch.cross`, so both torch ONNX exporters (TorchScript and
dynamo) take them as they are. Rotation matrices act on column vectors: x' = R @ x.
"""

import torch

from bodyrt.errors import InputError

# Row-major flat entries of a 3x3 rotation negated by the left <-> right mirror (x -> -x):
# M R M with M = diag(-1, 1, 1) flips the sign of R01, R02, R10 and R20.
MIRROR_NEGATED_ENTRIES = (1, 2, 3, 6)

_SMALL_ANGLE_SQUARED = 1e-8  # below this (angle < 1e-4 rad) Rodrigues uses its Taylor series


def _normalise(vectors: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(..., 3) -> unit vectors; vectors shorter than eps are divided by eps, not by zero."""
    length = torch.sqrt((vectors * vectors).sum(dim=-1, keepdim=True))
    return vectors / torch.clamp(length, min=eps)


def cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., 3) x (..., 3) -> (..., 3) cross product, written out component by component."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """(..., 6) continuous 6D rotations -> (..., 3, 3) rotation matrices.

    The 6 numbers are a 3x2 matrix in row-major order; its two columns are made orthonormal by
    Gram-Schmidt (b1, b2), b3 = b1 x b2, and R = [b1 b2 b3] with the b's as columns.
    """
    columns = rot6d.reshape(rot6d.shape[:-1] + (3, 2))
    first, second = columns[..., 0], columns[..., 1]
    b1 = _normalise(first)
    b2 = _normalise(second - (b1 * second).sum(dim=-1, keepdim=True) * b1)
    b3 = cross(b1, b2)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 6): the first two columns, R[..., :, :2], row-major."""
    return rotations[..., :, :2].reshape(rotations.shape[:-2] + (6,))


def skew(vectors: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices K with K @ y = v x y."""
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    zero = torch.zeros_like(x)
    rows = [torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1)]
    return torch.stack(rows, dim=-2)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle (unit axis times angle in radians) -> (..., 3, 3), Rodrigues' formula.

    R = I + (sin t / t) K + ((1 - cos t) / t^2) K^2 with K = skew(axis_angle), t = |axis_angle|.
    Exact at t = 0 (Taylor series below t = 1e-4, so no 0/0 in value or gradient).
    1 - cos t is computed as 2 sin^2(t/2), which keeps its float32 precision for small t.
    """
    angle_squared = (axis_angle * axis_angle).sum(dim=-1, keepdim=True)[..., None]  # (..., 1, 1)
    small = angle_squared < _SMALL_ANGLE_SQUARED
    safe_angle_squared = torch.where(small, torch.ones_like(angle_squared), angle_squared)
    safe_angle = torch.sqrt(safe_angle_squared)
    sin_term = torch.where(small, 1.0 - angle_squared / 6.0, torch.sin(safe_angle) / safe_angle)
    half_sin = torch.sin(0.5 * safe_angle)
    cos_term = torch.where(small, 0.5 - angle_squared / 24.0, 2.0 * half_sin * half_sin / safe_angle_squared)
    k = skew(axis_angle)
    identity = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return identity + sin_term * k + cos_term * (k @ k)


def matrix_to_quaternion(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    Of the four ways to read a quaternion off R, uses the one whose pivot (4 q_i^2) is largest,
    so no division by a small number happens anywhere on SO(3).
    """
    r = rotations
    r00, r01, r02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    r10, r11, r12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    r20, r21, r22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    # Row i is 4 q_i * (w, x, y, z); its pivot entry is 4 q_i^2.
    scaled = torch.stack([
        torch.stack([1.0 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01], dim=-1),
        torch.stack([r21 - r12, 1.0 + r00 - r11 - r22, r10 + r01, r02 + r20], dim=-1),
        torch.stack([r02 - r20, r10 + r01, 1.0 - r00 + r11 - r22, r21 + r12], dim=-1),
        torch.stack([r10 - r01, r02 + r20, r21 + r12, 1.0 - r00 - r11 + r22], dim=-1),
    ], dim=-2)  # (..., 4, 4)
    pivots = torch.stack([scaled[..., 0, 0], scaled[..., 1, 1], scaled[..., 2, 2], scaled[..., 3, 3]], dim=-1)
    best = pivots.argmax(dim=-1, keepdim=True)  # (..., 1)
    choice = (best == torch.arange(4, device=r.device)).to(r.dtype)  # one-hot, (..., 4)
    chosen_row = (choice[..., None] * scaled).sum(dim=-2)  # (..., 4)
    chosen_pivot = (choice * pivots).sum(dim=-1, keepdim=True)
    quaternion = chosen_row / (2.0 * torch.sqrt(torch.clamp(chosen_pivot, min=1e-12)))
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def matrix_to_axis_angle(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle, angle in [0, pi] radians."""
    quaternion = matrix_to_quaternion(rotations)
    w, vector = quaternion[..., :1], quaternion[..., 1:]
    sin_half = torch.sqrt((vector * vector).sum(dim=-1, keepdim=True))
    angle = 2.0 * torch.atan2(sin_half, w)
    small = sin_half < 1e-6
    safe_sin_half = torch.where(small, torch.ones_like(sin_half), sin_half)
    # angle / sin(angle/2) -> 2 / w as the angle -> 0 (w -> 1).
    scale = torch.where(small, 2.0 / torch.clamp(w, min=1e-6), angle / safe_sin_half)
    return vector * scale


def mirror_rotation(rotations: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3, 3) left <-> right mirrored rotations; its own inverse.

    Negates the row-major flat entries 1, 2, 3 and 6 (R01, R02, R10, R20).
    """
    signs = [-1.0 if entry in MIRROR_NEGATED_ENTRIES else 1.0 for entry in range(9)]
    sign_matrix = torch.tensor(signs, dtype=rotations.dtype, device=rotations.device).reshape(3, 3)
    return rotations * sign_matrix


def tree_levels(parents: list[int]) -> list[list[int]]:
    """Joints grouped by depth in the tree: [[root], the root's children, their children, ...].

    parents: a Python list of J ints, parents[0] = -1 and parents[j] < j. Each level is ascending and
    every joint of level d > 0 has its parent in level d - 1, so one batched step per level poses the
    whole tree (11 steps for SMPL-X's 55 joints): a much smaller exported graph than one per joint.
    """
    depth = []
    for parent in parents:
        depth.append(0 if parent < 0 else depth[parent] + 1)
    return [[joint for joint, d in enumerate(depth) if d == level] for level in range(max(depth) + 1)]


def joint_order_after_levels(levels: list[list[int]]) -> list[int]:
    """Where each joint sits once the levels are concatenated: position_of[j] for j = 0 .. J - 1."""
    order = [joint for level in levels for joint in level]
    return [order.index(joint) for joint in range(len(order))]


def take_joints(tensor: torch.Tensor, joint_ids: list[int]) -> torch.Tensor:
    """(N, J, ...) -> (N, len(joint_ids), ...) along axis 1, joint_ids a Python list of ints.

    A contiguous run of ids is a slice; anything else a gather with constant indices.
    """
    first = joint_ids[0]
    if joint_ids == list(range(first, first + len(joint_ids))):
        return tensor[:, first:first + len(joint_ids)]
    return tensor.index_select(1, torch.tensor(joint_ids, dtype=torch.int64, device=tensor.device))


def global_rotations(local_rotations: torch.Tensor, parents: list[int]) -> torch.Tensor:
    """(N, J, 3, 3) rotations relative to the parent joint -> (N, J, 3, 3) rotations in model space.

    parents: a Python list of J ints, parents[0] = -1 and parents[j] < j (kinematic tree order).
    G_0 = R_0, G_j = G_parent(j) @ R_j, evaluated one tree level at a time.
    """
    if len(parents) != local_rotations.shape[1]:
        raise InputError(f"global_rotations: {len(parents)} parents for local_rotations of shape "
                         f"{tuple(local_rotations.shape)}; expected (N, {len(parents)}, 3, 3)")
    levels = tree_levels(parents)
    per_level = [take_joints(local_rotations, levels[0])]
    for previous, level in zip(levels, levels[1:]):
        parent_rotations = take_joints(per_level[-1], [previous.index(parents[joint]) for joint in level])
        per_level.append(parent_rotations @ take_joints(local_rotations, level))
    return take_joints(torch.cat(per_level, dim=1), joint_order_after_levels(levels))
