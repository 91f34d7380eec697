"""Where a backbone's weights come from: torchvision's ImageNet files (cached under TORCH_HOME),
a user's ``.pth`` state dict in torchvision's or the Caffe-converted layout, or random weights
for tests.

Loading never downloads silently into a hang: the ImageNet file must be in the cache, put there by
``nst-batch fetch-weights`` (or copied by hand); otherwise the error says exactly what to do. The
engine never touches the network: downloading is the command line's (``cli.fetch``).
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torchvision.models import ResNet18_Weights, VGG16_Weights, VGG19_Weights, resnet18

from ..util.errors import WeightsError
from .features import CAFFE, TORCHVISION, Network, build_network, vgg_trunk
from .layers import LAYERS

WeightsFormat = Literal["auto", "torchvision", "caffe"]

IMAGENET = {
    "vgg19": VGG19_Weights.IMAGENET1K_V1,
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
}

# jcjohnson/neural-style's Caffe models converted to PyTorch (as neural-style-pt distributes them).
CAFFE_FILES = {"vgg19-d01eb7cb.pth", "vgg16-00b39a1b.pth"}


@dataclass(frozen=True)
class WeightsInfo:
    """What a result records about the weights it was made with."""

    source: str  # "imagenet", "random" or the file's path
    pretrained: bool
    layout: str  # "torchvision" or "caffe"
    file: str | None = None

    def describe(self) -> str:
        if not self.pretrained:
            return "RANDOM weights (not pretrained: for tests only, the image is meaningless)"
        return f"{self.source} ({self.layout} layout{', ' + self.file if self.file and self.file != self.source else ''})"


def cache_dir() -> Path:
    """torchvision's checkpoint folder: $TORCH_HOME/hub/checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_url(backbone: str) -> str:
    """Where torchvision publishes the ImageNet weights of ``backbone``."""
    return IMAGENET[backbone].url


def imagenet_file(backbone: str) -> Path:
    """Where the engine looks for them."""
    return cache_dir() / os.path.basename(imagenet_url(backbone))


def load_network(
    backbone: str, weights: str = "imagenet", weights_format: WeightsFormat = "auto"
) -> tuple[Network, WeightsInfo]:
    """Build ``backbone`` on the CPU with its weights; move it with ``Network.to``."""
    if weights == "random":
        return _random_network(backbone), WeightsInfo("random", pretrained=False, layout="torchvision")
    if weights == "imagenet":
        path = imagenet_file(backbone)
        if not path.is_file():
            raise WeightsError(_missing_imagenet_message(backbone, path))
        network = _network_from_file(backbone, path, "torchvision")
        return network, WeightsInfo("imagenet", pretrained=True, layout="torchvision", file=str(path))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: give a .pth state dict, 'imagenet' or 'random'")
    layout = _layout(path, weights_format)
    return _network_from_file(backbone, path, layout), WeightsInfo(str(path), True, layout, str(path))


def _missing_imagenet_message(backbone: str, path: Path) -> str:
    return (
        f"the ImageNet weights of {backbone} are not on this machine: wanted {path.name} in {path.parent} "
        f"(set TORCH_HOME to use another cache). Run `nst-batch fetch-weights {backbone}` where there is "
        f"internet access, or download {IMAGENET[backbone].url} and copy it there"
    )


def _random_network(backbone: str) -> Network:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random, but the same random every time: tests stay reproducible
        trunk = vgg_trunk(backbone) if backbone in ("vgg16", "vgg19") else resnet18()
    return build_network(backbone, trunk, TORCHVISION)


def _layout(path: Path, weights_format: WeightsFormat) -> str:
    if weights_format != "auto":
        return weights_format
    return "caffe" if path.name in CAFFE_FILES else "torchvision"


def _network_from_file(backbone: str, path: Path, layout: str) -> Network:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise WeightsError(f"{path} is not a PyTorch state dict ({type(error).__name__}): {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict: save model.state_dict()")
    if backbone == "resnet18":
        trunk = resnet18()
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        strict_keys = {k for k in trunk.state_dict() if not k.startswith("fc.")}
    else:
        trunk = vgg_trunk(backbone)
        state = _vgg_features(state, backbone)
        strict_keys = set(trunk.state_dict())
    missing = strict_keys - set(state)
    if missing:
        raise WeightsError(
            f"{path} is not a {backbone} state dict: it lacks {len(missing)} tensors such as "
            f"{sorted(missing)[0]!r} (it has e.g. {sorted(state)[:3]}); check `weights` and the backbone"
        )
    try:
        trunk.load_state_dict({k: state[k] for k in strict_keys}, strict=False)
    except RuntimeError as error:
        raise WeightsError(f"{path} does not fit {backbone}: {str(error).splitlines()[-1].strip()}") from None
    return build_network(backbone, trunk, CAFFE if layout == "caffe" else TORCHVISION)


def _vgg_features(state: dict, backbone: str) -> dict:
    """VGG tensors keyed like torchvision's ``features`` ("0.weight"), from either naming.

    torchvision and neural-style-pt files say ``features.0.weight``; some Caffe conversions
    (Gatys' ``vgg_conv.pth``) say ``conv1_1.weight``.
    """
    index = {name: i for i, name in enumerate(LAYERS[backbone])}
    out = {}
    for key, value in state.items():
        head, _, tail = key.rpartition(".")
        if head.startswith("features."):
            out[f"{head.removeprefix('features.')}.{tail}"] = value
        elif head in index:
            out[f"{index[head]}.{tail}"] = value
    return out
