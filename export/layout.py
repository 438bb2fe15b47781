"""The ExPose constants, in one place: parameter layouts, part index sets, crop sizes, normalisation.

The export writes these into the bundle manifest; the runtime reads them from there and never
hard-codes them. Values follow the released ExPose model (see shared/REFERENCE.md, section 2).
"""

import math

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_SCALE = 1.0 / 255.0  # 8-bit pixels to [0, 1] before the normalisation

BODY_CROP_SIZE = 256
BODY_BOX_SCALE = 1.2  # body crop side = 1.2 * longer side of the person box
HAND_CROP_SIZE = 224
FACE_CROP_SIZE = 256
HAND_BOX_SCALE = 3.0
FACE_BOX_SCALE = 2.0

REGRESSOR_ITERATIONS = 3
FOCAL_LENGTH_PX = 5000.0  # pinhole conversion used by the ExPose demo


def inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


BODY_CAMERA_SCALE_MEAN = inverse_softplus(0.9)
HAND_CAMERA_SCALE_MEAN = inverse_softplus(0.9)
FACE_CAMERA_SCALE_MEAN = inverse_softplus(8.0)


def _slices(fields):
    """[(name, size), ...] -> ({name: slice}, total size)."""
    offsets, start = {}, 0
    for name, size in fields:
        offsets[name] = slice(start, start + size)
        start += size
    return offsets, start


# Regressor outputs. Rotations are 6D (see bodyrt.export.rotations), cameras are (raw scale, tx, ty).
BODY_PARAMS, BODY_PARAM_SIZE = _slices([
    ("global_orient", 6),
    ("body_pose", 21 * 6),
    ("left_hand_pose", 15 * 6),
    ("right_hand_pose", 15 * 6),
    ("jaw_pose", 6),
    ("betas", 10),
    ("expression", 10),
    ("camera", 3),
])
HAND_PARAMS, HAND_PARAM_SIZE = _slices([
    ("wrist_pose", 6),
    ("finger_pose", 15 * 6),
    ("betas", 10),
    ("camera", 3),
])
FACE_PARAMS, FACE_PARAM_SIZE = _slices([
    ("neck_pose", 6),
    ("jaw_pose", 6),
    ("betas", 100),
    ("expression", 50),
    ("camera", 3),
])
BODY_FEATURE_SIZE = 2048
PART_FEATURE_SIZE = 512  # ResNet18

assert BODY_PARAM_SIZE == 341 and HAND_PARAM_SIZE == 109 and FACE_PARAM_SIZE == 165

# SMPL-X skeleton joints used by attention and merge (indices into the 55 skeleton joints).
NECK_JOINT = 12
LEFT_WRIST_JOINT = 20
RIGHT_WRIST_JOINT = 21
# body_pose holds joints 1..21, so the wrists are its entries 19 and 20.
LEFT_WRIST_IN_BODY_POSE = LEFT_WRIST_JOINT - 1
RIGHT_WRIST_IN_BODY_POSE = RIGHT_WRIST_JOINT - 1

# Part joint index sets into the 144 SMPL-X joints (skeleton, extra vertex joints, landmarks).
RIGHT_HAND_JOINTS = [21, *range(40, 55), *range(71, 76)]
LEFT_HAND_JOINTS = [20, *range(25, 40), *range(66, 71)]
HEAD_JOINTS = [15, 22, 23, 24, *range(55, 60), *range(76, 144)]
NUM_SMPLX_JOINTS_WITH_CONTOUR = 144
