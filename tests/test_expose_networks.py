"""The ExPose network stages: backbones, regressors, key names and shapes of the released checkpoint."""

import pytest
import torch
import torch.nn.functional as F

from bodyrt.export.backbones import HRNetBackbone, HRNetModule, resnet18, resnet50, unused_hrnet_stage4
from bodyrt.export.expose import BodyNetwork, FaceNetwork, HandNetwork, IterativeRegressor, RegressorMLP


def parameter_count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


# Hand-computed counts, written from the architecture description (REFERENCE.md section 2), not the code.
def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def bn(c):
    return 2 * c  # weight and bias; running stats are buffers


def basic_block(c):
    return 2 * (conv(c, c, 3) + bn(c))


def bottleneck(cin, planes, projection_bn):
    out = 4 * planes
    count = conv(cin, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes) + conv(planes, out, 1) + bn(out)
    if projection_bn is not None:
        count += conv(cin, out, 1) + (bn(out) if projection_bn else 0)
    return count


def fuse_count(widths, outputs):
    """Sum over outputs i and inputs j != i: 1x1+BN up, or chains of stride-2 3x3+BN down."""
    count = 0
    for i in range(outputs):
        for j, cj in enumerate(widths):
            if j > i:
                count += conv(cj, widths[i], 1) + bn(widths[i])
            elif j < i:
                count += (i - j - 1) * (conv(cj, cj, 3) + bn(cj)) + conv(cj, widths[i], 3) + bn(widths[i])
    return count


def hrnet_module_count(widths, outputs=None):
    return sum(4 * basic_block(c) for c in widths) + fuse_count(widths, outputs or len(widths))


def hrnet_trunk_and_head_count():
    stem = conv(3, 64, 3) + bn(64) + conv(64, 64, 3) + bn(64)
    layer1 = bottleneck(64, 64, projection_bn=True) + 3 * bottleneck(256, 64, projection_bn=None)
    transition1 = conv(256, 48, 3) + bn(48) + conv(256, 96, 3) + bn(96)
    stage2 = hrnet_module_count([48, 96])
    transition2 = conv(96, 192, 3) + bn(192)
    stage3 = 4 * hrnet_module_count([48, 96, 192])
    transition3 = conv(192, 384, 3) + bn(384)
    subsample_3 = conv(96, 192, 3, bias=True) + bn(192) + conv(192, 384, 3, bias=True) + bn(384)
    subsample_2 = conv(192, 384, 3, bias=True) + bn(384)
    # every head bottleneck has a 1x1 projection without BN (released hrnet.py)
    head = bottleneck(1152, 512, projection_bn=False) + 4 * bottleneck(2048, 512, projection_bn=False)
    return (stem + layer1 + transition1 + stage2 + transition2 + stage3 + transition3
            + subsample_3 + subsample_2 + head)


def mlp_count(sizes):
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_resnet_parameter_counts_match_torchvision_without_fc():
    assert parameter_count(resnet18()) == 11_176_512
    assert parameter_count(resnet50()) == 23_508_032


def test_resnet_feature_shapes():
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert resnet18().eval()(images).shape == (2, 512)
        assert resnet50().eval()(images).shape == (2, 2048)


def test_hrnet_parameter_count_matches_hand_count():
    assert parameter_count(HRNetBackbone()) == hrnet_trunk_and_head_count()
    widths = [48, 96, 192, 384]
    stage4 = 2 * hrnet_module_count(widths) + hrnet_module_count(widths, outputs=1)
    assert parameter_count(unused_hrnet_stage4()) == stage4


def test_network_parameter_counts():
    assert parameter_count(BodyNetwork()) == hrnet_trunk_and_head_count() + mlp_count([2389, 1024, 1024, 341])
    assert parameter_count(HandNetwork()) == 11_176_512 + mlp_count([621, 1024, 1024, 109])
    assert parameter_count(FaceNetwork()) == 11_176_512 + mlp_count([677, 1024, 1024, 165])


