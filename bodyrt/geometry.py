"""Where a predicted person is in the photo: full-image camera, placed meshes, 2D joints, smplx parameters.

Conventions (numpy only; see the README's "Coordinates" section):

- **Camera frame** (`camera`, OpenCV's): x right, y down, z forward from the camera into the scene,
  metres; the camera sits at the origin. The networks predict the body in this orientation already
  (ExPose's mean global orientation is a half turn about x), centred near the origin.
- **Full-image pinhole camera**: focal length f pixels (the bundle's, 5000 for ExPose), principal
  point at the image centre (W/2, H/2), in the pixel frame of the person boxes. Intrinsics
  K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]; a camera-frame point X projects to (f X_x / X_z + W/2,
  f X_y / X_z + H/2).
- **Placement**: the weak-perspective camera (scale s, translation t, in the body crop of a box of
  side S centred at c) maps a model point X to full-image pixels c + (s S / 2) (X_xy + t). The
  pinhole translation that agrees with it for points near the body's centre is
  T = (t_x + 2 (c_x - W/2) / (s S), t_y + 2 (c_y - H/2) / (s S), 2 f / (s S)); the placed mesh is
  X + T, so several people of one photo stand where they are in it, each at the depth its box size
  implies.
- **y up** (`yup`, what Blender, MeshLab, three.js and glTF expect): the camera frame turned half a
  turn about x, (x, -y, -z): y up, the camera looking down -z. A proper rotation, so triangle
  winding (outward normals) is kept.
"""

import numpy as np

COORDS = ("yup", "camera")
DEFAULT_COORDS = "yup"

# smplx's SMPL-X pose order (its `full_pose`): name -> joints.
SMPLX_POSE_PARTS = (("global_orient", 1), ("body_pose", 21), ("jaw_pose", 1), ("leye_pose", 1),
                    ("reye_pose", 1), ("left_hand_pose", 15), ("right_hand_pose", 15))
SMPL_POSE_PARTS = (("global_orient", 1), ("body_pose", 23))


