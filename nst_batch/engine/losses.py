"""The losses of Gatys et al., one small module each, composed by :class:`StyleTransferLoss`.

Every term is a mean, not a sum, so the same weights work at any image size: the Gram matrix is
divided by C x H x W and its error averaged over its C x C entries.

How large a term is still depends on the network: when a network's features are k times
larger (Caffe-layout weights see 0-255 inputs, about 58x torchvision's), the content term grows
by k^2 and the style term by k^4, so weights that suit one network are orders of magnitude off
on another. Each loss therefore takes a ``scale`` it is multiplied by; ``optimize`` passes one
over the network's feature scale to the power the term grows with (``loss_normalization:
network``), or 1, which gives the terms of PyTorch's tutorial and neural-style
(``loss_normalization: none``, where ``content_weight: 1, style_weight: 1e6`` are the familiar
weights).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class _SelfProduct(torch.autograd.Function):
    """F F^T with the gradient (G + G^T) F: one matmul, where autograd would treat the two
    operands apart and run two, plus a strided add over the whole feature map."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flat)
        return flat @ flat.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (flat,) = ctx.saved_tensors
        return (grad + grad.transpose(1, 2)) @ flat


def gram(features: torch.Tensor) -> torch.Tensor:
    """Feature correlations (B, C, C) of features (B, C, H, W), normalized by C x H x W."""
    b, c, h, w = features.shape
    return _SelfProduct.apply(features.reshape(b, c, h * w)) / (c * h * w)


@dataclass(frozen=True)
class Moments:
    """Sums over the positions of one image's features (1, C, H, W): all a style loss needs of
    them. Sums add up, so a whole image's moments are those of its parts added (tiling)."""

    count: int  # positions
    sum: torch.Tensor | None  # (C,); None in a gradient: the loss does not depend on it
    outer: torch.Tensor  # (C, C): the sum of F F^T

    @classmethod
    def of(cls, features: torch.Tensor) -> "Moments":
        flat = features.reshape(1, features.shape[1], -1)
        return cls(flat.shape[-1], flat.sum(-1)[0], _SelfProduct.apply(flat)[0])

    def __add__(self, other: "Moments") -> "Moments":
        return Moments(self.count + other.count, self.sum + other.sum, self.outer + other.outer)

    def dot(self, other: "Moments") -> torch.Tensor:
        """The sum of the element-wise products of the two sums: with ``self`` a loss's gradient
        with respect to the moments, the part of the loss whose gradient ``other`` carries."""
        product = (self.outer * other.outer).sum()
        return product if self.sum is None else product + (self.sum * other.sum).sum()

    def leaves(self) -> "Moments":
        """A copy autograd can differentiate a loss with respect to."""
        return Moments(self.count, self.sum.detach().requires_grad_(), self.outer.detach().requires_grad_())

    def gradient(self, loss: torch.Tensor) -> "Moments":
        """The gradient of ``loss`` with respect to these moments (made by ``leaves``)."""
        grad_sum, grad_outer = torch.autograd.grad(loss, [self.sum, self.outer], allow_unused=True, retain_graph=True)
        return Moments(self.count, grad_sum, grad_outer if grad_outer is not None else torch.zeros_like(self.outer))