@pytest.fixture(scope="module")
def body_network():
    torch.manual_seed(0)
    return BodyNetwork().eval()


def test_hrnet_branch_shapes_and_feature_at_256(body_network):
    images = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        branch1, branch2, branch3 = body_network.backbone.trunk(images)
        features = body_network.backbone(images)
    assert branch1.shape == (1, 96, 32, 32)
    assert branch2.shape == (1, 192, 16, 16)
    assert branch3.shape == (1, 384, 8, 8)
    assert features.shape == (1, 2048)
    assert torch.isfinite(features).all()


OFFICIAL_KEY_SHAPES = {
    # body (checkpoint prefix "smplx.")
    "body": {
        "backbone.conv1.weight": (64, 3, 3, 3),
        "backbone.bn2.running_var": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "backbone.layer1.3.conv3.weight": (256, 64, 1, 1),
        "backbone.transition1.0.0.weight": (48, 256, 3, 3),
        "backbone.transition1.1.0.0.weight": (96, 256, 3, 3),
        "backbone.stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
        "backbone.stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
        "backbone.transition2.2.0.0.weight": (192, 96, 3, 3),
        "backbone.stage3.3.fuse_layers.2.0.0.0.weight": (48, 48, 3, 3),
        "backbone.stage3.3.fuse_layers.2.0.1.1.running_mean": (192,),
        "backbone.stage3.3.fuse_layers.0.2.1.weight": (48,),
        "backbone.transition3.3.0.0.weight": (384, 192, 3, 3),
        "backbone.subsample_3.0.bias": (192,),
        "backbone.subsample_3.3.weight": (384, 192, 3, 3),
        "backbone.subsample_3.4.running_var": (384,),
        "backbone.subsample_2.0.weight": (384, 192, 3, 3),
        "backbone.conv_layers.0.downsample.weight": (2048, 1152, 1, 1),
        "backbone.conv_layers.4.downsample.weight": (2048, 2048, 1, 1),
        "backbone.conv_layers.4.bn3.weight": (2048,),
        "regressor.module.layer_000.0.weight": (1024, 2389),
        "regressor.module.layer_001.0.bias": (1024,),
        "regressor.module.output_layer.weight": (341, 1024),
        "regressor.mean_param": (1, 341),
    },
    "hand": {
        "backbone.conv1.weight": (64, 3, 7, 7),
        "backbone.layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "backbone.layer4.1.bn2.running_var": (512,),
        "regressor.module.layer_000.0.weight": (1024, 621),
        "regressor.module.output_layer.bias": (109,),
    },
    "face": {
        "regressor.module.layer_000.0.weight": (1024, 677),
        "regressor.module.output_layer.weight": (165, 1024),
    },
}


@pytest.mark.parametrize("network", ["body", "hand", "face"])
def test_state_dict_names_and_shapes_of_the_released_checkpoint(network):
    from bodyrt.export.checkpoint import expected_shapes

    shapes = expected_shapes(network)
    for key, shape in OFFICIAL_KEY_SHAPES[network].items():
        assert shapes.get(key) == shape, key
    assert not any(".stage4." in key for key in shapes)
    assert not any(key.startswith("backbone.fc.") for key in shapes)
    if network != "body":
        assert not any("mean_param" in key for key in shapes)


def test_stage4_layout_last_module_keeps_only_the_highest_resolution_output():
    keys = unused_hrnet_stage4().state_dict()
    assert keys["2.fuse_layers.0.3.0.weight"].shape == (48, 384, 1, 1)
    assert keys["1.fuse_layers.3.0.2.0.weight"].shape == (384, 48, 3, 3)
    assert not any(key.startswith("2.fuse_layers.1.") for key in keys)


