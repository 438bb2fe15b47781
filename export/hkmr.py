"""HKMR, hierarchical kinematic human mesh recovery (Georgakis et al., ECCV 2020), as a PyTorch stage.

    body crop (N, 3, 224, 224) -> ResNet50 feature f (N, 2048)
    start: mean pose (24 x 3 axis-angle), mean betas (10), mean camera (3)     (checkpoint buffers)
    3 outer iterations of
        betas  += shape MLP([f, betas])                       2058 -> 512 -> 128 -> 10
        root chain (pelvis, spine1, spine2, spine3) refines its joints from [f, betas, root pose]
        arm, leg and head chains refine theirs from [f, betas, root pose, own pose]
        camera += camera MLP([f, camera])                     2051 -> 512 -> 128 -> 3
    SMPL(betas, pose) -> vertices (N, 6890, 3), joints (N, 45, 3)

From the paper's supplement (seed 004): the chain embedding E_c is two 32-unit FC layers with ReLU,
its input is 2070 (root), 2085 (arms), 2082 (legs) or 2076 (head) wide; every joint has one FC head
with 3 outputs (an axis-angle update); 4 inner iterations (2 forward-backward cycles); 3 outer
iterations; shape and camera MLPs 512, 128, 10 / 3; the VAE pose prior 69 -> 512 -> 32 -> 512 -> 69.
The input widths fix what a chain sees: 2048 feature + 10 betas + 12 root-chain pose (+ 3 per own joint).

What the supplement leaves open, chosen here: an inner iteration sweeps the chain's joints once,
outwards on even sweeps and inwards on odd ones, re-embedding the chain's current state before each
joint's update (so later joints see earlier updates); the shape and camera MLPs see the feature and
their current value and add an update, as HMR's regressor does; the camera is HMR's weak perspective,
projected = s * (X[:, :2] + t), with s used as regressed. Dropout is training-only and holds no weights.
The VAE prior is a module of the checkpoint (`pose_prior.*`) used only by the training losses; the
exported stage never runs it.
"""

import torch
from torch import nn

from bodyrt.export.backbones import resnet50
from bodyrt.export.rotations import axis_angle_to_matrix

FEATURE_SIZE = 2048
NUM_BETAS = 10
NUM_SMPL_JOINTS = 24
EMBEDDING_SIZE = 32
INNER_ITERATIONS = 4
OUTER_ITERATIONS = 3
SHAPE_MLP_SIZES = (512, 128, NUM_BETAS)
CAMERA_MLP_SIZES = (512, 128, 3)
PRIOR_HIDDEN_SIZE = 512
PRIOR_LATENT_SIZE = 32
PRIOR_POSE_SIZE = 3 * (NUM_SMPL_JOINTS - 1)  # body pose without the root, axis-angle
INPUT_SIZE = 224

# SMPL joint ids of each chain, from where it starts outwards. Every joint is in exactly one chain.
ROOT_CHAIN = "root"
CHAINS = {
    "root": (0, 3, 6, 9),  # pelvis, spine1, spine2, spine3
    "left_arm": (13, 16, 18, 20, 22),  # collar, shoulder, elbow, wrist, hand
    "right_arm": (14, 17, 19, 21, 23),
    "left_leg": (1, 4, 7, 10),  # hip, knee, ankle, foot
    "right_leg": (2, 5, 8, 11),
    "head": (12, 15),  # neck, head
}
EMBEDDING_INPUT_SIZES = {"root": 2070, "left_arm": 2085, "right_arm": 2085, "left_leg": 2082,
                         "right_leg": 2082, "head": 2076}  # the supplement's numbers

# Start of the regressor in untrained checkpoints: HMR's convention of a body upright in image
# coordinates (y down) is a root rotation of pi about x; camera scale 0.9.
MEAN_ROOT_AXIS_ANGLE = (3.141592653589793, 0.0, 0.0)
MEAN_CAMERA = (0.9, 0.0, 0.0)


def chain_input_size(chain: str) -> int:
    """Width of [feature, betas, root-chain pose, own pose] for one chain."""
    own = 3 * len(CHAINS[chain])
    context = 0 if chain == ROOT_CHAIN else 3 * len(CHAINS[ROOT_CHAIN])
    return FEATURE_SIZE + NUM_BETAS + context + own


assert all(chain_input_size(name) == size for name, size in EMBEDDING_INPUT_SIZES.items())
assert sorted(joint for joints in CHAINS.values() for joint in joints) == list(range(NUM_SMPL_JOINTS))


def mlp(input_size: int, sizes) -> nn.Sequential:
    """Linear layers of the given output sizes with ReLU between them (keys `0.*`, `2.*`, `4.*`)."""
    layers = []
    for index, size in enumerate(sizes):
        layers.append(nn.Linear(input_size, size))
        if index < len(sizes) - 1:
            layers.append(nn.ReLU())
        input_size = size
    return nn.Sequential(*layers)


