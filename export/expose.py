"""The three ExPose networks: body, hand and face, each a backbone and an iterative regressor.

Attribute names follow the released checkpoint, so that (with `smplx.`, `smplx.hand_predictor.` and
`smplx.head_predictor.` stripped) its tensors load by name:

    BodyNetwork  backbone.* (HRNet-W48 + head)   regressor.module.{layer_000,layer_001}.0.*,
                                                 regressor.module.output_layer.*, regressor.mean_param
    HandNetwork  backbone.* (ResNet18)           regressor.module.*
    FaceNetwork  backbone.* (ResNet18)           regressor.module.*

The body regressor starts from its mean (a checkpoint buffer); the hand and face regressors start from
a start vector built from the body prediction (see bodyrt.export.stages). Only plain tensor ops, a
fixed number of iterations, no data-dependent control flow: the modules export to ONNX as they are.
"""

import torch
from torch import nn

from bodyrt.export import layout
from bodyrt.export.backbones import HRNetBackbone, resnet18

REGRESSOR_HIDDEN_SIZES = (1024, 1024)


class RegressorMLP(nn.Module):
    """Linear layers `layer_000`, `layer_001`, ... (each a Sequential holding the Linear at index 0,
    then ReLU if `relu`) and a final `output_layer`. Dropout of the training code is inactive here.

    inputs (N, input_size) -> (N, output_size).
    """

    def __init__(self, input_size: int, hidden_sizes, output_size: int, relu: bool):
        super().__init__()
        self.hidden_names = []
        for index, hidden_size in enumerate(hidden_sizes):
            layers = [nn.Linear(input_size, hidden_size)]
            if relu:
                layers.append(nn.ReLU())
            name = f"layer_{index:03d}"
            self.add_module(name, nn.Sequential(*layers))
            self.hidden_names.append(name)
            input_size = hidden_size
        self.output_layer = nn.Linear(input_size, output_size)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        for name in self.hidden_names:
            hidden = getattr(self, name)(hidden)
        return self.output_layer(hidden)


class IterativeRegressor(nn.Module):
    """params_0 = start + MLP([f, start]); params_k = params_{k-1} + MLP([f, params_{k-1}]).

    One MLP shared by all iterations; only the last parameters are returned.
    features (N, F), start (N, P) -> (N, P). With `param_size` given, holds the checkpoint's start
    mean as the buffer `mean_param` (1, P) (the body regressor).
    """

    def __init__(self, mlp: RegressorMLP, iterations: int = layout.REGRESSOR_ITERATIONS,
                 param_size: int | None = None):
        super().__init__()
        self.module = mlp
        self.iterations = iterations
        if param_size is not None:
            self.register_buffer("mean_param", torch.zeros(1, param_size))

    def forward(self, features: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        params = start
        for _ in range(self.iterations):
            params = params + self.module(torch.cat([features, params], dim=1))
        return params


class BodyNetwork(nn.Module):
    """body_crops (N, 3, 256, 256) float32, ImageNet-normalised -> body params (N, 341) float32
    (layout.BODY_PARAMS: 6D rotations, betas, expression, raw camera)."""

    def __init__(self):
        super().__init__()
        self.backbone = HRNetBackbone()
        mlp = RegressorMLP(layout.BODY_FEATURE_SIZE + layout.BODY_PARAM_SIZE, REGRESSOR_HIDDEN_SIZES,
                           layout.BODY_PARAM_SIZE, relu=False)
        self.regressor = IterativeRegressor(mlp, param_size=layout.BODY_PARAM_SIZE)

    def forward(self, body_crops: torch.Tensor) -> torch.Tensor:
        features = self.backbone(body_crops)
        start = self.regressor.mean_param.expand(features.shape[0], -1)
        return self.regressor(features, start)


class PartNetwork(nn.Module):
    """ResNet18 + iterative regressor with ReLU MLP, started from a given start vector.

    crops (M, 3, n, n) float32, ImageNet-normalised; starts (M, P) -> params (M, P).
    """

    def __init__(self, param_size: int):
        super().__init__()
        self.backbone = resnet18()
        mlp = RegressorMLP(layout.PART_FEATURE_SIZE + param_size, REGRESSOR_HIDDEN_SIZES, param_size, relu=True)
        self.regressor = IterativeRegressor(mlp)

    def forward(self, crops: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.backbone(crops), starts)


class HandNetwork(PartNetwork):
    """hand_crops (M, 3, 224, 224) (right hands and mirrored left hands), starts (M, 109)
    -> hand params (M, 109) (layout.HAND_PARAMS: absolute wrist 6D, fingers 15x6D, betas, camera)."""

    def __init__(self):
        super().__init__(layout.HAND_PARAM_SIZE)


class FaceNetwork(PartNetwork):
    """face_crops (N, 3, 256, 256), starts (N, 165) -> face params (N, 165)
    (layout.FACE_PARAMS: neck 6D, jaw 6D, betas 100, expression 50, camera)."""

    def __init__(self):
        super().__init__(layout.FACE_PARAM_SIZE)