def manual_mlp(inputs, mlp, relu):
    """The MLP written out: x W^T + b per layer, ReLU after the hidden ones when `relu`."""
    hidden = inputs
    for name in ("layer_000", "layer_001"):
        linear = getattr(mlp, name)[0]
        hidden = hidden @ linear.weight.T + linear.bias
        if relu:
            hidden = hidden.clamp(min=0)
    return hidden @ mlp.output_layer.weight.T + mlp.output_layer.bias


@pytest.mark.parametrize("relu", [False, True])
def test_iterative_regressor_follows_the_update_rule(relu):
    torch.manual_seed(1)
    mlp = RegressorMLP(12 + 5, (16, 16), 5, relu=relu)
    regressor = IterativeRegressor(mlp, iterations=3)
    features, start = torch.randn(4, 12), torch.randn(4, 5)
    expected = start.clone()
    with torch.no_grad():
        for _ in range(3):
            expected = expected + manual_mlp(torch.cat([features, expected], dim=1), mlp, relu)
        actual = regressor(features, start)
        one_step = IterativeRegressor(mlp, iterations=1)(features, start)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(actual, one_step)


def test_relu_only_in_part_regressors():
    body_layers = [type(m).__name__ for m in BodyNetwork().regressor.module.modules()]
    hand_layers = [type(m).__name__ for m in HandNetwork().regressor.module.modules()]
    assert "ReLU" not in body_layers
    assert hand_layers.count("ReLU") == 2


def test_body_network_starts_from_its_mean_buffer(body_network):
    images = torch.randn(1, 3, 256, 256)
    mean = torch.linspace(-1, 1, 341)[None]
    body_network.regressor.mean_param.copy_(mean)
    with torch.no_grad():
        features = body_network.backbone(images)
        expected = mean.clone()
        for _ in range(3):
            expected = expected + manual_mlp(torch.cat([features, expected], dim=1), body_network.regressor.module,
                                             relu=False)
        params = body_network(images)
    assert params.shape == (1, 341)
    torch.testing.assert_close(params, expected, rtol=1e-4, atol=1e-5)


def test_part_networks_shapes_and_batch_independence():
    torch.manual_seed(2)
    hand, face = HandNetwork().eval(), FaceNetwork().eval()
    crops, starts = torch.randn(3, 3, 224, 224), torch.randn(3, 109)
    with torch.no_grad():
        together = hand(crops, starts)
        alone = hand(crops[1:2], starts[1:2])
        face_params = face(torch.randn(2, 3, 256, 256), torch.randn(2, 165))
    assert together.shape == (3, 109) and face_params.shape == (2, 165)
    # eval-mode BN is a fixed affine map: a sample's output does not depend on its batch
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


def manual_bn(x, layer):
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return x * scale[None, :, None, None] + (layer.bias - layer.running_mean * scale)[None, :, None, None]


def test_hrnet_module_fusion_matches_the_definition():
    torch.manual_seed(3)
    module = HRNetModule([4, 8], num_blocks=4).eval()
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.2, 0.2)
            layer.running_var.uniform_(0.5, 1.5)
            layer.weight.data.uniform_(0.5, 1.5)
    high, low = torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        fused = module([high, low])
        branch_high = module.branches[0](high)
        branch_low = module.branches[1](low)
        up_conv, up_bn = module.fuse_layers[0][1][0], module.fuse_layers[0][1][1]
        upsampled = manual_bn(F.conv2d(branch_low, up_conv.weight), up_bn).repeat_interleave(2, 2).repeat_interleave(2, 3)
        down_conv, down_bn = module.fuse_layers[1][0][0][0], module.fuse_layers[1][0][0][1]
        downsampled = manual_bn(F.conv2d(branch_high, down_conv.weight, stride=2, padding=1), down_bn)
        only_low = module([high, low], outputs=(1,))
    torch.testing.assert_close(fused[0], (branch_high + upsampled).clamp(min=0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], (downsampled + branch_low).clamp(min=0), rtol=1e-5, atol=1e-5)
    assert only_low[0] is None
    torch.testing.assert_close(only_low[1], fused[1])
