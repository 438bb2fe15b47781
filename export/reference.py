"""The reference pipeline in eager PyTorch: the baseline every export and benchmark is checked against.

image (H, W, 3) uint8 + person boxes -> body crop -> body stage (network, joints-only SMPL-X,
attention) -> hand and face crops from the full-resolution image with grid_sample -> hand and face
networks -> merge -> final SMPL-X.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from bodyrt.errors import BodyModelError
from bodyrt.export import layout
from bodyrt.export.body_model import BodyModel, load_body_model
from bodyrt.export.checkpoint import build_expose_networks, load_expose_checkpoint
from bodyrt.export.stages import BodyStage, MergeStage, PartStage
from bodyrt.runtime.crops import body_crops
from bodyrt.runtime.pipeline import pinhole_camera


def normalise_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, ImageNet-normalised."""
    rgb = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(layout.IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(layout.IMAGENET_STD).reshape(3, 1, 1)
    return ((rgb - mean) / std)[None]


def sample_part_crops(normalised_image: torch.Tensor, boxes: torch.Tensor, crop_size: int,
                      mirror: torch.Tensor) -> torch.Tensor:
    """Bilinear crops of square boxes from the normalised full image, zero outside it.

    normalised_image (1, 3, H, W); boxes (K, 3) (cx, cy, size) full-image pixels; mirror (K,) bool.
    Crop pixel (u, v) samples x = cx - S/2 + S*u/(n-1), y = cy - S/2 + S*v/(n-1). Returns (K, 3, n, n).
    """
    _, _, height, width = normalised_image.shape
    steps = torch.arange(crop_size, dtype=torch.float64) / (crop_size - 1)
    boxes = boxes.double()
    left = boxes[:, 0:1] - boxes[:, 2:3] / 2
    top = boxes[:, 1:2] - boxes[:, 2:3] / 2
    xs = left + boxes[:, 2:3] * steps  # (K, n)
    ys = top + boxes[:, 2:3] * steps
    xs = torch.where(mirror[:, None], xs.flip(1), xs)
    grid_x = (2 * xs / (width - 1) - 1)[:, None, :].expand(-1, crop_size, -1)
    grid_y = (2 * ys / (height - 1) - 1)[:, :, None].expand(-1, -1, crop_size)
    grid = torch.stack([grid_x, grid_y], dim=-1).float()
    source = normalised_image.expand(len(boxes), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


@dataclass
class ReferenceResult:
    """Per-person arrays (first axis = person) and per-stage wall times in milliseconds."""

    outputs: dict
    timings_ms: dict = field(default_factory=dict)


class ReferencePipeline:
    """The whole ExPose pipeline in eager PyTorch, from an official or bodyrt checkpoint."""

    def __init__(self, checkpoint_path, body_model_path, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.body_model_data = load_body_model(body_model_path)  # first: it is read in a second
        if self.body_model_data.kind != "smplx":
            raise BodyModelError(
                f"{body_model_path}: an {self.body_model_data.kind.upper()} model; ExPose needs an SMPL-X model "
                "(SMPLX_NEUTRAL.npz or .pkl, 10475 vertices). SMPL models go with --arch hkmr or deform-and-learn")
        self.weights = load_expose_checkpoint(checkpoint_path)
        body_network, hand_network, face_network = build_expose_networks(self.weights)
        body_model = BodyModel(self.body_model_data)
        self.body_stage = BodyStage(body_network, body_model, self.weights.part_means).eval()
        self.hand_stage = PartStage(hand_network).eval()
        self.face_stage = PartStage(face_network).eval()
        self.merge_stage = MergeStage(body_model).eval()
        self.faces = np.asarray(self.body_model_data.arrays["f"], dtype=np.int64)
        self.untrained = bool(getattr(self.weights, "untrained", False))

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, person_boxes) -> ReferenceResult:
        """image (H, W, 3) uint8 RGB; person_boxes (N, 4) x0, y0, x1, y1 pixels -> ReferenceResult."""
        timings = {}
        clock = time.perf_counter()

        def lap(name):
            nonlocal clock
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + (now - clock) * 1000.0
            clock = now

        person_boxes = np.asarray(person_boxes, dtype=np.float32).reshape(-1, 4)
        crops, transforms = body_crops(image, person_boxes, layout.IMAGENET_MEAN, layout.IMAGENET_STD,
                                       crop_size=layout.BODY_CROP_SIZE, scale=layout.BODY_BOX_SCALE)
        crops, transforms = torch.from_numpy(crops), torch.from_numpy(transforms)
        lap("body_crop")
        body_params, part_boxes, hand_starts, face_starts = self.body_stage(crops, transforms)
        lap("body")
        n = len(person_boxes)
        normalised = normalise_image(image)
        mirror = torch.tensor([False, True] * n)
        hand_crops = sample_part_crops(normalised, part_boxes[:, :2].reshape(2 * n, 3),
                                       layout.HAND_CROP_SIZE, mirror)
        face_crops = sample_part_crops(normalised, part_boxes[:, 2], layout.FACE_CROP_SIZE,
                                       torch.zeros(n, dtype=torch.bool))
        self.last_intermediates = {
            "body_crops": crops, "crop_transforms": transforms,
            "hand_crops": hand_crops.reshape(n, 2, *hand_crops.shape[1:]), "hand_starts": hand_starts,
            "face_crops": face_crops.reshape(n, 1, *face_crops.shape[1:]), "face_starts": face_starts,
        }
        lap("part_crops")
        hand_params = self.hand_stage(self.last_intermediates["hand_crops"], hand_starts)
        lap("hand")
        face_params = self.face_stage(self.last_intermediates["face_crops"], face_starts)
        lap("face")
        merged = self.merge_stage(body_params, hand_params, face_params)
        lap("merge")
        self.last_intermediates.update(body_params=body_params, part_boxes=part_boxes,
                                       hand_params=hand_params, face_params=face_params)
        outputs = {name: value.numpy() for name, value in zip(MergeStage.OUTPUT_NAMES, merged)}
        outputs["part_boxes"] = part_boxes.numpy()
        outputs["crop_transforms"] = transforms.numpy()
        outputs.update(pinhole_camera(outputs["camera_scale"], outputs["camera_translation"],
                                      transforms.numpy(), layout.FOCAL_LENGTH_PX, layout.BODY_CROP_SIZE))
        return ReferenceResult(outputs=outputs, timings_ms=timings)
