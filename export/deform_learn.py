"""The deform-and-learn regressor (Yoshiyasu et al.), as a PyTorch stage: ResNet50 -> 132 numbers ->
the SMPL template posed by quaternions and stretched by segment scales.

The 132 parameters (the appendix, seed 002, gives the total and the parts: quaternion joint
rotations a, segment scales S, a 9-number global rotation R made a rotation by Gram-Schmidt, scale s
and translation t; the layout below is bodyrt's, in the paper's order theta = [a, S, R, s, t]):

    offset  size  name               meaning
         0    96  joint_quaternions  24 x (w, x, y, z), each SMPL joint's rotation relative to its
                                     parent (joint 0: the root's own rotation), normalised before use
        96    24  segment_scales     uniform scale of each SMPL segment (the part skinned to joint j)
       120     9  global_rotation    3x3, row-major, its columns orthonormalised by Gram-Schmidt;
                                     applied to the whole body before the root rotation
       129     1  scale              weak-perspective scale s
       130     2  translation        weak-perspective translation t: crop = s * (X[:, :2] + t),
                                     in [-1, 1] crop coordinates, as the other architectures

The body: SMPL's template mesh, joint regressor, skinning weights and tree; no shape or pose blend
shapes (the segment scales take the place of shape). Joint j's segment is scaled by S_j about the
joint, so with model-space rotations G_0 = R Q_0, G_j = G_parent Q_j:
    posed joint    P_0 = J_0,  P_j = P_parent + S_parent G_parent (J_j - J_parent)
    skinning       x -> sum_j w_j (S_j G_j (x - J_j) + P_j)
All scales equal to c scale the posed body by c about the root joint.
"""

import torch
from torch import nn

from bodyrt.export.backbones import Bottleneck, ResNet
from bodyrt.export.body_model import SMPL_VERTEX_JOINT_IDS, BodyModelData
from bodyrt.export.skinning import skin
from bodyrt.export.layout import _slices
from bodyrt.export.rotations import cross, matrix_to_rot6d, rot6d_to_matrix

NUM_JOINTS = 24
INPUT_SIZE = 224
PARAMS, PARAM_SIZE = _slices([
    ("joint_quaternions", NUM_JOINTS * 4),
    ("segment_scales", NUM_JOINTS),
    ("global_rotation", 9),
    ("scale", 1),
    ("translation", 2),
])
assert PARAM_SIZE == 132

IDENTITY_QUATERNION = (1.0, 0.0, 0.0, 0.0)
# The start the untrained checkpoint's output bias encodes: upright in image coordinates (y down), a
# rotation of pi about x; unit scales; camera scale 0.9.
MEAN_GLOBAL_ROTATION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
MEAN_CAMERA_SCALE = 0.9