def matrix_to_axis_angle(rotations) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle (angle in [0, pi]), float64.

    Through the unit quaternion, taking the largest of its four components from the matrix's
    diagonal (Shepperd's method), so it stays accurate near a half turn, where the matrix's
    antisymmetric part vanishes (ExPose's mean global orientation is exactly there).
    """
    rotations = np.asarray(rotations, dtype=np.float64)
    flat = rotations.reshape(-1, 3, 3)
    m = flat
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = np.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    choice = np.argmax(candidates, axis=1)
    quaternions = np.empty((len(m), 4))  # w, x, y, z
    for index, (rotation, which) in enumerate(zip(m, choice)):
        r = rotation
        if which == 0:
            root = np.sqrt(max(1.0 + trace[index], 0.0)) * 2.0
            q = (0.25 * root, (r[2, 1] - r[1, 2]) / root, (r[0, 2] - r[2, 0]) / root, (r[1, 0] - r[0, 1]) / root)
        elif which == 1:
            root = np.sqrt(max(1.0 + r[0, 0] - r[1, 1] - r[2, 2], 0.0)) * 2.0
            q = ((r[2, 1] - r[1, 2]) / root, 0.25 * root, (r[0, 1] + r[1, 0]) / root, (r[0, 2] + r[2, 0]) / root)
        elif which == 2:
            root = np.sqrt(max(1.0 + r[1, 1] - r[0, 0] - r[2, 2], 0.0)) * 2.0
            q = ((r[0, 2] - r[2, 0]) / root, (r[0, 1] + r[1, 0]) / root, 0.25 * root, (r[1, 2] + r[2, 1]) / root)
        else:
            root = np.sqrt(max(1.0 + r[2, 2] - r[0, 0] - r[1, 1], 0.0)) * 2.0
            q = ((r[1, 0] - r[0, 1]) / root, (r[0, 2] + r[2, 0]) / root, (r[1, 2] + r[2, 1]) / root, 0.25 * root)
        quaternions[index] = q
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    quaternions[quaternions[:, 0] < 0] *= -1.0  # w >= 0: the angle is at most a half turn
    vector = quaternions[:, 1:]
    sine = np.linalg.norm(vector, axis=1)
    angle = 2.0 * np.arctan2(sine, quaternions[:, 0])
    safe = np.where(sine > 1e-12, sine, 1.0)
    axis_angle = np.where(sine[:, None] > 1e-12, vector * (angle / safe)[:, None], 2.0 * vector)
    return axis_angle.reshape(rotations.shape[:-2] + (3,))


def full_image_camera(camera_scale, camera_translation, crop_transform, focal_length, image_size,
                      crop_size: int) -> dict:
    """One person's weak-perspective camera -> the full-image pinhole camera (see the module doc).

    camera_scale s (scalar); camera_translation t (2,) model units; crop_transform (3, 3) full-image
    pixels -> body-crop pixels (k = crop_size / S on the diagonal); focal_length f pixels;
    image_size (height, width). Returns {"transl": (3,) metres, "camera_intrinsics": (3, 3)}.
    """
    height, width = image_size
    transform = np.asarray(crop_transform, dtype=np.float64)
    box_size = crop_size / transform[0, 0]
    centre = box_size * (0.5 - transform[:2, 2] / crop_size)
    principal_point = np.array([width / 2.0, height / 2.0])
    pixels_per_unit = float(camera_scale) * box_size / 2.0  # s S / 2: weak-perspective pixels per metre
    depth = float(focal_length) / pixels_per_unit
    transl = np.concatenate([np.asarray(camera_translation, dtype=np.float64)
                             + (centre - principal_point) / pixels_per_unit, [depth]])
    intrinsics = np.array([[focal_length, 0.0, principal_point[0]],
                           [0.0, focal_length, principal_point[1]],
                           [0.0, 0.0, 1.0]])
    return {"transl": transl, "camera_intrinsics": intrinsics}


def project(points, intrinsics) -> np.ndarray:
    """(P, 3) camera-frame points -> (P, 2) pixels through the pinhole intrinsics (3, 3)."""
    points = np.asarray(points, dtype=np.float64)
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    return points[:, :2] / points[:, 2:3] * np.diag(intrinsics)[:2] + intrinsics[:2, 2]


def to_coords(points, coords: str) -> np.ndarray:
    """Camera-frame points (P, 3) in the convention `coords` ("camera" unchanged, "yup" (x, -y, -z))."""
    points = np.asarray(points)
    if coords == "camera":
        return points
    if coords == "yup":
        return points * np.array([1.0, -1.0, -1.0], dtype=points.dtype)
    raise ValueError(f"coords must be one of {COORDS}, got {coords!r}")


def smplx_parameters(person: dict) -> dict:
    """Axis-angle parameters with the smplx package's names and shapes (batch of one).

    person: one person's results (rotation matrices `global_orient` (3, 3), `body_pose` (J, 3, 3), ...,
    `betas` (B,), `expression` (E,)) and its full-image `transl` (3,). Returns float32 arrays:
    global_orient (1, 3), body_pose (1, 3 J), left/right_hand_pose (1, 45), jaw/leye/reye_pose (1, 3),
    betas (1, B), expression (1, E), transl (1, 3), full_pose (1, 3 x joints) in smplx's order.
    SMPL-X results (with hands) give smplx.SMPLX's set; SMPL results smplx.SMPL's (global_orient,
    body_pose (1, 69), betas, transl). Missing eye poses are zero (ExPose predicts none).
    """
    smplx_kind = "left_hand_pose" in person
    parts = SMPLX_POSE_PARTS if smplx_kind else SMPL_POSE_PARTS
    axis_angles = {}
    for name, joints in parts:
        if name in person:
            rotations = np.asarray(person[name]).reshape(joints, 3, 3)
            axis_angles[name] = matrix_to_axis_angle(rotations).reshape(1, 3 * joints)
        else:  # eyes
            axis_angles[name] = np.zeros((1, 3 * joints))
    parameters = {name: value.astype(np.float32) for name, value in axis_angles.items()}
    parameters["full_pose"] = np.concatenate([axis_angles[name] for name, _ in parts], axis=1).astype(np.float32)
    for name in ("betas", "expression"):
        if name in person:
            parameters[name] = np.asarray(person[name], dtype=np.float32).reshape(1, -1)
    parameters["transl"] = np.asarray(person["transl"], dtype=np.float32).reshape(1, 3)
    return parameters


def rotation_matrix_keys(person: dict) -> list:
    """Names of the (..., 3, 3) rotation entries of a person's results (they become `<name>_rotmat`)."""
    names = [name for name, _ in SMPLX_POSE_PARTS]
    return [name for name in names if name in person and np.shape(person[name])[-2:] == (3, 3)]
