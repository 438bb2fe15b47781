"""The reference pipeline in eager PyTorch: the baseline every export and benchmark is checked against.

image (H, W, 3) uint8 + person boxes -> body crop -> body stage (network, joints-only SMPL-X,
attention) -> hand and face crops from the full-resolution image with grid_sample -> hand and face
networks -> merge -> final SMPL-X. The order is the bundle's: the reference runs the manifest's steps
(bodyrt.export.bundle.expose_steps) through the runtime's Pipeline on the torch executor.
"""

import numpy as np
import torch

from bodyrt.errors import BodyModelError
from bodyrt.export import layout
from bodyrt.export.body_model import BodyModel, load_body_model
from bodyrt.export.checkpoint import build_expose_networks, load_expose_checkpoint
from bodyrt.export.stages import BodyStage, MergeStage, PartStage
from bodyrt.export.torch_executor import TorchStage, reference_manifest, sample_part_crops, torch_pipeline
from bodyrt.export.torch_executor import normalise_image as normalise_with
from bodyrt.runtime.pipeline import Result

__all__ = ["ReferencePipeline", "ReferenceResult", "normalise_image", "sample_part_crops"]
ReferenceResult = Result  # outputs (person on the first axis), timings_ms by step name, info
PREPROCESSING = {"mean": layout.IMAGENET_MEAN, "std": layout.IMAGENET_STD, "pixel_scale": layout.PIXEL_SCALE}


def normalise_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32, ImageNet-normalised."""
    return normalise_with(image, layout.IMAGENET_MEAN, layout.IMAGENET_STD, layout.PIXEL_SCALE)


class ReferencePipeline:
    """The whole ExPose pipeline in eager PyTorch, from an official or bodyrt checkpoint."""

    def __init__(self, checkpoint_path, body_model_path, threads: int | None = None):
        from bodyrt.export.bundle import RESULTS, expose_steps, stage_specs

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
        stages = [TorchStage(spec["name"], spec["module"], spec["inputs"], spec["outputs"])
                  for spec in stage_specs(self)]
        self.manifest = reference_manifest("expose", stages, expose_steps(), RESULTS, PREPROCESSING, self.faces,
                                           int(self.body_model_data.arrays["v_template"].shape[0]), "smplx",
                                           checkpoint_path, body_model_path, self.untrained)
        self.pipeline = torch_pipeline(self.manifest, stages)

    def __call__(self, image: np.ndarray, person_boxes) -> Result:
        """image (H, W, 3) uint8 RGB; person_boxes (N, 4) x0, y0, x1, y1 pixels -> Result."""
        result = self.pipeline(image, person_boxes)
        tensors = self.pipeline.executor.tensors_torch
        self.last_intermediates = {name: tensors[name] for name in (
            "body_crops", "crop_transforms", "hand_crops", "hand_starts", "face_crops", "face_starts",
            "body_params", "part_boxes", "hand_params", "face_params")}
        return result
