"""The exportable stages of the ExPose pipeline, as the bundle cuts it.

    body  : body crops + crop transforms -> body parameters, part boxes, hand and face starts
            (body network, joints-only SMPL-X, body-driven attention: everything up to the crops)
    hand  : hand crops + starts -> hand parameters (right hands and mirrored left hands in one batch)
    face  : face crops + starts -> face parameters
    merge : body, hand and face parameters -> final SMPL-X mesh, joints and every part's rotations

Only the crops themselves happen between stages (on the host, or in the CUDA kernel on a GPU), so
host work between graphs is a bilinear sampler and nothing else. Each stage is a plain nn.Module
with tensors in and tensors out, exported to ONNX as it is.
"""

import torch
import torch.nn.functional as F

from bodyrt.export import layout
from bodyrt.export.rotations import global_rotations, matrix_to_rot6d, mirror_rotation, rot6d_to_matrix

# Order of the part boxes everywhere: right hand, left hand, face.
PART_NAMES = ("right_hand", "left_hand", "face")


def split_body_params(params: torch.Tensor) -> dict:
    """(N, 341) body regressor output -> named tensors; rotations decoded to (N, ..., 3, 3)."""
    n = params.shape[0]
    p = {name: params[:, s] for name, s in layout.BODY_PARAMS.items()}
    return {
        "global_orient": rot6d_to_matrix(p["global_orient"]),
        "body_pose": rot6d_to_matrix(p["body_pose"].reshape(n, 21, 6)),
        "left_hand_pose": rot6d_to_matrix(p["left_hand_pose"].reshape(n, 15, 6)),
        "right_hand_pose": rot6d_to_matrix(p["right_hand_pose"].reshape(n, 15, 6)),
        "jaw_pose": rot6d_to_matrix(p["jaw_pose"]),
        "betas": p["betas"],
        "expression": p["expression"],
        "camera": p["camera"],
    }


def weak_perspective(camera_raw: torch.Tensor):
    """(N, 3) raw camera -> (scale (N,), translation (N, 2)); scale = softplus(raw scale)."""
    return F.softplus(camera_raw[:, 0]), camera_raw[:, 1:3]


def project_to_body_crop(joints: torch.Tensor, camera_raw: torch.Tensor, crop_size: int) -> torch.Tensor:
    """(N, J, 3) model-space joints -> (N, J, 2) body-crop pixels through the weak-perspective camera."""
    scale, translation = weak_perspective(camera_raw)
    projected = scale[:, None, None] * (joints[:, :, :2] + translation[:, None, :])
    return (projected * 0.5 + 0.5) * crop_size