def blend(moments: Sequence[Moments], weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted mean (C,) and second raw moment (C, C) of several images' features: unlike
    covariances, these blend linearly."""
    pairs = [(m.sum / m.count, m.outer / m.count) for m in moments]
    mean = sum(w * mean for (mean, _), w in zip(pairs, weights, strict=True))
    second = sum(w * second for (_, second), w in zip(pairs, weights, strict=True))
    return mean, second


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("target", target.detach())
        self.scale = scale

    def forward(self, features: torch.Tensor, region: tuple[slice, slice] | None = None) -> torch.Tensor:
        """The loss, or with ``region`` (rows, columns of the target) the part of it that those
        positions' ``features`` add: the parts of a tiling add up to the loss."""
        if region is None:
            return F.mse_loss(features, self.target) * self.scale
        target = self.target[..., region[0], region[1]]
        return (features - target).pow(2).sum() * (self.scale / self.target.numel())


class StyleLoss(nn.Module):
    """Distance between the Gram matrix of the features and a target Gram matrix.

    Several style images are blended by blending their Gram matrices, as neural-style's
    ``-style_blend_weights`` does.
    """

    def __init__(self, target_gram: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("target", target_gram.detach())
        self.scale = scale

    @classmethod
    def blended(cls, moments: Sequence[Moments], weights: Sequence[float], scale: float = 1.0) -> "StyleLoss":
        channels = len(moments[0].sum)
        target = sum(w * m.outer / (channels * m.count) for m, w in zip(moments, weights, strict=True))
        return cls(target.unsqueeze(0), scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(gram(features), self.target) * self.scale

    def from_moments(self, moments: Moments) -> torch.Tensor:
        """The loss of features with these moments."""
        channels = len(moments.sum)
        return F.mse_loss(moments.outer.unsqueeze(0) / (channels * moments.count), self.target) * self.scale


def _sqrtm(matrix: torch.Tensor, iterations: int = 12) -> torch.Tensor:
    """Square root of a symmetric positive definite matrix by Newton-Schulz iterations: matrix
    products only, so autograd differentiates it stably (an eigendecomposition's gradient divides
    by differences of eigenvalues)."""
    norm = matrix.norm()
    identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    y, z = matrix / norm, identity
    for _ in range(iterations):
        t = (3 * identity - z @ y) / 2
        y, z = y @ t, t @ z
    return y * norm.sqrt()


class WassersteinStyleLoss(nn.Module):
    """The squared 2-Wasserstein distance between Gaussians fitted to the features and to the
    style's (crowsonkb/style-transfer-pytorch's ``StyleLossW2``): a match of means and
    covariances, with none of the Gram matrix's mixing of the two. ``style_loss: wasserstein``."""

    def __init__(self, mean: torch.Tensor, second: torch.Tensor, scale: float = 1.0, eps: float = 1e-4):
        super().__init__()
        covariance = second - torch.outer(mean, mean)
        # eps relative to the covariance's size, so the loss keeps its meaning on any network
        self.eps = eps * covariance.diagonal().mean().clamp_min(1e-12).item()
        identity = torch.eye(len(mean), dtype=mean.dtype, device=mean.device)
        covariance = covariance + self.eps * identity
        self.register_buffer("mean", mean.detach())
        self.register_buffer("covariance", covariance.detach())
        self.register_buffer("root", _sqrtm(covariance).detach())
        self.scale = scale

    @classmethod
    def blended(cls, moments: Sequence[Moments], weights: Sequence[float], scale: float = 1.0) -> "WassersteinStyleLoss":
        return cls(*blend(moments, weights), scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.from_moments(Moments.of(features))

    def from_moments(self, moments: Moments) -> torch.Tensor:
        """The loss of features with these moments."""
        mean, second = moments.sum / moments.count, moments.outer / moments.count
        identity = torch.eye(len(mean), dtype=mean.dtype, device=mean.device)
        covariance = second - torch.outer(mean, mean) + self.eps * identity
        cross = _sqrtm(self.root @ covariance @ self.root)
        distance = (mean - self.mean).pow(2).mean() + (self.covariance + covariance - 2 * cross).diagonal().mean()
        return distance * self.scale


class TVLoss(nn.Module):
    """Total variation: mean squared difference between neighbouring pixels (smoothness)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.pow(2).mean() + dy.pow(2).mean()


class StyleTransferLoss(nn.Module):
    """Weighted sum of content, style and TV losses over named feature maps.

    ``forward`` returns the total and each term as it enters the total (weight applied), so the
    terms of a loss log add up to its total.
    """

    def __init__(
        self,
        content: Mapping[str, ContentLoss],
        style: Mapping[str, nn.Module],
        layer_weights: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
    ):
        super().__init__()
        self.content = nn.ModuleDict(content)
        self.style = nn.ModuleDict(style)
        self.layer_weights = dict(layer_weights)
        self.weights = {"content": content_weight, "style": style_weight, "tv": tv_weight}
        self.tv = TVLoss()

    def forward(self, image: torch.Tensor, features: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        terms = {
            "content": sum(loss(features[name]) for name, loss in self.content.items()),
            "style": sum(self.layer_weights[name] * loss(features[name]) for name, loss in self.style.items()),
            "tv": self.tv(image) if self.weights["tv"] else image.new_zeros(()),
        }
        terms = {name: self.weights[name] * value for name, value in terms.items()}
        return sum(terms.values()), terms
