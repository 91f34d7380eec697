"""Feature networks: a frozen backbone, the input normalization its weights expect, and a
truncated extractor that returns the named layers a style transfer needs.

A :class:`Network` is loaded once (see ``weights.py``) and shared; each run builds a cheap
:class:`FeatureExtractor` over it with its own pooling and its own truncation.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from .layers import DEFAULT_LAYERS, HALVING, LAYERS

_VGG_CFG = {"vgg16": "D", "vgg19": "E"}
PROBE_SIDE = 64  # of the image that measures a network's feature scale; every backbone keeps 2 px at its deepest layer


@dataclass(frozen=True)
class Normalization:
    """How an RGB image in [0, 1] becomes the network's input."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0  # Caffe-trained weights expect 0-255
    bgr: bool = False  # ...and BGR channel order


@dataclass(frozen=True)
class Speed:
    """How the network runs: in reduced precision (``"bf16"``/``"fp16"`` autocast), in
    channels-last layout, and/or compiled (``torch.compile`` of the gradient pass, once per image
    shape and batch size). The features always come back in fp32, so Gram matrices and losses,
    where fp16 overflows, stay in full precision."""

    autocast: str | None = None
    channels_last: bool = False
    compile: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[self.autocast]


TORCHVISION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
CAFFE = Normalization(mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=255.0, bgr=True)


class Normalize(nn.Module):
    def __init__(self, norm: Normalization):
        super().__init__()
        self.bgr = norm.bgr
        self.register_buffer("offset", torch.tensor(norm.mean).view(1, 3, 1, 1) / norm.scale)
        self.register_buffer("factor", norm.scale / torch.tensor(norm.std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            image = image.flip(1)
        return (image - self.offset) * self.factor


@dataclass
class Network:
    """A frozen backbone: its layers in order, by name, and the normalization of its weights."""

    backbone: str
    layers: dict[str, nn.Module]
    normalization: Normalization
    scales: dict[str, float] = field(default_factory=dict, repr=False)  # FeatureExtractor.feature_scale's, by pooling

    def to(self, device: torch.device) -> "Network":
        for module in self.layers.values():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(p for m in self.layers.values() for p in m.parameters()).device


def vgg_trunk(backbone: str) -> nn.Sequential:
    """torchvision's VGG ``features`` without the classifier (which would cost 0.5 GB for nothing)."""
    return make_layers(cfgs[_VGG_CFG[backbone]])


def build_network(backbone: str, trunk: nn.Module, normalization: Normalization) -> Network:
    """Name the layers of a weight-loaded torchvision model (a VGG ``features`` or a ResNet)."""
    if backbone in _VGG_CFG:
        layers = dict(zip(LAYERS[backbone], trunk, strict=True))
    else:
        stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu)
        stages = (stem, trunk.maxpool, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        layers = dict(zip(LAYERS[backbone], stages, strict=True))
    for module in layers.values():
        module.eval().requires_grad_(False)
    return Network(backbone, layers, normalization)


class FeatureExtractor(nn.Module):
    """Runs an image through the network up to the deepest requested layer only.

    Pooling layers are replaced here, not in the shared network, so runs with max and average
    pooling can share one loaded backbone.
    """

    def __init__(self, network: Network, layers: Iterable[str], pooling: str = "max", speed: Speed = Speed()):
        super().__init__()
        self.speed = speed
        self.device_type = network.device.type
        wanted = set(layers)
        names = list(network.layers)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"{network.backbone} has no layers {sorted(unknown)}")
        deepest = max(names.index(name) for name in wanted)
        self.wanted = frozenset(wanted)
        self.network, self.pooling = network, pooling
        self.normalize = Normalize(network.normalization).to(network.device)
        self.names = names[: deepest + 1]
        # the smallest side that still leaves one pixel at the deepest layer
        self.min_side = 2 ** sum(name in HALVING[network.backbone] for name in self.names)
        self.body = nn.ModuleList(
            self._layer(network, name, names[i - 1] if i else None, pooling) for i, name in enumerate(self.names)
        )
        if speed.channels_last:  # converts the shared weights once; later calls find them converted
            self.body.to(memory_format=torch.channels_last)

    def _layer(self, network: Network, name: str, previous: str | None, pooling: str) -> nn.Module:
        module = network.layers[name]
        if isinstance(module, nn.ReLU):
            # An in-place ReLU would overwrite the conv output we were asked to return.
            return nn.ReLU(inplace=previous not in self.wanted)
        if isinstance(module, nn.MaxPool2d) and pooling == "avg":
            return nn.AvgPool2d(module.kernel_size, module.stride, module.padding)
        return module

    def feature_scale(self) -> float:
        """The network's unit of feature size: the mean square of its default content layer's
        features (relu4_2, layer2) for a fixed probe image (uniform noise, PROBE_SIDE px, seed 0),
        in full precision whatever this extractor's speed. A network whose features are k times
        larger has a unit k^2 times larger. Measured once per network and pooling."""
        layer = DEFAULT_LAYERS[self.network.backbone][0][0]
        if self.pooling not in self.network.scales:
            plain = FeatureExtractor(self.network, [layer], self.pooling)
            dtype = next(plain.body.parameters()).dtype
            probe = torch.rand((1, 3, PROBE_SIDE, PROBE_SIDE), generator=torch.Generator().manual_seed(0), dtype=dtype)
            with torch.no_grad():
                features = plain(probe.to(plain.normalize.offset.device))[layer]
            self.network.scales[self.pooling] = features.double().pow(2).mean().item() or 1.0
        return self.network.scales[self.pooling]

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        x = self.normalize(image)
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.speed.dtype
        with torch.autocast(self.device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            for name, layer in zip(self.names, self.body):
                x = layer(x)
                if name in self.wanted:
                    features[name] = x
        return {name: feature.float() for name, feature in features.items()} if dtype else features
