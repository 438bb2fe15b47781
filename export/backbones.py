"""Feature extractors of the ExPose networks: the HRNet-W48 body trunk with its concatenating head, and
torchvision-style ResNet18 / ResNet50 for the hand and face networks.

Module attribute names reproduce the state-dict key names of the released ExPose checkpoint (and of
torchvision's ResNet), so loading weights is a prefix mapping and nothing else. Every BatchNorm runs in
eval mode, i.e. as a frozen affine map; nothing is fused here (the ONNX tool chain does that).

HRNet-W48 as the released body network runs it, at a 256x256 input:

    stem      conv3x3 s2 + conv3x3 s2                  -> 64 ch, 64x64
    layer1    4 bottlenecks                            -> 256 ch, 64x64
    stage 2   branches [48, 96]          1 module      -> 64x64, 32x32
    stage 3   branches [48, 96, 192]     4 modules     -> 64x64, 32x32, 16x16
    transition3 (stage-3 branch 2 -> a new 384-ch branch, 8x8)
    head      subsample_3 (branch 1: 96 -> 192 -> 384, 8x8), subsample_2 (branch 2: 192 -> 384, 8x8),
              concat with the 384-ch branch (1152 ch) -> 5 bottlenecks (2048 ch) -> average pool

Stage 4 exists in the checkpoints but the released model never runs it; `unused_hrnet_stage4` builds
its layout only so that a generated checkpoint carries the same keys.
"""

import torch
from torch import nn

HRNET_W48_CHANNELS = (48, 96, 192, 384)  # branch widths of stages 2, 3 and 4
HRNET_BLOCKS_PER_BRANCH = 4
HRNET_STAGE3_MODULES = 4
HRNET_STAGE4_MODULES = 3
HRNET_HEAD_BOTTLENECKS = 5
HRNET_FEATURE_SIZE = 2048


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (torchvision's BasicBlock), expansion 1."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, as torchvision) -> 1x1 with a residual connection, expansion 4."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv + BN shortcut (keys `downsample.0.*`, `downsample.1.*`)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))


def residual_layer(block, in_channels: int, planes: int, num_blocks: int, stride: int = 1) -> nn.Sequential:
    """`num_blocks` blocks; the first gets a projection shortcut if the stride or the width changes."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = projection_shortcut(in_channels, out_channels, stride)
    blocks = [block(in_channels, planes, stride, downsample)]
    blocks += [block(out_channels, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def conv3x3_bn(in_channels: int, out_channels: int, stride: int, relu: bool, bias: bool = False) -> nn.Sequential:
    """[conv3x3, BN, optional ReLU] as one Sequential (keys `.0.*`, `.1.*`)."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def fuse_from_lower_resolution(in_channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """Branch j -> branch i < j: 1x1 conv, BN, nearest upsampling by 2**(j-i)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Upsample(scale_factor=scale, mode="nearest"),
    )


def fuse_from_higher_resolution(in_channels: int, out_channels: int, steps: int) -> nn.Sequential:
    """Branch j -> branch i > j: `steps` stride-2 conv3x3+BN, ReLU after all but the last, which sets the width."""
    convs = [conv3x3_bn(in_channels, in_channels, 2, relu=True) for _ in range(steps - 1)]
    convs.append(conv3x3_bn(in_channels, out_channels, 2, relu=False))
    return nn.Sequential(*convs)


class HRNetModule(nn.Module):
    """One multi-resolution module: BasicBlocks per branch, then every output sums all branches.

    `num_outputs` = len(channels) for a multi-scale module; 1 for stage 4's last module (highest
    resolution only). Keys: `branches.{b}.{k}.*`, `fuse_layers.{i}.{j}.*` (no entry for j == i).
    """

    def __init__(self, channels, num_blocks: int, num_outputs: int | None = None):
        super().__init__()
        channels = list(channels)
        self.channels = channels
        self.branches = nn.ModuleList(
            residual_layer(BasicBlock, width, width, num_blocks) for width in channels)
        num_outputs = len(channels) if num_outputs is None else num_outputs
        self.fuse_layers = nn.ModuleList()
        for i in range(num_outputs):
            row = nn.ModuleList()
            for j, width in enumerate(channels):
                if j > i:
                    row.append(fuse_from_lower_resolution(width, channels[i], 2 ** (j - i)))
                elif j == i:
                    row.append(None)
                else:
                    row.append(fuse_from_higher_resolution(width, channels[i], i - j))
            self.fuse_layers.append(row)
        self.relu = nn.ReLU()

    def forward(self, inputs: list, outputs=None) -> list:
        """inputs: one (N, C_b, H_b, W_b) map per branch -> one map per branch.

        `outputs` lists the branches to compute (default all); the others are returned as None, so a
        caller that needs only some branches does not pay for the rest.
        """
        branch_maps = [branch(x) for branch, x in zip(self.branches, inputs)]
        wanted = range(len(self.fuse_layers)) if outputs is None else outputs
        fused = [None] * len(self.fuse_layers)
        for i in wanted:
            total = None
            for j, x in enumerate(branch_maps):
                term = x if j == i else self.fuse_layers[i][j](x)
                total = term if total is None else total + term
            fused[i] = self.relu(total)
        return fused


