"""Exact tiling: the loss of a whole image and its gradient, computed in the memory of one tile.

An image is cut into tiles. Each tile's interior is computed with a halo of at least half the
receptive field of the deepest layer used around it, so the features of its interior are the
whole image's, and every feature position lies in exactly one interior. Tiles start on the
network's stride at that layer, so pooling sees the same windows as it does on the whole image.

The style losses need only sums over positions (:class:`~.losses.Moments`), which add up over
tiles, and the content loss is a sum over positions itself. So one iteration is two passes:

1. without autograd, tile by tile, the whole image's moments at every style layer;
2. the style loss from them and its gradient with respect to the moments; then tile by tile, the
   gradient of that linear stand-in (and of the content loss's part) back to the tile's pixels,
   added into the image's gradient.

The result is the gradient of the untiled loss, up to float rounding (tests/test_tiling.py).
Neither crowsonkb's nor anyone's tile-and-feather: each tile sees the whole image's statistics.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .features import FeatureExtractor
from .layers import receptive_fields
from .losses import Moments, StyleTransferLoss
from .params import StyleParams


@dataclass(frozen=True)
class Span:
    """One tile's extent along one axis, in image pixels: its interior, and its crop (the
    interior and the halo around it, cut at the image's edges)."""

    start: int
    stop: int
    crop_start: int
    crop_stop: int
    last: bool  # ends at the image's edge: takes every feature position left, however rounded

    def interior(self, stride: int) -> slice:
        """The interior's feature positions, in the crop's features."""
        offset = self.crop_start // stride
        return slice(self.start // stride - offset, None if self.last else self.stop // stride - offset)

    def region(self, stride: int) -> slice:
        """The interior's feature positions, in the whole image's features."""
        return slice(self.start // stride, None if self.last else self.stop // stride)

    @property
    def crop_length(self) -> int:
        return self.crop_stop - self.crop_start


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return image[..., self.rows.crop_start : self.rows.crop_stop, self.cols.crop_start : self.cols.crop_stop]

    def interior(self, features: torch.Tensor, stride: int) -> torch.Tensor:
        return features[..., self.rows.interior(stride), self.cols.interior(stride)]

    def region(self, stride: int) -> tuple[slice, slice]:
        return self.rows.region(stride), self.cols.region(stride)


@dataclass(frozen=True)
class Tiling:
    """How images are cut for a network's layers: ``interior`` px tiles (None: whole images),
    each with ``halo`` px around it, starting on multiples of ``align`` px."""

    interior: int | None
    halo: int
    align: int
    strides: Mapping[str, int]  # image pixels per feature position, by layer

    @classmethod
    def for_layers(cls, backbone: str, layers: Sequence[str], tile: int | None) -> "Tiling":
        """Tiles of about ``tile`` px (rounded down to the stride, at least one stride) for these layers."""
        fields = receptive_fields(backbone)
        used = [fields[name] for name in layers]
        align = max(field.stride for field in used)
        # The first interior position must not see the crop's padding before it, nor the last after it.
        reach = max(max(field.before, field.after - field.stride + 1) for field in used)
        halo = -(-reach // align) * align
        interior = None if tile is None else max(align, tile // align * align)
        return cls(interior, halo, align, {name: fields[name].stride for name in layers})

    @classmethod
    def of(cls, params: StyleParams) -> "Tiling":
        """The tiles of a run of ``params``: its ``tile``, for its layers."""
        return cls.for_layers(params.backbone, (*params.content_layer_names, *params.style_layer_names), params.tile)

    def spans(self, length: int) -> list[Span]:
        if self.interior is None or length <= self.interior:
            return [Span(0, length, 0, length, last=True)]
        starts = range(0, length, self.interior)
        return [
            Span(start, min(start + self.interior, length), max(0, start - self.halo),
                 min(length, start + self.interior + self.halo), last=start + self.interior >= length)
            for start in starts
        ]

    def tiles(self, height: int, width: int) -> list[Tile]:
        return [Tile(rows, cols) for rows in self.spans(height) for cols in self.spans(width)]

    def splits(self, height: int, width: int) -> bool:
        return len(self.tiles(height, width)) > 1

    def largest_crop(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the largest crop: what one pass with autograd holds at a time."""
        return max(s.crop_length for s in self.spans(height)), max(s.crop_length for s in self.spans(width))

    def features(self, extractor: FeatureExtractor, image: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """The whole image's features at ``layers``, put together from the tiles' interiors (no autograd)."""
        *others, last = self.tiles(*image.shape[-2:])
        with torch.no_grad():
            features = extractor(last.crop(image))
            if not others:
                return {name: features[name] for name in layers}
            # The last tile's interior ends the whole image's features: their size is known from it.
            whole = {}
            for name in layers:
                part = last.interior(features[name], self.strides[name])
                rows, cols = last.region(self.strides[name])
                whole[name] = part.new_empty((*part.shape[:-2], rows.start + part.shape[-2], cols.start + part.shape[-1]))
            for tile in (last, *others):
                features = features if tile is last else extractor(tile.crop(image))
                for name in layers:
                    whole[name][(..., *tile.region(self.strides[name]))] = tile.interior(features[name], self.strides[name])
            return whole

    def moments(self, extractor: FeatureExtractor, image: torch.Tensor, layers: Sequence[str]) -> dict[str, Moments]:
        """The whole image's moments at ``layers``, summed over the tiles (no autograd)."""
        totals: dict[str, Moments] = {}
        with torch.no_grad():
            for tile in self.tiles(*image.shape[-2:]):
                features = extractor(tile.crop(image))
                for name in layers:
                    part = Moments.of(tile.interior(features[name], self.strides[name]))
                    totals[name] = totals[name] + part if name in totals else part
        return totals


class TiledLoss:
    """A :class:`StyleTransferLoss` of one image, computed tile by tile: the same value and
    gradient, holding the activations of one tile at a time."""

    def __init__(self, loss: StyleTransferLoss, extractor: FeatureExtractor, tiling: Tiling):
        self.loss, self.extractor, self.tiling = loss, extractor, tiling

    def backward(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss and its terms (as ``StyleTransferLoss`` gives them, detached), with the
        gradient added to ``image.grad``."""
        loss, weights, strides = self.loss, self.loss.weights, self.tiling.strides
        tiles = self.tiling.tiles(*image.shape[-2:])
        # pass 1: the whole image's moments, and the style loss's gradient with respect to them
        moments = {name: part.leaves() for name, part in self.tiling.moments(self.extractor, image, list(loss.style)).items()}
        style = weights["style"] * sum(
            loss.layer_weights[name] * term.from_moments(moments[name]) for name, term in loss.style.items()
        )
        adjoint = {name: part.gradient(style) for name, part in moments.items()}  # the Gram loss has no use for sums
        # pass 2: tile by tile, the gradient of the loss's linear stand-in, to the tile's pixels
        grad = torch.zeros_like(image)
        content = image.new_zeros(())
        for tile in tiles:
            crop = tile.crop(image).detach().requires_grad_(True)
            features = self.extractor(crop)
            parts = [
                adjoint[name].dot(Moments.of(tile.interior(features[name], strides[name]))) for name in loss.style
            ]
            content_part = weights["content"] * sum(
                term(tile.interior(features[name], strides[name]), tile.region(strides[name]))
                for name, term in loss.content.items()
            )
            (sum(parts) + content_part).backward()
            tile.crop(grad).add_(crop.grad)
            content += content_part.detach()
            del features, parts, content_part
        tv = image.new_zeros(())
        if weights["tv"]:
            smooth = image.detach().requires_grad_(True)
            tv = weights["tv"] * loss.tv(smooth)
            tv.backward()
            grad += smooth.grad
        image.grad = grad if image.grad is None else image.grad + grad
        terms = {"content": content, "style": style.detach(), "tv": tv.detach()}
        return sum(terms.values()), terms