def part_box(points: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """(N, K, 2) points -> (N, 3) square box (cx, cy, size): tight min/max, size = longer side x factor."""
    lower = points.min(dim=1).values
    upper = points.max(dim=1).values
    centre = (lower + upper) * 0.5
    size = (upper - lower).max(dim=1).values * scale_factor
    return torch.cat([centre, size[:, None]], dim=1)


def box_to_full_image(boxes: torch.Tensor, crop_transforms: torch.Tensor) -> torch.Tensor:
    """(N, 3) boxes in body-crop pixels -> full-image pixels, by the inverse of T = diag(k) + t."""
    k = crop_transforms[:, 0, 0:1]
    translation = crop_transforms[:, 0:2, 2]
    centre = (boxes[:, 0:2] - translation) / k
    return torch.cat([centre, boxes[:, 2:3] / k], dim=1)


def mirror_pose(rotations: torch.Tensor) -> torch.Tensor:
    """Mirror (..., 3, 3) rotations left <-> right; its own inverse."""
    return mirror_rotation(rotations)


class BodyStage(torch.nn.Module):
    """Body network + joints-only SMPL-X + body-driven attention.

    Inputs:  body_crops (N, 3, 256, 256) float32, normalised;
             crop_transforms (N, 3, 3) float32, full-image pixels -> body-crop pixels.
    Outputs: body_params (N, 341); part_boxes (N, 3, 3) (cx, cy, size) in full-image pixels for
             right hand, left hand, face; hand_starts (N, 2, 109) right then left (mirrored);
             face_starts (N, 1, 165).
    """

    def __init__(self, body_network, body_model, part_means: dict):
        super().__init__()
        self.body_network = body_network
        self.body_model = body_model
        self.parents = list(body_model.parents)
        self.register_buffer("right_hand_joints", torch.tensor(layout.RIGHT_HAND_JOINTS), persistent=False)
        self.register_buffer("left_hand_joints", torch.tensor(layout.LEFT_HAND_JOINTS), persistent=False)
        self.register_buffer("head_joints", torch.tensor(layout.HEAD_JOINTS), persistent=False)
        # The parts of the hand and face starts that are the part predictors' own means (checkpoint
        # buffers), not conditioned on the body: hand shape and camera, neck, face shape and camera.
        for name in ("hand_betas", "hand_camera", "neck_pose", "face_betas", "face_camera"):
            self.register_buffer(name + "_mean", torch.as_tensor(part_means[name], dtype=torch.float32).reshape(-1),
                                 persistent=False)

    def forward(self, body_crops: torch.Tensor, crop_transforms: torch.Tensor):
        params = self.body_network(body_crops)
        body = split_body_params(params)
        n = params.shape[0]
        joints = self.body_model.joints_only(
            betas=body["betas"], global_orient=body["global_orient"], body_pose=body["body_pose"],
            left_hand_pose=body["left_hand_pose"], right_hand_pose=body["right_hand_pose"],
            jaw_pose=body["jaw_pose"], expression=body["expression"])
        joints_px = project_to_body_crop(joints, body["camera"], layout.BODY_CROP_SIZE)
        boxes = torch.stack([
            part_box(joints_px[:, self.right_hand_joints], layout.HAND_BOX_SCALE),
            part_box(joints_px[:, self.left_hand_joints], layout.HAND_BOX_SCALE),
            part_box(joints_px[:, self.head_joints], layout.FACE_BOX_SCALE),
        ], dim=1)
        part_boxes = box_to_full_image(boxes.reshape(n * 3, 3),
                                       crop_transforms.repeat_interleave(3, dim=0)).reshape(n, 3, 3)
        return params, part_boxes, self.hand_starts(params, body), self.face_starts(params, body)

    def wrist_global_rotations(self, body: dict) -> torch.Tensor:
        """(N, 2, 3, 3) absolute rotations of the right and left wrists from the body's chain."""
        local = torch.cat([body["global_orient"][:, None], body["body_pose"]], dim=1)  # joints 0..21
        absolute = global_rotations(local, self.parents[:22])
        return torch.stack([absolute[:, layout.RIGHT_WRIST_JOINT], absolute[:, layout.LEFT_WRIST_JOINT]], dim=1)

    def hand_starts(self, params: torch.Tensor, body: dict) -> torch.Tensor:
        """(N, 2, 109) starts of the hand regressor, right hand then mirrored left hand.

        Wrists: absolute rotation from the body's chain, encoded. Right fingers: the body regressor's
        raw 6D outputs as they are (the released model never decodes them: with unnormalised outputs a
        decode/encode round trip changes the hand by tens of mm). Left fingers: decoded, mirrored,
        encoded. Shape and camera: the hand predictor's means.
        """
        n = params.shape[0]
        wrists = self.wrist_global_rotations(body)
        tail = torch.cat([self.hand_betas_mean, self.hand_camera_mean]).expand(n, -1)
        right = torch.cat([
            matrix_to_rot6d(wrists[:, 0]),
            params[:, layout.BODY_PARAMS["right_hand_pose"]],
            tail,
        ], dim=1)
        left = torch.cat([
            matrix_to_rot6d(mirror_pose(wrists[:, 1])),
            matrix_to_rot6d(mirror_pose(body["left_hand_pose"])).reshape(n, 90),
            tail,
        ], dim=1)
        return torch.stack([right, left], dim=1)

    def face_starts(self, params: torch.Tensor, body: dict) -> torch.Tensor:
        """(N, 1, 165) starts of the face regressor: the head predictor's neck mean (the released
        model does not condition the neck on the body), the body regressor's raw jaw 6D, the head
        predictor's shape mean, the body expression zero-padded to 50, the head camera mean."""
        n = params.shape[0]
        expression = body["expression"]
        padding = expression.new_zeros(n, layout.FACE_PARAMS["expression"].stop
                                       - layout.FACE_PARAMS["expression"].start - expression.shape[1])
        return torch.cat([
            self.neck_pose_mean.expand(n, -1),
            params[:, layout.BODY_PARAMS["jaw_pose"]],
            self.face_betas_mean.expand(n, -1),
            expression, padding,
            self.face_camera_mean.expand(n, -1),
        ], dim=1)[:, None]


class PartStage(torch.nn.Module):
    """A hand or face network over P parts per person.

    crops (N, P, 3, n, n) + starts (N, P, K) -> parameters (N, P, K); the network sees N*P crops.
    """

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, crops: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        people, parts = starts.shape[0], starts.shape[1]
        flat = self.network(crops.flatten(0, 1), starts.flatten(0, 1))
        return flat.reshape(people, parts, flat.shape[-1])


class MergeStage(torch.nn.Module):
    """Body, hand and face parameters -> the final SMPL-X mesh and every part's rotation.

    Inputs:  body_params (N, 341); hand_params (N, 2, 109) right then left (mirrored frame);
             face_params (N, 1, 165).
    Outputs: vertices (N, 10475, 3), joints (N, 144, 3) model space, metres; global_orient
             (N, 3, 3); body_pose (N, 21, 3, 3); left_hand_pose, right_hand_pose (N, 15, 3, 3);
             jaw_pose (N, 3, 3); betas (N, 10); expression (N, 10); camera_scale (N,);
             camera_translation (N, 2).
    """

    OUTPUT_NAMES = ("vertices", "joints", "global_orient", "body_pose", "left_hand_pose",
                    "right_hand_pose", "jaw_pose", "betas", "expression", "camera_scale",
                    "camera_translation")

    def __init__(self, body_model):
        super().__init__()
        self.body_model = body_model
        self.parents = list(body_model.parents)

    def forward(self, body_params: torch.Tensor, hand_params: torch.Tensor, face_params: torch.Tensor):
        body = split_body_params(body_params)
        n = body_params.shape[0]
        merged = merge_parts(body, hand_params, face_params, self.parents)
        vertices, joints = self.body_model(
            betas=merged["betas"], global_orient=merged["global_orient"], body_pose=merged["body_pose"],
            left_hand_pose=merged["left_hand_pose"], right_hand_pose=merged["right_hand_pose"],
            jaw_pose=merged["jaw_pose"], expression=merged["expression"])
        scale, translation = weak_perspective(body["camera"])
        return (vertices, joints, merged["global_orient"], merged["body_pose"], merged["left_hand_pose"],
                merged["right_hand_pose"], merged["jaw_pose"], merged["betas"], merged["expression"],
                scale.reshape(n), translation)


def merge_parts(body: dict, hand_params: torch.Tensor, face_params: torch.Tensor, parents: list) -> dict:
    """Replace wrists, fingers, jaw and expression[:10] of the body prediction by the part networks'.

    body: split_body_params output; hand_params (N, 2, 109) right then left in the mirrored frame;
    face_params (N, 1, 165). Everything else (global orient, other body joints, betas, camera) stays.
    """
    n = hand_params.shape[0]
    hand = {name: hand_params[:, :, s] for name, s in layout.HAND_PARAMS.items()}
    wrist_absolute = rot6d_to_matrix(hand["wrist_pose"])  # (N, 2, 3, 3)
    fingers = rot6d_to_matrix(hand["finger_pose"].reshape(n, 2, 15, 6))
    right_wrist = wrist_absolute[:, 0]
    left_wrist = mirror_pose(wrist_absolute[:, 1])

    local = torch.cat([body["global_orient"][:, None], body["body_pose"]], dim=1)
    absolute = global_rotations(local, parents[:22])
    right_parent = absolute[:, parents[layout.RIGHT_WRIST_JOINT]]
    left_parent = absolute[:, parents[layout.LEFT_WRIST_JOINT]]
    right_wrist_local = right_parent.transpose(1, 2) @ right_wrist
    left_wrist_local = left_parent.transpose(1, 2) @ left_wrist

    body_pose = torch.cat([
        body["body_pose"][:, :layout.LEFT_WRIST_IN_BODY_POSE],
        left_wrist_local[:, None],
        right_wrist_local[:, None],
        body["body_pose"][:, layout.RIGHT_WRIST_IN_BODY_POSE + 1:],
    ], dim=1)
    face = {name: face_params[:, 0, s] for name, s in layout.FACE_PARAMS.items()}
    return {
        "global_orient": body["global_orient"],
        "body_pose": body_pose,
        "left_hand_pose": mirror_pose(fingers[:, 1]),
        "right_hand_pose": fingers[:, 0],
        "jaw_pose": rot6d_to_matrix(face["jaw_pose"]),
        "betas": body["betas"],
        "expression": face["expression"][:, :body["expression"].shape[1]],
    }
