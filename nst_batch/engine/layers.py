"""Layer names of each backbone, as plain data.

VGG layers use the paper's names (conv1_1, relu1_1, pool1, ...), in the order of torchvision's
``features`` modules, so ``VGG_LAYERS[name][i]`` names ``features[i]``. ResNet-18 is addressed
by stage.
"""

from dataclasses import dataclass
from difflib import get_close_matches

_VGG_PLANS = {
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}


def _vgg_names(convs_per_block: tuple[int, ...]) -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(convs_per_block, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


LAYERS: dict[str, tuple[str, ...]] = {
    **{name: _vgg_names(plan) for name, plan in _VGG_PLANS.items()},
    "resnet18": ("conv1", "pool1", "layer1", "layer2", "layer3", "layer4"),
}

BACKBONES = tuple(LAYERS)

# Layers that halve the image: VGG's pools; ResNet-18's strided stem, its pool and stages 2-4.
HALVING: dict[str, frozenset[str]] = {
    **{name: frozenset(n for n in LAYERS[name] if n.startswith("pool")) for name in _VGG_PLANS},
    "resnet18": frozenset({"conv1", "pool1", "layer2", "layer3", "layer4"}),
}

_VGG_DEFAULTS = (("relu4_2",), ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"))
DEFAULT_LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vgg19": _VGG_DEFAULTS,
    "vgg16": _VGG_DEFAULTS,
    "resnet18": (("layer2",), ("conv1", "layer1", "layer2", "layer3")),
}


def unknown_layer_message(backbone: str, name: str) -> str:
    """Explain that ``name`` is not a layer of ``backbone``, with a suggestion when one is close."""
    known = LAYERS[backbone]
    close = get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown layer {name!r} for {backbone}{hint}; its layers are: {', '.join(known)}"


# --- what a feature position sees of the image -------------------------------------------------

# (kernel, stride, padding) of the convolutions and pools on each layer's longest path: ResNet's
# shortcuts see less than the two convolutions of each block beside them.
_VGG_OPS = {"conv": ((3, 1, 1),), "relu": (), "pool": ((2, 2, 0),)}
_RESNET_STAGE = ((3, 1, 1),) * 4
_RESNET_DOWN = ((3, 2, 1),) + ((3, 1, 1),) * 3
_RESNET_OPS = {
    "conv1": ((7, 2, 3),), "pool1": ((3, 2, 1),), "layer1": _RESNET_STAGE,
    "layer2": _RESNET_DOWN, "layer3": _RESNET_DOWN, "layer4": _RESNET_DOWN,
}


@dataclass(frozen=True)
class ReceptiveField:
    """The image pixels a layer's feature position ``i`` depends on: from ``stride * i - before``
    to ``stride * i + after``, both included (zero padding counts as seen)."""

    stride: int
    before: int
    after: int

    @property
    def size(self) -> int:
        return self.before + self.after + 1


def receptive_fields(backbone: str) -> dict[str, ReceptiveField]:
    """Each layer's receptive field, in the order of ``LAYERS[backbone]``."""
    fields, stride, before, after = {}, 1, 0, 0
    for name in LAYERS[backbone]:
        ops = _RESNET_OPS[name] if backbone == "resnet18" else _VGG_OPS[name.rstrip("0123456789_")]
        for kernel, step, padding in ops:
            before, after = before + stride * padding, after + stride * (kernel - 1 - padding)
            stride *= step
        fields[name] = ReceptiveField(stride, before, after)
    return fields