def hrnet_stage(channels, num_modules: int, last_module_outputs: int | None = None) -> nn.Sequential:
    """`num_modules` HRNetModules over the given branch widths (keys `{m}.branches...`)."""
    modules = [HRNetModule(channels, HRNET_BLOCKS_PER_BRANCH) for _ in range(num_modules - 1)]
    modules.append(HRNetModule(channels, HRNET_BLOCKS_PER_BRANCH, last_module_outputs))
    return nn.Sequential(*modules)


def new_branch_transition(in_channels: int, out_channels: int) -> nn.Sequential:
    """Lowest branch -> a new branch at half the resolution (keys `.0.0.*`, `.0.1.*`)."""
    return nn.Sequential(conv3x3_bn(in_channels, out_channels, 2, relu=True))


def subsample_layers(in_channels: int, num_layers: int) -> nn.Sequential:
    """`num_layers` x [conv3x3 stride 2 WITH bias, BN, ReLU], doubling the width each time."""
    layers = []
    for _ in range(num_layers):
        layers += [nn.Conv2d(in_channels, 2 * in_channels, 3, 2, 1, bias=True),
                   nn.BatchNorm2d(2 * in_channels), nn.ReLU()]
        in_channels *= 2
    return nn.Sequential(*layers)


def head_bottlenecks(in_channels: int, num_layers: int, out_channels: int) -> nn.Sequential:
    """Bottlenecks (planes out/4) whose shortcut is a bare 1x1 conv without BN.

    The released code gives EVERY one of these blocks that projection, also the 2048 -> 2048 ones
    (keys `conv_layers.{k}.downsample.weight`, k = 0..4).
    """
    blocks = []
    for _ in range(num_layers):
        projection = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        blocks.append(Bottleneck(in_channels, out_channels // Bottleneck.expansion, downsample=projection))
        in_channels = out_channels
    return nn.Sequential(*blocks)


class HRNetBackbone(nn.Module):
    """HRNet-W48 up to transition 3, plus the ExPose concatenating head.

    images (N, 3, H, W) float32, ImageNet-normalised, H and W multiples of 32 (256x256 for ExPose)
    -> features (N, 2048) float32.
    """

    def __init__(self):
        super().__init__()
        c48, c96, c192, c384 = HRNET_W48_CHANNELS
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = residual_layer(Bottleneck, 64, 64, 4)
        stage1_channels = 64 * Bottleneck.expansion
        self.transition1 = nn.ModuleList([
            conv3x3_bn(stage1_channels, c48, 1, relu=True),
            new_branch_transition(stage1_channels, c96),
        ])
        self.stage2 = hrnet_stage((c48, c96), 1)
        self.transition2 = nn.ModuleList([None, None, new_branch_transition(c96, c192)])
        self.stage3 = hrnet_stage((c48, c96, c192), HRNET_STAGE3_MODULES)
        self.transition3 = nn.ModuleList([None, None, None, new_branch_transition(c192, c384)])
        self.subsample_3 = subsample_layers(c96, 2)  # 96 -> 384 ch, 1/4 of the size
        self.subsample_2 = subsample_layers(c192, 1)  # 192 -> 384 ch, 1/2 of the size
        self.conv_layers = head_bottlenecks(3 * c384, HRNET_HEAD_BOTTLENECKS, HRNET_FEATURE_SIZE)

    def trunk(self, images: torch.Tensor):
        """images -> (stage-3 branch 1 (N, 96, H/8, W/8), branch 2 (N, 192, H/16, W/16),
        transition-3 branch (N, 384, H/32, W/32))."""
        x = self.relu(self.bn1(self.conv1(images)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        branches = [transition(x) for transition in self.transition1]
        for module in self.stage2:
            branches = module(branches)
        branches = branches + [self.transition2[2](branches[-1])]
        last = len(self.stage3) - 1
        for index, module in enumerate(self.stage3):
            # Stage-3 branch 0 feeds the fusions but is not itself used after the last module.
            branches = module(branches, outputs=(1, 2) if index == last else None)
        return branches[1], branches[2], self.transition3[3](branches[2])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branch1, branch2, branch3 = self.trunk(images)
        stacked = torch.cat([self.subsample_3(branch1), self.subsample_2(branch2), branch3], dim=1)
        return self.conv_layers(stacked).mean(dim=(2, 3))


def unused_hrnet_stage4() -> nn.Sequential:
    """Stage 4 of HRNet-W48 as stored in ExPose checkpoints (keys `stage4.*`); never run."""
    return hrnet_stage(HRNET_W48_CHANNELS, HRNET_STAGE4_MODULES, last_module_outputs=1)


class ResNet(nn.Module):
    """torchvision ResNet without `fc`: images (N, 3, H, W) normalised -> (N, 512 * expansion) pooled."""

    def __init__(self, block, blocks_per_layer):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_layer)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", residual_layer(block, in_channels, planes, num_blocks, stride))
            in_channels = planes * block.expansion
        self.feature_size = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


def resnet18() -> ResNet:
    """ResNet18 trunk, 512-d feature."""
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet50() -> ResNet:
    """ResNet50 trunk, 2048-d feature."""
    return ResNet(Bottleneck, (3, 4, 6, 3))
