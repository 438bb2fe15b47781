"""Synthetic SMPL-X and SMPL body-model files: the official layouts around a made-up body.

The licensed model files may never be used or committed, so the tests and the demo use these.
The arrays have the key names, shapes and dtypes of the official files (SMPLX_NEUTRAL.npz in its
v1.0 and v1.1 layouts, SMPL_NEUTRAL.pkl) and the `smplx` package loads them.

The body: capsules around a T-posed skeleton in metres, y up, facing +z, the pelvis at the origin.
A torso, neck, head (nose, ears, a jaw region, eyeballs for SMPL-X), arms, legs, feet, palms and
five three-segment fingers per hand. The template is the same for every seed; the shape,
expression and pose blend shapes and the hand PCA basis come from the seed.
"""

import contextlib
import pickle
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize, sparse

from bodyrt.errors import BodyModelError

# ---------------------------------------------------------------------------------------------
# Layouts of the official files

FINGERS = ("index", "middle", "pinky", "ring", "thumb")  # the SMPL-X order of the hand joints
_BODY_JOINT_NAMES = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
)
_BODY_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)


def _hand_joint_names(side: str) -> tuple:
    return tuple(f"{side}_{finger}{k}" for finger in FINGERS for k in (1, 2, 3))


def _hand_parents(wrist: int, first: int) -> tuple:
    """Parents of the 15 joints of one hand: each finger is a chain of three from the wrist."""
    parents = []
    for finger in range(len(FINGERS)):
        base = first + 3 * finger
        parents += [wrist, base, base + 1]
    return tuple(parents)


SMPLX_JOINT_NAMES = (
    _BODY_JOINT_NAMES + ("jaw", "left_eye", "right_eye")
    + _hand_joint_names("left") + _hand_joint_names("right"))
SMPLX_PARENTS = _BODY_PARENTS + (15, 15, 15) + _hand_parents(20, 25) + _hand_parents(21, 40)
SMPL_JOINT_NAMES = _BODY_JOINT_NAMES + ("left_hand", "right_hand")
SMPL_PARENTS = _BODY_PARENTS + (20, 21)

# The official kintree tables store the root's parent as uint32(-1).
ROOT_PARENT_IN_FILE = 2**32 - 1

SMPLX_NUM_VERTICES, SMPLX_NUM_FACES = 10475, 20908
SMPL_NUM_VERTICES, SMPL_NUM_FACES = 6890, 13776
SMPLX_NUM_STATIC_LANDMARKS = 51
SMPLX_NUM_CONTOUR_LANDMARKS = 17
SMPLX_NUM_CONTOUR_YAW_BINS = 79  # yaw -39..39 degrees, in the order smplx indexes them
SMPLX_SHAPE_DIRS = {"1.1": (300, 100), "1.0": (10, 10)}  # (shape, expression) blend shapes

# Vertices the `smplx` package picks as extra joints (face keypoints, feet, fingertips). The
# synthetic mesh puts the matching body part at each of these indices.
SMPLX_KEYPOINT_VERTICES = {
    "nose": 9120, "reye": 9929, "leye": 9448, "rear": 616, "lear": 6,
    "rthumb": 8079, "rindex": 7669, "rmiddle": 7794, "rring": 7905, "rpinky": 8022,
    "lthumb": 5361, "lindex": 4933, "lmiddle": 5058, "lring": 5169, "lpinky": 5286,
    "LBigToe": 5770, "LSmallToe": 5780, "LHeel": 8846,
    "RBigToe": 8463, "RSmallToe": 8474, "RHeel": 8635,
}
SMPL_KEYPOINT_VERTICES = {
    "nose": 332, "reye": 6260, "leye": 2800, "rear": 4071, "lear": 583,
    "rthumb": 6191, "rindex": 5782, "rmiddle": 5905, "rring": 6016, "rpinky": 6133,
    "lthumb": 2746, "lindex": 2319, "lmiddle": 2445, "lring": 2556, "lpinky": 2673,
    "LBigToe": 3216, "LSmallToe": 3226, "LHeel": 3387,
    "RBigToe": 6617, "RSmallToe": 6624, "RHeel": 6787,
}

# Arrays that are chumpy objects in the official pickles.
CHUMPY_KEYS = ("v_template", "shapedirs", "posedirs", "weights")
PICKLE_PROTOCOL = 2

# ---------------------------------------------------------------------------------------------
# The skeleton at rest (metres; x to the body's left, y up, z forward)

_HEAD_CENTER = np.array([0.0, 0.665, 0.02])
_HEAD_RADII = np.array([0.079, 0.11, 0.097])
_EYE_HEIGHT = 0.672
_MOUTH_HEIGHT = 0.612
_CHIN = np.array([0.0, 0.57, 0.1])
_EYEBALL_RADIUS = 0.0125


@dataclass(frozen=True)
class _Finger:
    base: tuple  # first joint, relative to the wrist
    direction: tuple
    lengths: tuple  # first->second, second->third, third->tip
    radius: float


_LEFT_FINGERS = {
    "index": _Finger((0.090, 0.0, 0.024), (1.0, 0.0, 0.10), (0.042, 0.025, 0.023), 0.0085),
    "middle": _Finger((0.095, 0.0, 0.002), (1.0, 0.0, 0.0), (0.046, 0.029, 0.024), 0.0088),
    "pinky": _Finger((0.080, -0.003, -0.038), (1.0, 0.0, -0.18), (0.034, 0.020, 0.021), 0.0072),
    "ring": _Finger((0.089, -0.001, -0.019), (1.0, 0.0, -0.08), (0.043, 0.027, 0.023), 0.0082),
    "thumb": _Finger((0.022, -0.012, 0.026), (0.75, -0.12, 0.65), (0.032, 0.030, 0.026), 0.0098),
}


def _eye_center(x: float) -> np.ndarray:
    """Eyeball centre (3,) that sits in the head surface with its front just outside it."""
    rel_x = x / _HEAD_RADII[0]
    rel_y = (_EYE_HEIGHT - _HEAD_CENTER[1]) / _HEAD_RADII[1]
    surface_z = _HEAD_CENTER[2] + _HEAD_RADII[2] * np.sqrt(1.0 - rel_x**2 - rel_y**2)
    return np.array([x, _EYE_HEIGHT, surface_z - 0.8 * _EYEBALL_RADIUS])