class KinematicChain(nn.Module):
    """One chain Q_c: an embedding E_c (two 32-unit FC + ReLU) and a 3-output FC head per joint.

    Keys: `embedding.0.*`, `embedding.2.*`, `delta_heads.{k}.*` (k = position in the chain).
    """

    def __init__(self, name: str):
        super().__init__()
        self.joints = CHAINS[name]
        self.embedding = nn.Sequential(nn.Linear(chain_input_size(name), EMBEDDING_SIZE), nn.ReLU(),
                                       nn.Linear(EMBEDDING_SIZE, EMBEDDING_SIZE), nn.ReLU())
        self.delta_heads = nn.ModuleList(nn.Linear(EMBEDDING_SIZE, 3) for _ in self.joints)

    def project_feature(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2048) -> (N, 32): the feature's share of the first embedding layer, bias included.

        The first layer is linear in its concatenated input, and the feature never changes, so its
        share is computed once per image instead of at each of the 3 x 4 x K joint updates.
        """
        first = self.embedding[0]
        return features @ first.weight[:, :FEATURE_SIZE].T + first.bias

    def refine(self, feature_share: torch.Tensor, betas: torch.Tensor, context: list, pose: list) -> list:
        """INNER_ITERATIONS sweeps over the chain's joints; returns the updated pose list.

        feature_share (N, 32) from project_feature; betas (N, 10); context: the root chain's joint
        rotations, a list of (N, 3) (empty for the root chain); pose: list of 24 (N, 3) axis-angle
        rotations. Only this chain's entries change.

        Each update embeds the chain's current state [feature, betas, context, own pose]. The first
        embedding layer is linear, so after a joint moves by delta its pre-activation moves by
        delta @ (that joint's 3 weight rows): the same numbers as re-embedding the whole state,
        with a graph small enough to export in seconds rather than minutes.
        """
        pose = list(pose)
        state_weights = self.embedding[0].weight[:, FEATURE_SIZE:].T  # (width - 2048, 32)
        state = torch.cat([betas, *context, *(pose[joint] for joint in self.joints)], dim=1)
        pre_activation = feature_share + state @ state_weights
        first_own_row = NUM_BETAS + 3 * len(context)
        joint_rows = [state_weights[first_own_row + 3 * k:first_own_row + 3 * k + 3] for k in range(len(self.joints))]
        positions = list(range(len(self.joints)))
        for sweep in range(INNER_ITERATIONS):
            for position in (positions if sweep % 2 == 0 else positions[::-1]):
                embedding = torch.relu(self.embedding[2](torch.relu(pre_activation)))
                delta = self.delta_heads[position](embedding)
                joint = self.joints[position]
                pose[joint] = pose[joint] + delta
                pre_activation = pre_activation + delta @ joint_rows[position]
        return pose


class HKMRRegressor(nn.Module):
    """feature (N, 2048) -> pose (N, 24, 3) axis-angle, betas (N, 10), camera (N, 3) (s, tx, ty).

    Keys: `chains.<name>.*`, `shape_mlp.{0,2,4}.*`, `camera_mlp.{0,2,4}.*`, and the start buffers
    `mean_pose` (24, 3), `mean_betas` (10,), `mean_camera` (3,).
    """

    def __init__(self):
        super().__init__()
        self.chains = nn.ModuleDict({name: KinematicChain(name) for name in CHAINS})
        self.shape_mlp = mlp(FEATURE_SIZE + NUM_BETAS, SHAPE_MLP_SIZES)
        self.camera_mlp = mlp(FEATURE_SIZE + 3, CAMERA_MLP_SIZES)
        mean_pose = torch.zeros(NUM_SMPL_JOINTS, 3)
        mean_pose[0] = torch.tensor(MEAN_ROOT_AXIS_ANGLE)
        self.register_buffer("mean_pose", mean_pose)
        self.register_buffer("mean_betas", torch.zeros(NUM_BETAS))
        self.register_buffer("mean_camera", torch.tensor(MEAN_CAMERA))

    def forward(self, features: torch.Tensor):
        n = features.shape[0]
        pose = [self.mean_pose[joint].expand(n, 3) for joint in range(NUM_SMPL_JOINTS)]
        betas = self.mean_betas.expand(n, NUM_BETAS)
        camera = self.mean_camera.expand(n, 3)
        shares = {name: chain.project_feature(features) for name, chain in self.chains.items()}
        for _ in range(OUTER_ITERATIONS):
            betas = betas + self.shape_mlp(torch.cat([features, betas], dim=1))
            pose = self.chains[ROOT_CHAIN].refine(shares[ROOT_CHAIN], betas, [], pose)
            root_pose = [pose[joint] for joint in CHAINS[ROOT_CHAIN]]
            for name, chain in self.chains.items():
                if name != ROOT_CHAIN:
                    pose = chain.refine(shares[name], betas, root_pose, pose)
            camera = camera + self.camera_mlp(torch.cat([features, camera], dim=1))
        return torch.stack(pose, dim=1), betas, camera


class PosePriorVAE(nn.Module):
    """The training-time VAE pose prior: body pose (N, 69) axis-angle <-> latent (N, 32).

    Encoder: FC 512 + BN + LeakyReLU, then two 32-unit FC heads (mean, log-variance) that make the
    32-d latent. Decoder: FC 512 + BN + LeakyReLU, FC 69. Keys: `encoder.{0,1}.*`, `latent_mean.*`,
    `latent_log_variance.*`, `decoder.{0,1,3}.*`.
    """

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(PRIOR_POSE_SIZE, PRIOR_HIDDEN_SIZE),
                                     nn.BatchNorm1d(PRIOR_HIDDEN_SIZE), nn.LeakyReLU())
        self.latent_mean = nn.Linear(PRIOR_HIDDEN_SIZE, PRIOR_LATENT_SIZE)
        self.latent_log_variance = nn.Linear(PRIOR_HIDDEN_SIZE, PRIOR_LATENT_SIZE)
        self.decoder = nn.Sequential(nn.Linear(PRIOR_LATENT_SIZE, PRIOR_HIDDEN_SIZE),
                                     nn.BatchNorm1d(PRIOR_HIDDEN_SIZE), nn.LeakyReLU(),
                                     nn.Linear(PRIOR_HIDDEN_SIZE, PRIOR_POSE_SIZE))

    def encode(self, body_pose: torch.Tensor):
        """(N, 69) -> (mean (N, 32), log-variance (N, 32))."""
        hidden = self.encoder(body_pose)
        return self.latent_mean(hidden), self.latent_log_variance(hidden)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(N, 32) -> (N, 69) axis-angle body pose."""
        return self.decoder(latent)

    def forward(self, body_pose: torch.Tensor):
        """(N, 69) -> (reconstruction (N, 69), mean, log-variance); samples the latent in training mode."""
        mean, log_variance = self.encode(body_pose)
        latent = mean
        if self.training:
            latent = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)
        return self.decode(latent), mean, log_variance

    @staticmethod
    def kl_divergence(mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
        """(N,) KL(q(z | pose) || N(0, I)), the prior's regulariser (weight 0.001 in the paper)."""
        return -0.5 * (1.0 + log_variance - mean * mean - torch.exp(log_variance)).sum(dim=1)


class HKMR(nn.Module):
    """The whole trained model: `encoder.*` (ResNet50), `regressor.*`, `pose_prior.*` (training only)."""

    input_size = INPUT_SIZE

    def __init__(self):
        super().__init__()
        self.encoder = resnet50()
        self.regressor = HKMRRegressor()
        self.pose_prior = PosePriorVAE()

    def forward(self, body_crops: torch.Tensor):
        """body_crops (N, 3, 224, 224) normalised -> (pose (N, 24, 3), betas (N, 10), camera (N, 3))."""
        return self.regressor(self.encoder(body_crops))


class HKMRStage(nn.Module):
    """The exported graph: body crops -> SMPL mesh, joints and parameters. Holds no pose prior.

    Inputs:  body_crops (N, 3, 224, 224) float32, ImageNet-normalised.
    Outputs: vertices (N, 6890, 3), joints (N, 45, 3) model space, metres; global_orient (N, 3, 3);
             body_pose (N, 23, 3, 3); betas (N, 10); camera_scale (N,); camera_translation (N, 2).
    """

    OUTPUT_NAMES = ("vertices", "joints", "global_orient", "body_pose", "betas", "camera_scale",
                    "camera_translation")

    def __init__(self, model: HKMR, body_model):
        super().__init__()
        self.encoder = model.encoder
        self.regressor = model.regressor
        self.body_model = body_model

    def forward(self, body_crops: torch.Tensor):
        pose, betas, camera = self.regressor(self.encoder(body_crops))
        rotations = axis_angle_to_matrix(pose)
        vertices, joints = self.body_model(betas=betas, global_orient=rotations[:, 0], body_pose=rotations[:, 1:])
        return vertices, joints, rotations[:, 0], rotations[:, 1:], betas, camera[:, 0], camera[:, 1:3]


def untrained_adjustments_(model: HKMR, generator: torch.Generator, update_std: float = 0.01) -> None:
    """After bodyrt's generic random init: every output layer of the regressor gets std `update_std`
    and zero bias, so the untrained prediction moves visibly away from the mean but stays a body."""
    regressor = model.regressor
    heads = [head for chain in regressor.chains.values() for head in chain.delta_heads]
    heads += [regressor.shape_mlp[-1], regressor.camera_mlp[-1]]
    with torch.no_grad():
        for head in heads:
            head.weight.normal_(0.0, update_std, generator=generator)
            head.bias.zero_()