def quaternion_to_matrix(quaternions: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(..., 4) quaternions (w, x, y, z), any non-zero length -> (..., 3, 3) rotation matrices.

    The quaternion is used as q / |q|: R = I + s [[-(y2+z2), xy-wz, xz+wy], [xy+wz, -(x2+z2), yz-wx],
    [xz-wy, yz+wx, -(x2+y2)]] with s = 2 / |q|^2, so q and -q give the same R. Elementwise ops and
    one stack only: it exports with both torch exporters and runs in ONNX Runtime as it is.
    """
    w, x, y, z = quaternions[..., 0], quaternions[..., 1], quaternions[..., 2], quaternions[..., 3]
    s = 2.0 / torch.clamp(w * w + x * x + y * y + z * z, min=eps)
    rows = [
        [1.0 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
        [s * (x * y + w * z), 1.0 - s * (x * x + z * z), s * (y * z - w * x)],
        [s * (x * z - w * y), s * (y * z + w * x), 1.0 - s * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def gram_schmidt(matrices: torch.Tensor) -> torch.Tensor:
    """(..., 9) row-major 3x3 matrices M -> (..., 3, 3) with orthonormal columns b1, b2, b3.

    Gram-Schmidt over M's columns c1, c2, c3. b1 and b2 are those of the 6D representation (c1, c2
    are exactly its 3x2 input). The third step, c3 minus its parts along b1 and b2, normalised, is
    +-(b1 x b2) with the sign of (b1 x b2) . c3: so det = +1 when det M > 0 and -1 when det M < 0
    (a reflection; the registration's determinant loss keeps trained predictions at +1).
    """
    columns = matrices.reshape(matrices.shape[:-1] + (3, 3))
    first_two = rot6d_to_matrix(matrix_to_rot6d(columns))
    b1, b2 = first_two[..., 0], first_two[..., 1]
    normal = cross(b1, b2)
    along = (normal * columns[..., 2]).sum(dim=-1, keepdim=True)
    b3 = torch.where(along < 0, -normal, normal)
    return torch.stack([b1, b2, b3], dim=-1)


def split_params(params: torch.Tensor) -> dict:
    """(N, 132) -> quaternions (N, 24, 4), segment_scales (N, 24), global_rotation (N, 9),
    scale (N,), translation (N, 2)."""
    n = params.shape[0]
    part = {name: params[:, s] for name, s in PARAMS.items()}
    return {"joint_quaternions": part["joint_quaternions"].reshape(n, NUM_JOINTS, 4),
            "segment_scales": part["segment_scales"], "global_rotation": part["global_rotation"],
            "scale": part["scale"][:, 0], "translation": part["translation"]}


def scaled_transform_chain(rotations: torch.Tensor, scales: torch.Tensor, rest_joints: torch.Tensor,
                           parents: list):
    """Pose a skeleton whose segments are scaled.

    rotations (N, J, 3, 3) local (joint 0: model space); scales (N, J); rest_joints (J, 3);
    parents: Python list. Returns (scaled global rotations S_j G_j (N, J, 3, 3), posed joints (N, J, 3),
    skinning translations P_j - S_j G_j J_j (N, J, 3)).
    """
    n = rotations.shape[0]
    rotated = [rotations[:, 0]]
    positions = [rest_joints[0].expand(n, 3)]
    for joint in range(1, len(parents)):
        parent = parents[joint]
        bone = (rest_joints[joint] - rest_joints[parent]).expand(n, 3)[..., None]  # (N, 3, 1)
        stretched = scales[:, parent, None, None] * (rotated[parent] @ bone)
        positions.append(stretched[..., 0] + positions[parent])
        rotated.append(rotated[parent] @ rotations[:, joint])
    scaled_rotation = torch.stack(rotated, dim=1) * scales[:, :, None, None]
    posed_joints = torch.stack(positions, dim=1)
    translations = posed_joints - (scaled_rotation @ rest_joints[..., None])[..., 0]
    return scaled_rotation, posed_joints, translations


class SegmentScaledBody(nn.Module):
    """SMPL's template posed by joint rotations and stretched by segment scales (see the module doc).

    forward(joint_rotations (N, 24, 3, 3), segment_scales (N, 24)) -> vertices (N, 6890, 3),
    joints (N, 45, 3): 24 posed joints, then SMPL's 21 vertex joints, as BodyModel orders them.
    """

    def __init__(self, data: BodyModelData):
        super().__init__()
        self.parents = list(data.parents)
        self.faces = data.arrays["f"]
        template = torch.as_tensor(data.arrays["v_template"], dtype=torch.float32)
        regressor = torch.as_tensor(data.arrays["J_regressor"], dtype=torch.float64)
        self.register_buffer("v_template", template, persistent=False)
        self.register_buffer("rest_joints", (regressor @ template.double()).float(), persistent=False)
        self.register_buffer("lbs_weights", torch.as_tensor(data.arrays["weights"]), persistent=False)
        self.register_buffer("vertex_joint_ids", torch.tensor(SMPL_VERTEX_JOINT_IDS), persistent=False)

    def forward(self, joint_rotations: torch.Tensor, segment_scales: torch.Tensor):
        n = joint_rotations.shape[0]
        rotation, posed_joints, translations = scaled_transform_chain(
            joint_rotations, segment_scales, self.rest_joints, self.parents)
        vertices = skin(self.v_template.expand(n, -1, -1), self.lbs_weights, rotation, translations)
        return vertices, torch.cat([posed_joints, vertices[:, self.vertex_joint_ids]], dim=1)


class DeformAndLearnNetwork(ResNet):
    """ResNet50 with a 132-way `fc`: torchvision's resnet50(num_classes=132) key names.

    body_crops (N, 3, 224, 224) ImageNet-normalised -> params (N, 132) (layout: PARAMS).
    """

    input_size = INPUT_SIZE

    def __init__(self):
        super().__init__(Bottleneck, (3, 4, 6, 3))
        self.fc = nn.Linear(self.feature_size, PARAM_SIZE)

    def forward(self, body_crops: torch.Tensor) -> torch.Tensor:
        return self.fc(super().forward(body_crops))


class DeformAndLearnStage(nn.Module):
    """The exported graph: body crops -> posed template mesh, joints and parameters.

    Inputs:  body_crops (N, 3, 224, 224) float32, ImageNet-normalised.
    Outputs: vertices (N, 6890, 3), joints (N, 45, 3) model space, template units (metres);
             global_orient (N, 3, 3) = R Q_0, the root's model-space rotation; body_pose
             (N, 23, 3, 3) = Q_1..Q_23; segment_scales (N, 24); camera_scale (N,);
             camera_translation (N, 2).
    """

    OUTPUT_NAMES = ("vertices", "joints", "global_orient", "body_pose", "segment_scales", "camera_scale",
                    "camera_translation")

    def __init__(self, network: DeformAndLearnNetwork, body: SegmentScaledBody):
        super().__init__()
        self.network = network
        self.body = body

    def forward(self, body_crops: torch.Tensor):
        part = split_params(self.network(body_crops))
        local = quaternion_to_matrix(part["joint_quaternions"])  # (N, 24, 3, 3)
        root = gram_schmidt(part["global_rotation"]) @ local[:, 0]
        rotations = torch.cat([root[:, None], local[:, 1:]], dim=1)
        vertices, joints = self.body(rotations, part["segment_scales"])
        return (vertices, joints, root, local[:, 1:], part["segment_scales"], part["scale"],
                part["translation"])


def mean_params() -> torch.Tensor:
    """(132,) the untrained checkpoint's output bias: identity joints, unit scales, upright, s = 0.9."""
    mean = torch.zeros(PARAM_SIZE)
    mean[PARAMS["joint_quaternions"]] = torch.tensor(IDENTITY_QUATERNION).repeat(NUM_JOINTS)
    mean[PARAMS["segment_scales"]] = 1.0
    mean[PARAMS["global_rotation"]] = torch.tensor(MEAN_GLOBAL_ROTATION)
    mean[PARAMS["scale"]] = MEAN_CAMERA_SCALE
    return mean


def untrained_adjustments_(network: DeformAndLearnNetwork, generator: torch.Generator,
                           update_std: float = 0.005) -> None:
    """After bodyrt's generic random init: `fc` gets std `update_std` around the mean parameters."""
    with torch.no_grad():
        network.fc.weight.normal_(0.0, update_std, generator=generator)
        network.fc.bias.copy_(mean_params())