def _left_side_points() -> dict:
    """Named rest points (3,) of the body's left side, joints and bone ends, in metres."""
    wrist = np.array([0.68, 0.44, -0.02])
    points = {
        "left_hip": [0.075, -0.09, -0.01],
        "left_knee": [0.095, -0.48, 0.0],
        "left_ankle": [0.09, -0.88, -0.04],
        "left_foot": [0.105, -0.935, 0.09],
        "left_toe_tip": [0.112, -0.945, 0.175],
        "left_collar": [0.07, 0.42, -0.01],
        "left_shoulder": [0.18, 0.44, -0.02],
        "left_elbow": [0.43, 0.44, -0.03],
        "left_wrist": wrist,
        "left_eye": _eye_center(0.032),
    }
    for name, finger in _LEFT_FINGERS.items():
        direction = np.asarray(finger.direction) / np.linalg.norm(finger.direction)
        point = wrist + np.asarray(finger.base)
        for k, length in zip(("1", "2", "3", "_tip"), (0.0,) + finger.lengths):
            point = point + length * direction
            points[f"left_{name}{k}"] = point
    points["left_hand"] = points["left_middle1"]  # SMPL's single hand joint, at the knuckles
    return {name: np.asarray(p, dtype=np.float64) for name, p in points.items()}


def rest_points() -> dict:
    """Every named rest point (3,) float64, metres: all SMPL-X and SMPL joints and bone ends."""
    left = _left_side_points()
    points = dict(left)
    for name, point in left.items():
        points["right_" + name[len("left_"):]] = point * np.array([-1.0, 1.0, 1.0])
    points.update({
        "pelvis": np.array([0.0, 0.0, 0.0]),
        "spine1": np.array([0.0, 0.10, -0.02]),
        "spine2": np.array([0.0, 0.23, -0.005]),
        "spine3": np.array([0.0, 0.29, 0.0]),
        "neck": np.array([0.0, 0.50, -0.015]),
        "head": np.array([0.0, 0.59, 0.01]),
        "head_top": _HEAD_CENTER + np.array([0.0, _HEAD_RADII[1], 0.0]),
        "jaw": np.array([0.0, 0.618, 0.025]),
        "chin": _CHIN.copy(),
    })
    return points


def _bone_segments(points: dict) -> dict:
    """Joint name -> (start, end) of the bone segment whose flesh the joint carries."""
    segments = {
        "pelvis": (np.array([0.0, -0.11, -0.01]), np.array([0.0, 0.05, -0.01])),
        "spine1": (points["spine1"], points["spine2"]),
        "spine2": (points["spine2"], points["spine3"]),
        "spine3": (points["spine3"], points["neck"]),
        "neck": (points["neck"], points["head"]),
        "head": (points["head"], points["head_top"]),
        "jaw": (points["jaw"], points["chin"]),
    }
    for side in ("left", "right"):
        chain = {
            "hip": "knee", "knee": "ankle", "ankle": "foot", "foot": "toe_tip",
            "collar": "shoulder", "shoulder": "elbow", "elbow": "wrist", "wrist": "middle1",
        }
        for joint, child in chain.items():
            segments[f"{side}_{joint}"] = (points[f"{side}_{joint}"], points[f"{side}_{child}"])
        eye = points[f"{side}_eye"]
        segments[f"{side}_eye"] = (eye, eye + np.array([0.0, 0.0, _EYEBALL_RADIUS]))
        for finger in FINGERS:
            for k, child in (("1", "2"), ("2", "3"), ("3", "_tip")):
                segments[f"{side}_{finger}{k}"] = (
                    points[f"{side}_{finger}{k}"], points[f"{side}_{finger}{child}"])
    return segments


# ---------------------------------------------------------------------------------------------
# Mesh parts


@dataclass
class _Part:
    """One closed surface of the body, with the bones that may carry its vertices."""
    name: str
    vertices: np.ndarray  # (n, 3) float64, metres
    faces: np.ndarray  # (m, 3) int64, local vertex indices, outward
    bones: tuple  # joint names (SMPL-X naming) whose bone segments can carry the vertices
    keypoints: dict = field(default_factory=dict)  # keypoint name -> local vertex index
    grid: tuple = (0, 0)  # (rings, segments) when the part is a ring grid with two poles


def _closed_grid_faces(rings: int, segments: int) -> np.ndarray:
    """Faces (2 * rings * segments, 3) of `rings` rings of `segments` vertices plus two poles.

    Vertex r * segments + i is point i of ring r; the two poles follow, the first beside ring 0.
    """
    ring = np.arange(rings - 1)[:, None] * segments
    i = np.arange(segments)[None, :]
    j = (i + 1) % segments
    a, b, c, d = ring + i, ring + j, ring + segments + j, ring + segments + i
    quads = np.stack([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], 2).reshape(-1, 3)
    first_pole, last_pole = rings * segments, rings * segments + 1
    first_fan = np.stack([np.full(segments, first_pole), (i + 0)[0], j[0]], -1)
    last = (rings - 1) * segments
    last_fan = np.stack([np.full(segments, last_pole), last + j[0], last + i[0]], -1)
    return np.concatenate([quads, first_fan, last_fan]).astype(np.int64)


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    return float(np.sum(a * np.cross(b, c)) / 6.0)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """The faces, flipped if needed so that the closed surface encloses a positive volume."""
    return faces if _signed_volume(vertices, faces) > 0 else faces[:, [0, 2, 1]]


def _ring(center, axis_u, axis_w, half_u, half_w, segments) -> np.ndarray:
    angles = 2.0 * np.pi * np.arange(segments) / segments
    return (center + half_u * np.cos(angles)[:, None] * axis_u
            + half_w * np.sin(angles)[:, None] * axis_w)


def _tube(name, path, half_u, half_w, reference, rings, segments, bones) -> _Part:
    """A capsule along a polyline, with elliptic sections and rounded ends.

    path (K, 3) metres; half_u, half_w (K,) section half-axes at the path points, half_u along
    `reference` made normal to the path. `rings` counts every ring, cap rings included.
    """
    path = np.asarray(path, dtype=np.float64)
    half_u, half_w = np.asarray(half_u, np.float64), np.asarray(half_w, np.float64)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    length = arc[-1]
    cap_rings = max(2, rings // 10)
    body_rings = rings - 2 * cap_rings
    # Arc positions of the rings: caps as quarter circles beyond both ends, the rest uniform.
    cap_angles = np.pi / 2 * np.arange(1, cap_rings + 1) / (cap_rings + 1)  # from the pole
    start_cap = 0.8 * min(half_u[0], half_w[0])
    end_cap = 0.8 * min(half_u[-1], half_w[-1])
    positions = np.concatenate([
        -start_cap * np.cos(cap_angles),
        np.linspace(0.0, length, body_rings),
        length + end_cap * np.cos(cap_angles[::-1]),
    ])
    scales = np.concatenate([np.sin(cap_angles), np.ones(body_rings), np.sin(cap_angles[::-1])])
    start_dir = (path[1] - path[0]) / np.linalg.norm(path[1] - path[0])
    end_dir = (path[-1] - path[-2]) / np.linalg.norm(path[-1] - path[-2])

    def center_at(s):
        if s < 0:
            return path[0] + s * start_dir
        if s > length:
            return path[-1] + (s - length) * end_dir
        return np.array([np.interp(s, arc, path[:, k]) for k in range(3)])

    vertices = []
    for s, scale in zip(positions, scales):
        step = 1e-3 * length
        tangent = center_at(min(s + step, length + end_cap)) - center_at(max(s - step, -start_cap))
        tangent /= np.linalg.norm(tangent)
        axis_u = np.asarray(reference, np.float64) - np.dot(reference, tangent) * tangent
        axis_u /= np.linalg.norm(axis_u)
        axis_w = np.cross(tangent, axis_u)
        clamped = min(max(s, 0.0), length)
        vertices.append(_ring(center_at(s), axis_u, axis_w, scale * np.interp(clamped, arc, half_u),
                              scale * np.interp(clamped, arc, half_w), segments))
    poles = [path[0] - start_cap * start_dir, path[-1] + end_cap * end_dir]
    vertices = np.concatenate(vertices + [np.array(poles)])
    faces = _outward(vertices, _closed_grid_faces(rings, segments))
    return _Part(name, vertices, faces, tuple(bones), grid=(rings, segments))


def _ellipsoid(name, center, radii, rings, segments, bones) -> _Part:
    """An ellipsoid with its poles on the y axis, seam at the back; ring 0 is at the top."""
    polar = np.pi * np.arange(1, rings + 1) / (rings + 1)
    azimuth = 2.0 * np.pi * np.arange(segments) / segments  # 0 faces +z
    sin_p, cos_p = np.sin(polar)[:, None], np.cos(polar)[:, None]
    unit = np.stack([
        sin_p * np.sin(azimuth)[None, :],
        cos_p * np.ones_like(azimuth)[None, :],
        sin_p * np.cos(azimuth)[None, :],
    ], -1).reshape(-1, 3)
    unit = np.concatenate([unit, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])
    vertices = np.asarray(center) + unit * np.asarray(radii)
    faces = _outward(vertices, _closed_grid_faces(rings, segments))
    return _Part(name, vertices, faces, tuple(bones), grid=(rings, segments))


def _gaussian_bump(vertices, center, sigmas) -> np.ndarray:
    """(n,) exp(-0.5 * sum(((v - center) / sigmas)^2))."""
    return np.exp(-0.5 * np.sum(((vertices - center) / np.asarray(sigmas)) ** 2, axis=1))


def _head(rings, segments) -> _Part:
    """Head: an ellipsoid with a nose, ears, a chin, a narrower jaw; nose and ear keypoints."""
    part = _ellipsoid("head", _HEAD_CENTER, _HEAD_RADII, rings, segments, ("neck", "head", "jaw"))
    v = part.vertices
    front = np.clip((v[:, 2] - _HEAD_CENTER[2]) / 0.05, 0.0, 1.0)
    below_eyes = np.clip((_EYE_HEIGHT - 0.02 - v[:, 1]) / 0.06, 0.0, 1.0)
    v[:, 0] *= 1.0 - 0.22 * below_eyes  # the jaw is narrower than the skull
    nose = _gaussian_bump(v, [0.0, 0.642, 0.1], [0.009, 0.018, 0.05]) * front
    v[:, 2] += 0.024 * nose
    chin = _gaussian_bump(v, [0.0, 0.585, 0.08], [0.03, 0.018, 0.05]) * front
    v[:, 2] += 0.02 * chin
    for sign in (1.0, -1.0):
        ear = _gaussian_bump(v, [sign * 0.07, 0.66, 0.005], [0.05, 0.022, 0.014])
        v[:, 0] += sign * 0.012 * ear * (sign * v[:, 0] > 0)
    near_midline = np.abs(v[:, 0]) < 0.006
    nose_tip = np.flatnonzero(near_midline)[np.argmax(v[near_midline, 2])]
    part.keypoints = {
        "nose": int(nose_tip), "lear": int(np.argmax(v[:, 0])), "rear": int(np.argmin(v[:, 0])),
    }
    return part


def _eyeball(side, rings, segments) -> _Part:
    center = rest_points()[f"{side}_eye"]
    part = _ellipsoid(f"{side}_eyeball", center, [_EYEBALL_RADIUS] * 3, rings, segments,
                      (f"{side}_eye",))
    front = center + np.array([0.0, 0.0, _EYEBALL_RADIUS])
    part.keypoints = {side[0] + "eye": int(np.argmin(np.linalg.norm(part.vertices - front, axis=1)))}
    return part


def _torso(rings, segments) -> _Part:
    heights = [-0.10, -0.05, 0.12, 0.28, 0.42, 0.46]
    depth_centers = [-0.005, -0.01, 0.0, 0.01, -0.01, -0.015]
    path = np.stack([np.zeros(6), heights, depth_centers], -1)
    return _tube("torso", path, [0.165, 0.175, 0.135, 0.155, 0.175, 0.14],
                 [0.095, 0.105, 0.09, 0.105, 0.085, 0.07], [1.0, 0.0, 0.0], rings, segments,
                 ("pelvis", "spine1", "spine2", "spine3", "neck", "left_collar", "right_collar"))


def _neck(rings, segments) -> _Part:
    return _tube("neck", [[0.0, 0.44, -0.02], [0.0, 0.53, -0.012], [0.0, 0.62, 0.0]],
                 [0.055, 0.05, 0.048], [0.05, 0.047, 0.045], [1.0, 0.0, 0.0], rings, segments,
                 ("spine3", "neck", "head"))


def _mirror_x(points) -> np.ndarray:
    return np.asarray(points, np.float64) * np.array([-1.0, 1.0, 1.0])


def _side_path(side, left_path) -> np.ndarray:
    return np.asarray(left_path, np.float64) if side == "left" else _mirror_x(left_path)


def _arm(side, rings, segments) -> _Part:
    p = rest_points()
    path = [_side_path(side, [0.10, 0.44, -0.02]), p[f"{side}_shoulder"],
            _side_path(side, [0.30, 0.44, -0.025]), p[f"{side}_elbow"],
            _side_path(side, [0.55, 0.44, -0.025]), p[f"{side}_wrist"]]
    return _tube(f"{side}_arm", path, [0.06, 0.055, 0.046, 0.037, 0.036, 0.021],
                 [0.06, 0.055, 0.048, 0.04, 0.042, 0.03], [0.0, 1.0, 0.0], rings, segments,
                 tuple(f"{side}_{j}" for j in ("collar", "shoulder", "elbow", "wrist")))


def _leg(side, rings, segments) -> _Part:
    p = rest_points()
    path = [_side_path(side, [0.08, -0.02, -0.005]), p[f"{side}_hip"],
            _side_path(side, [0.085, -0.28, 0.0]), p[f"{side}_knee"],
            _side_path(side, [0.093, -0.62, -0.02]), p[f"{side}_ankle"]]
    return _tube(f"{side}_leg", path, [0.08, 0.078, 0.068, 0.05, 0.052, 0.033],
                 [0.085, 0.082, 0.072, 0.052, 0.058, 0.036], [1.0, 0.0, 0.0], rings, segments,
                 ("pelvis",) + tuple(f"{side}_{j}" for j in ("hip", "knee", "ankle")))


def _foot(side, rings, segments) -> _Part:
    left_path = [[0.09, -0.925, -0.05], [0.105, -0.93, 0.09], [0.112, -0.942, 0.155]]
    part = _tube(f"{side}_foot", _side_path(side, left_path), [0.042, 0.048, 0.04],
                 [0.035, 0.03, 0.017], [1.0, 0.0, 0.0], rings, segments,
                 (f"{side}_ankle", f"{side}_foot"))
    targets = {"BigToe": [0.095, -0.94, 0.17], "SmallToe": [0.14, -0.945, 0.14],
               "Heel": [0.09, -0.96, -0.09]}
    prefix = side[0].upper()
    part.keypoints = {
        prefix + name: int(np.argmin(np.linalg.norm(part.vertices - _side_path(side, t), axis=1)))
        for name, t in targets.items()}
    return part


def _palm(side, rings, segments) -> _Part:
    wrist = rest_points()[f"{side}_wrist"]
    left_offsets = [[-0.012, -0.002, -0.007], [0.04, 0.0, -0.007], [0.082, 0.0, -0.007]]
    path = wrist + _side_path(side, left_offsets) * np.array([1.0, 1.0, 1.0])
    bones = (f"{side}_wrist",) + tuple(f"{side}_{finger}1" for finger in FINGERS)
    return _tube(f"{side}_palm", path, [0.036, 0.046, 0.046], [0.016, 0.017, 0.015],
                 [0.0, 0.0, 1.0], rings, segments, bones)


def _finger(side, finger, rings, segments) -> _Part:
    p = rest_points()
    joints = [p[f"{side}_{finger}{k}"] for k in ("1", "2", "3", "_tip")]
    inside_palm = joints[0] - 0.4 * (joints[1] - joints[0])
    radius = _LEFT_FINGERS[finger].radius
    tip_cap = 0.8 * 0.75 * radius
    direction = (joints[3] - joints[2]) / np.linalg.norm(joints[3] - joints[2])
    path = [inside_palm] + joints[:3] + [joints[3] - tip_cap * direction]  # cap ends at the tip
    half = radius * np.array([1.0, 1.0, 0.92, 0.85, 0.75])
    bones = (f"{side}_wrist",) + tuple(f"{side}_{finger}{k}" for k in ("1", "2", "3"))
    part = _tube(f"{side}_{finger}", path, 0.85 * half, half, [0.0, 1.0, 0.0], rings, segments,
                 bones)
    part.keypoints = {side[0] + finger: len(part.vertices) - 1}  # the pole at the tip
    return part


# Resolution of each part as (rings, segments); the torso's rings fill up the vertex count.
_SMPLX_RESOLUTION = {
    "head": (44, 48), "eyeball": (9, 12), "neck": (10, 32), "torso_segments": 44,
    "arm": (30, 22), "leg": (36, 24), "foot": (16, 20), "palm": (12, 24), "finger": (14, 10),
}
_SMPL_RESOLUTION = {
    "head": (34, 40), "eyeball": None, "neck": (8, 24), "torso_segments": 40,
    "arm": (24, 18), "leg": (30, 20), "foot": (12, 16), "palm": (10, 16), "finger": (8, 8),
}


def _body_parts(resolution: dict, num_vertices: int) -> list:
    """Every part of the body; the torso takes as many rings as still fit in `num_vertices`."""
    head = _head(*resolution["head"])
    if not resolution["eyeball"]:  # SMPL: the eye keypoints are on the head surface
        for side in ("left", "right"):
            front = rest_points()[f"{side}_eye"] + np.array([0.0, 0.0, _EYEBALL_RADIUS])
            distances = np.linalg.norm(head.vertices - front, axis=1)
            head.keypoints[side[0] + "eye"] = int(np.argmin(distances))
    parts = [head, _neck(*resolution["neck"])]
    for side in ("left", "right"):
        if resolution["eyeball"]:
            parts.append(_eyeball(side, *resolution["eyeball"]))
        parts += [_arm(side, *resolution["arm"]), _leg(side, *resolution["leg"]),
                  _foot(side, *resolution["foot"]), _palm(side, *resolution["palm"])]
        parts += [_finger(side, finger, *resolution["finger"]) for finger in FINGERS]
    used = sum(len(part.vertices) for part in parts)
    segments = resolution["torso_segments"]
    rings = (num_vertices - used - 2) // segments
    return [_torso(rings, segments)] + parts


# ---------------------------------------------------------------------------------------------
# Skinning weights


def _segment_distances(points, start, end):
    """(n,) distances of points (n, 3) to a segment, and (n, 3) the nearest segment points."""
    direction = end - start
    t = np.clip((points - start) @ direction / max(np.dot(direction, direction), 1e-12), 0.0, 1.0)
    nearest = start + t[:, None] * direction
    return np.linalg.norm(points - nearest, axis=1), nearest


def _bone_weights(points, bones, segments, power=8.0):
    """(n, len(bones)) weights by inverse distance to each bone segment, rows summing to 1.

    A high power keeps each vertex on its nearest bone and blends two bones only where their
    distances are alike, i.e. around the joint between them.
    """
    distances = np.stack([_segment_distances(points, *segments[b])[0] for b in bones], 1)
    inverse = (distances + 1e-4) ** -power
    weights = inverse / inverse.sum(1, keepdims=True)
    weights[weights < 0.01] = 0.0
    return weights / weights.sum(1, keepdims=True)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _jaw_share(vertices):
    """(n,) fraction of the head's weight the jaw takes: the lower front of the face."""
    below_mouth = _smoothstep((_MOUTH_HEIGHT + 0.004 - vertices[:, 1]) / 0.014)
    in_front = _smoothstep((vertices[:, 2] - (_HEAD_CENTER[2] - 0.01)) / 0.04)
    return below_mouth * in_front


def _head_weights(vertices):
    """(n, 3) weights of head vertices over (neck, head, jaw).

    Distances to bones do not work here: the face is as far from the neck bone as from the head
    bone. The neck takes the back of the skull's underside, the jaw the lower front of the face.
    """
    neck = (_smoothstep((_HEAD_CENTER[1] - 0.08 - vertices[:, 1]) / 0.03)
            * _smoothstep((0.06 - vertices[:, 2]) / 0.04))
    head = 1.0 - neck
    jaw = head * _jaw_share(vertices)
    return np.stack([neck, head - jaw, jaw], 1)


def _part_bone_weights(part, points, segments):
    """(n, len(part.bones)) skinning weights of a part over its own bones."""
    if part.name == "head":
        return _head_weights(points)
    return _bone_weights(points, part.bones, segments)


# ---------------------------------------------------------------------------------------------
# Assembling a model


@dataclass
class _Mesh:
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    weights: np.ndarray  # (V, J) float64
    axis_points: np.ndarray  # (V, 3) float64: the weighted nearest points on each vertex's bones
    part_of_vertex: np.ndarray  # (V,) int, index into part_names; -1 for interior padding
    part_of_face: np.ndarray  # (F,) int, as above
    part_names: list
    keypoints: dict  # name -> vertex index


def _joint_column(joint_names, bone_to_joint):
    index = {name: i for i, name in enumerate(joint_names)}
    return lambda bone: index[bone_to_joint(bone)]


def _padding(torso, first_new_index, num_new_vertices, num_new_faces):
    """Interior vertices and faces inside the torso that bring the counts up exactly.

    Closed capsules alone cannot meet the official vertex and face counts together, so the
    remainder goes inside the torso (its vertices are assumed to be the first ones, from index
    0): each new vertex sits on the torso axis as the hub of a fan over one ring, and the faces
    still missing triangulate further rings. Returns vertices (k, 3) and faces (m, 3), the new
    vertices numbered from `first_new_index`.
    """
    rings, segments = torso.grid
    by_middle = np.argsort(np.abs(np.arange(rings) - rings / 2), kind="stable")
    usable = [r for r in by_middle if 3 <= r < rings - 3]
    if num_new_faces < num_new_vertices or num_new_vertices > len(usable):
        raise BodyModelError("synthetic body: cannot pad the mesh to the official counts")
    rings_vertices = [r * segments + np.arange(segments) for r in usable]
    new_vertices, new_faces = [], []
    budget = num_new_faces
    for k in range(num_new_vertices):
        ring = rings_vertices[k]
        hub = first_new_index + k
        new_vertices.append(torso.vertices[ring].mean(0))
        count = min(segments, budget - (num_new_vertices - k - 1))
        new_faces += [[hub, ring[i], ring[(i + 1) % segments]] for i in range(count)]
        budget -= count
    for ring in rings_vertices[num_new_vertices:]:
        if budget == 0:
            break
        count = min(segments - 2, budget)
        new_faces += [[ring[0], ring[i + 1], ring[i + 2]] for i in range(count)]
        budget -= count
    if budget:
        raise BodyModelError("synthetic body: cannot pad the mesh to the official counts")
    return np.array(new_vertices).reshape(-1, 3), np.array(new_faces, np.int64).reshape(-1, 3)


def _place_keypoints(num_vertices, keypoints, targets):
    """A vertex order (V,) new -> old that moves each keypoint vertex to its target index."""
    order = np.arange(num_vertices)
    position = np.arange(num_vertices)  # old vertex -> new index
    for name, target in targets.items():
        source = position[keypoints[name]]
        moved = order[target]
        order[target], order[source] = keypoints[name], moved
        position[keypoints[name]], position[moved] = target, source
    return order


def _assemble(parts, joint_names, bone_to_joint, num_vertices, num_faces, keypoint_targets):
    points = rest_points()
    segments = _bone_segments(points)
    column = _joint_column(joint_names, bone_to_joint)
    vertices, faces, weights, axis_points, part_of_vertex, part_of_face = [], [], [], [], [], []
    keypoints = {}
    offset = 0
    for index, part in enumerate(parts):
        vertices.append(part.vertices)
        faces.append(part.faces + offset)
        part_weights = np.zeros((len(part.vertices), len(joint_names)))
        bone_weights = _part_bone_weights(part, part.vertices, segments)
        part_axis = np.zeros_like(part.vertices)
        for b, bone in enumerate(part.bones):
            part_weights[:, column(bone)] += bone_weights[:, b]
            nearest = _segment_distances(part.vertices, *segments[bone])[1]
            part_axis += bone_weights[:, b:b + 1] * nearest
        weights.append(part_weights)
        axis_points.append(part_axis)
        part_of_vertex.append(np.full(len(part.vertices), index))
        part_of_face.append(np.full(len(part.faces), index))
        keypoints.update({name: offset + i for name, i in part.keypoints.items()})
        offset += len(part.vertices)

    torso = parts[0]
    pad_vertices, pad_faces = _padding(torso, offset, num_vertices - offset,
                                       num_faces - sum(len(f) for f in faces))
    pad_weights = np.zeros((len(pad_vertices), len(joint_names)))
    for b, bone in enumerate(torso.bones):
        pad_weights[:, column(bone)] += _bone_weights(pad_vertices, torso.bones, segments)[:, b]

    vertices = np.concatenate(vertices + [pad_vertices])
    faces = np.concatenate(faces + [pad_faces])
    weights = np.concatenate(weights + [pad_weights])
    axis_points = np.concatenate(axis_points + [pad_vertices])  # padding lies on the axis
    part_of_vertex = np.concatenate(part_of_vertex + [np.full(len(pad_vertices), -1)])
    part_of_face = np.concatenate(part_of_face + [np.full(len(pad_faces), -1)])

    order = _place_keypoints(len(vertices), keypoints, keypoint_targets)
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    return _Mesh(vertices[order], new_index[faces], weights[order], axis_points[order],
                 part_of_vertex[order],
                 part_of_face, [part.name for part in parts],
                 {name: int(new_index[i]) for name, i in keypoints.items()})


# ---------------------------------------------------------------------------------------------
# Joint regressor


def _regressor_row(target, candidates):
    """(n,) non-negative weights summing to 1 whose combination of candidates (n, 3) is target."""
    distances = np.linalg.norm(candidates - target, axis=1)
    prior = np.exp(-0.5 * (distances / max(distances.min(), 1e-3)) ** 2)
    prior /= prior.sum()
    stiffness = 1e3
    matrix = np.concatenate([stiffness * candidates.T, stiffness * np.ones((1, len(candidates))),
                             np.eye(len(candidates))])
    rhs = np.concatenate([stiffness * target, [stiffness], prior])
    row, _ = optimize.nnls(matrix, rhs, maxiter=50 * len(candidates))
    return row / row.sum()


def _joint_regressor(mesh, joint_names, parents, joint_positions):
    """(J, V) float64: each joint as a convex combination of the surface vertices around it."""
    regressor = np.zeros((len(joint_names), len(mesh.vertices)))
    dominant = np.argmax(mesh.weights, axis=1)
    surface = mesh.part_of_vertex >= 0
    for j, target in enumerate(joint_positions):
        family = {j, parents[j]} | {c for c, p in enumerate(parents) if p == j}
        eligible = np.flatnonzero(surface & np.isin(dominant, list(family)))
        distances = np.linalg.norm(mesh.vertices[eligible] - target, axis=1)
        radius = 1.6 * distances.min()
        for _ in range(8):
            chosen = eligible[distances <= radius]
            row = _regressor_row(target, mesh.vertices[chosen])
            if np.linalg.norm(row @ mesh.vertices[chosen] - target) < 2e-4:
                break
            radius *= 1.4
        regressor[j, chosen] = row
    return regressor


# ---------------------------------------------------------------------------------------------
# Landmarks


def _ray_hits(origins, direction, vertices, faces):
    """Nearest hit of rays (R, 3) along `direction` (3,) on triangles: (face (R,), bary (R, 3))."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    edge1, edge2 = b - a, c - a
    hit_faces, hit_barys = [], []
    for origin in origins:
        p = np.cross(direction, edge2)
        det = np.sum(edge1 * p, axis=1)
        safe = np.where(np.abs(det) < 1e-12, 1e-12, det)
        s = origin - a
        u = np.sum(s * p, axis=1) / safe
        q = np.cross(s, edge1)
        v = (q @ direction) / safe
        t = np.sum(edge2 * q, axis=1) / safe
        hit = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        if not hit.any():
            raise BodyModelError("synthetic body: a landmark ray misses the head")
        nearest = np.flatnonzero(hit)[np.argmin(t[hit])]
        hit_faces.append(nearest)
        hit_barys.append([1.0 - u[nearest] - v[nearest], u[nearest], v[nearest]])
    barys = np.clip(np.array(hit_barys), 0.02, None)  # strictly inside: every weight positive
    return np.array(hit_faces), barys / barys.sum(1, keepdims=True)


# Static landmarks: the 68-point face layout without its 17 contour points, as (x, y) offsets
# from the point between the eyes, metres; x to the body's left. Order: right brow (outer to
# inner), left brow, nose bridge (top to tip), nostrils (right to left), right eye (outer corner
# first), left eye (inner corner first), outer lips from the right corner, inner lips.
_STATIC_LANDMARKS_2D = np.array([
    [-0.050, 0.016], [-0.041, 0.021], [-0.031, 0.023], [-0.021, 0.022], [-0.012, 0.019],
    [0.012, 0.019], [0.021, 0.022], [0.031, 0.023], [0.041, 0.021], [0.050, 0.016],
    [0.0, 0.0], [0.0, -0.010], [0.0, -0.020], [0.0, -0.030],
    [-0.014, -0.038], [-0.007, -0.040], [0.0, -0.041], [0.007, -0.040], [0.014, -0.038],
    [-0.045, 0.0], [-0.038, 0.004], [-0.026, 0.004], [-0.019, 0.0], [-0.026, -0.003],
    [-0.038, -0.003],
    [0.019, 0.0], [0.026, 0.004], [0.038, 0.004], [0.045, 0.0], [0.038, -0.003], [0.026, -0.003],
    [-0.024, -0.060], [-0.015, -0.055], [-0.006, -0.052], [0.0, -0.053], [0.006, -0.052],
    [0.015, -0.055], [0.024, -0.060], [0.015, -0.067], [0.006, -0.070], [0.0, -0.071],
    [-0.006, -0.070], [-0.015, -0.067],
    [-0.019, -0.060], [-0.006, -0.058], [0.0, -0.058], [0.006, -0.058], [0.019, -0.060],
    [0.006, -0.063], [0.0, -0.063], [-0.006, -0.063],
])


def _yaw_of_bin(index: int) -> int:
    """The angle a (degrees) smplx files under contour bin `index`: 0..39 -> a, 40..78 -> 39-i."""
    return index if index <= 39 else 39 - index


def _contour_points(shift_degrees: float) -> np.ndarray:
    """(17, 3) ray origins on a horizontal circle around the head for the jaw contour.

    From the body's right ear round the chin to the left ear, turned by `shift_degrees` about y
    (a head yawed by -a degrees shows its silhouette at azimuth +-90 + a).
    """
    s = np.linspace(-1.0, 1.0, SMPLX_NUM_CONTOUR_LANDMARKS)
    azimuth = np.radians(np.clip(80.0 * s + shift_degrees, -110.0, 110.0))
    heights = _CHIN[1] + 0.005 + 0.07 * np.abs(s) ** 1.5
    return np.stack([np.sin(azimuth), heights, np.cos(azimuth)], -1)


def _landmarks(mesh):
    """Static (51,) faces and (51, 3) barycentrics; dynamic (79, 17) faces, (79, 17, 3)."""
    head_faces = np.flatnonzero(mesh.part_of_face == mesh.part_names.index("head"))
    faces = mesh.faces[head_faces]
    origins = np.concatenate([
        _STATIC_LANDMARKS_2D[:, :1], _EYE_HEIGHT + _STATIC_LANDMARKS_2D[:, 1:],
        np.ones((len(_STATIC_LANDMARKS_2D), 1))], 1)
    static_faces, static_barys = _ray_hits(origins, np.array([0.0, 0.0, -1.0]), mesh.vertices,
                                           faces)
    dynamic_faces, dynamic_barys = [], []
    for index in range(SMPLX_NUM_CONTOUR_YAW_BINS):
        contour = _contour_points(_yaw_of_bin(index))
        face_ids, barys = [], []
        for point in contour:
            outward = np.array([point[0], 0.0, point[2]])
            origin = np.array([0.0, point[1], _HEAD_CENTER[2]]) + 0.5 * outward
            f, bary = _ray_hits(origin[None], -outward, mesh.vertices, faces)
            face_ids.append(f[0])
            barys.append(bary[0])
        dynamic_faces.append(face_ids)
        dynamic_barys.append(barys)
    return (head_faces[static_faces], static_barys,
            head_faces[np.array(dynamic_faces)], np.array(dynamic_barys))


# ---------------------------------------------------------------------------------------------
# Blend shapes


def _fourier_features(points, rng, count, wavelength):
    """(n, count) smooth random functions sin(w . p + phase), |w| ~ 2 pi / wavelength."""
    frequencies = rng.normal(0.0, 2.0 * np.pi / wavelength, size=(3, count))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=count)
    return np.sin(points @ frequencies + phases)


def _shape_dirs(vertices, axis_points, count, rng):
    """(V, 3, count) shape blend shapes, metres per unit coefficient.

    The first is height (scaling about the pelvis height), the second girth (growing away from
    the bones), the rest smooth random fields of decreasing size, as in a PCA basis.
    """
    features = _fourier_features(vertices, rng, 48, wavelength=1.2)
    mix = rng.normal(size=(48, 3 * count)) / np.sqrt(48)
    dirs = (features @ mix).reshape(-1, 3, count)
    dirs *= 0.012 / (1.0 + np.arange(count) / 4.0)
    dirs[:, :, 0] = 0.0
    dirs[:, 1, 0] = 0.045 * vertices[:, 1]
    if count > 1:
        dirs[:, :, 1] = 0.12 * (vertices - axis_points)
    return dirs


def _expression_dirs(vertices, face_mask, jaw_share, count, rng):
    """(V, 3, count) expression blend shapes on the face only, metres per unit coefficient.

    The first opens the mouth (the jaw region moves down and back); the rest are smooth random
    fields a few millimetres big.
    """
    features = _fourier_features(vertices, rng, 32, wavelength=0.12)
    mix = rng.normal(size=(32, 3 * count)) / np.sqrt(32)
    dirs = (features @ mix).reshape(-1, 3, count)
    dirs *= 0.004 / (1.0 + np.arange(count) / 8.0)
    dirs[:, :, 0] = np.array([0.0, -0.006, -0.002]) * jaw_share[:, None]
    return dirs * face_mask[:, None, None]


def _pose_dirs(vertices, weights, parents, joint_positions, bone_lengths, rng):
    """(V, 3, 9 * (J - 1)) pose blend shapes, metres per unit of (R - I) entry.

    Entry k of joint j's 3x3 block moves the flesh around joint j (its own and its parent's) by
    a random offset plus a random linear field, both scaled to the bone, fading with distance.
    """
    num_joints = len(parents)
    dirs = np.zeros((len(vertices), 3, 9 * (num_joints - 1)))
    for j in range(1, num_joints):
        sigma = max(0.3 * bone_lengths[j], 0.008)
        relative = vertices - joint_positions[j]
        reach = (weights[:, j] + weights[:, parents[j]]) * np.exp(
            -0.5 * np.sum(relative**2, axis=1) / sigma**2)
        near = np.flatnonzero(reach > 1e-4)
        offsets = rng.normal(0.0, 0.1 * sigma, size=(9, 3))
        fields = rng.normal(0.0, 0.1, size=(9, 3, 3))
        block = offsets[None] + np.stack([relative[near] @ fields[k].T for k in range(9)], 1)
        dirs[near, :, 9 * (j - 1):9 * j] = (reach[near, None, None] * block).transpose(0, 2, 1)
    return dirs


def _hand_pca(rng):
    """Left and right (45, 45) orthonormal hand bases; the right one mirrors the left."""
    left, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    mirror = np.tile([1.0, -1.0, -1.0], 15)  # axis-angle mirrored in the x = 0 plane
    return left.T.copy(), (left.T * mirror).copy()


def _relaxed_hand_pose(side):
    """(45,) axis-angle of a relaxed hand: fingers slightly curled towards the palm, in radians.

    A left hand points +x with its palm down, so its fingers curl about -z; the right about +z.
    """
    sign = -1.0 if side == "left" else 1.0
    curls = {"index": (0.15, 0.25, 0.15), "middle": (0.18, 0.28, 0.15),
             "pinky": (0.22, 0.32, 0.18), "ring": (0.2, 0.3, 0.16)}
    pose = np.zeros((len(FINGERS), 3, 3))
    for f, finger in enumerate(FINGERS[:4]):
        pose[f, :, 2] = sign * np.array(curls[finger])
    pose[FINGERS.index("thumb")] = [[-0.1 * sign, 0.15, 0.0], [0.0, 0.0, 0.12 * sign],
                                    [0.0, 0.0, 0.1 * sign]]
    return pose.reshape(45)


# ---------------------------------------------------------------------------------------------
# Public API


def _smplx_bone_to_joint(bone):
    return bone


def _smpl_bone_to_joint(bone):
    """SMPL has one joint per hand and none in the face: fingers go to the hand, face to head."""
    if bone in ("jaw", "left_eye", "right_eye"):
        return "head"
    for side in ("left", "right"):
        if bone.startswith(side) and bone[len(side) + 1:].rstrip("123") in FINGERS:
            return f"{side}_hand"
    return bone


def _kintree_table(parents):
    """(2, J) int64: parents (root as the files store it) over joint ids."""
    first = np.array([ROOT_PARENT_IN_FILE if p < 0 else p for p in parents], dtype=np.int64)
    return np.stack([first, np.arange(len(parents), dtype=np.int64)])


def _model_arrays(joint_names, parents, resolution, num_vertices, num_faces, keypoint_targets,
                  bone_to_joint):
    """The template mesh (with weights), joint regressor (J, V), joints (J, 3), bone lengths (J,)."""
    points = rest_points()
    parts = _body_parts(resolution, num_vertices)
    mesh = _assemble(parts, list(joint_names), bone_to_joint, num_vertices, num_faces,
                     keypoint_targets)
    joint_positions = np.stack([points[name] for name in joint_names])
    regressor = _joint_regressor(mesh, joint_names, parents, joint_positions)
    segments = _bone_segments(points)
    bone_lengths = []
    for name in joint_names:
        start, end = segments.get(name, (points[name], points[name]))
        bone_lengths.append(np.linalg.norm(end - start))
    return mesh, regressor, joint_positions, np.array(bone_lengths)


def smplx_arrays(seed: int = 0, version: str = "1.1") -> dict:
    """The arrays of a synthetic SMPLX_NEUTRAL.npz, keyed and shaped as the official file.

    version "1.1": shapedirs (10475, 3, 400) = 300 shape + 100 expression; "1.0": (.., 20).
    Floats are float64 (metres), faces int32, landmark face indices int64.
    """
    if version not in SMPLX_SHAPE_DIRS:
        raise BodyModelError(f"synthetic SMPL-X: unknown version {version!r}; use '1.0' or '1.1'")
    num_shape, num_expression = SMPLX_SHAPE_DIRS[version]
    mesh, regressor, joint_positions, bone_lengths = _model_arrays(
        SMPLX_JOINT_NAMES, SMPLX_PARENTS, _SMPLX_RESOLUTION, SMPLX_NUM_VERTICES,
        SMPLX_NUM_FACES, SMPLX_KEYPOINT_VERTICES, _smplx_bone_to_joint)
    rng = np.random.default_rng(seed)
    head = mesh.part_of_vertex == mesh.part_names.index("head")
    face_mask = head * _smoothstep((mesh.vertices[:, 2] - _HEAD_CENTER[2]) / 0.07)
    shape = _shape_dirs(mesh.vertices, mesh.axis_points, num_shape, rng)
    jaw_column = SMPLX_JOINT_NAMES.index("jaw")
    expression = _expression_dirs(mesh.vertices, face_mask, mesh.weights[:, jaw_column],
                                  num_expression, rng)
    posedirs = _pose_dirs(mesh.vertices, mesh.weights, SMPLX_PARENTS, joint_positions,
                          bone_lengths, rng)
    components_left, components_right = _hand_pca(rng)
    static_faces, static_barys, dynamic_faces, dynamic_barys = _landmarks(mesh)
    return {
        "v_template": mesh.vertices,
        "f": mesh.faces.astype(np.int32),
        "shapedirs": np.concatenate([shape, expression], axis=2),
        "posedirs": posedirs,
        "J_regressor": regressor,
        "weights": mesh.weights,
        "kintree_table": _kintree_table(SMPLX_PARENTS),
        "hands_componentsl": components_left,
        "hands_componentsr": components_right,
        "hands_meanl": _relaxed_hand_pose("left"),
        "hands_meanr": _relaxed_hand_pose("right"),
        "lmk_faces_idx": static_faces.astype(np.int64),
        "lmk_bary_coords": static_barys,
        "dynamic_lmk_faces_idx": dynamic_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": dynamic_barys,
    }


def smpl_arrays(seed: int = 0, num_shape_dirs: int = 10) -> dict:
    """The arrays of a synthetic SMPL_NEUTRAL model, keyed and shaped as the official pickle.

    shapedirs (6890, 3, num_shape_dirs), posedirs (6890, 3, 207), J_regressor (24, 6890) dense
    here (the .pkl writer stores it sparse, as the official file does), J (24, 3).
    Faces uint32 as in the official pickle.
    """
    if num_shape_dirs < 2:
        raise BodyModelError(f"synthetic SMPL: num_shape_dirs must be >= 2, got {num_shape_dirs}")
    mesh, regressor, joint_positions, bone_lengths = _model_arrays(
        SMPL_JOINT_NAMES, SMPL_PARENTS, _SMPL_RESOLUTION, SMPL_NUM_VERTICES, SMPL_NUM_FACES,
        SMPL_KEYPOINT_VERTICES, _smpl_bone_to_joint)
    rng = np.random.default_rng(seed)
    return {
        "v_template": mesh.vertices,
        "f": mesh.faces.astype(np.uint32),
        "shapedirs": _shape_dirs(mesh.vertices, mesh.axis_points, num_shape_dirs, rng),
        "posedirs": _pose_dirs(mesh.vertices, mesh.weights, SMPL_PARENTS, joint_positions,
                               bone_lengths, rng),
        "J_regressor": regressor,
        "weights": mesh.weights,
        "kintree_table": _kintree_table(SMPL_PARENTS),
        "J": regressor @ mesh.vertices,
    }


class _FakeChumpyArray:
    """Pickled as `chumpy.ch.Ch` with the state {"x": array}, like the official files' arrays."""

    def __init__(self, array):
        self.x = array


_FakeChumpyArray.__module__ = "chumpy.ch"
_FakeChumpyArray.__name__ = _FakeChumpyArray.__qualname__ = "Ch"


@contextlib.contextmanager
def _fake_chumpy_modules():
    """Make `chumpy.ch.Ch` resolvable for the pickler, and undo it afterwards."""
    names = ("chumpy", "chumpy.ch")
    saved = {name: sys.modules.get(name) for name in names}
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    module.Ch = _FakeChumpyArray
    package.ch = module
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def _official_pickle_contents(arrays: dict) -> dict:
    contents = dict(arrays)
    for key in CHUMPY_KEYS:
        if key in contents:
            contents[key] = _FakeChumpyArray(contents[key])
    regressor = contents.get("J_regressor")
    if regressor is not None and regressor.shape[0] == len(SMPL_JOINT_NAMES):
        contents["J_regressor"] = sparse.csc_matrix(regressor)  # sparse in the SMPL pickles
    return contents


def write_body_model(path, arrays: dict) -> Path:
    """Write body-model arrays to `path`: ".npz" with np.savez, ".pkl" as the official pickles.

    In a .pkl, v_template, shapedirs, posedirs and weights are chumpy `Ch` objects (state
    {"x": array}) and SMPL's J_regressor a scipy csc_matrix; pickle protocol 2.
    """
    path = Path(path)
    if path.suffix not in (".npz", ".pkl"):
        raise BodyModelError(f"{path}: unknown body-model file type; use .npz or .pkl")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        with open(path, "wb") as file:
            np.savez(file, **arrays)
        return path
    contents = _official_pickle_contents(arrays)
    with _fake_chumpy_modules(), open(path, "wb") as file:
        pickle.dump(contents, file, protocol=PICKLE_PROTOCOL)
    return path


def write_smplx_model(directory, seed: int = 0, version: str = "1.1", fmt: str = "npz") -> Path:
    """Write SMPLX_NEUTRAL.<fmt> (npz or pkl) into `directory`; returns its path."""
    return write_body_model(Path(directory) / f"SMPLX_NEUTRAL.{fmt}", smplx_arrays(seed, version))


def write_smpl_model(directory, seed: int = 0, fmt: str = "pkl") -> Path:
    """Write SMPL_NEUTRAL.<fmt> (pkl or npz) into `directory`; returns its path."""
    return write_body_model(Path(directory) / f"SMPL_NEUTRAL.{fmt}", smpl_arrays(seed))
