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


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.register_buffer("target", target.detach())
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(features, self.target) * self.scale


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
    def blended(cls, style_features: Sequence[torch.Tensor], weights: Sequence[float], scale: float = 1.0) -> "StyleLoss":
        return cls(sum(w * gram(f) for f, w in zip(style_features, weights, strict=True)), scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(gram(features), self.target) * self.scale


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


def _moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and second raw moment (C, C) of features (1, C, H, W): unlike covariances,
    these blend linearly."""
    flat = features.reshape(features.shape[1], -1)
    return flat.mean(1), flat @ flat.T / flat.shape[1]


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
    def blended(
        cls, style_features: Sequence[torch.Tensor], weights: Sequence[float], scale: float = 1.0
    ) -> "WassersteinStyleLoss":
        moments = [_moments(f) for f in style_features]
        mean = sum(w * m for (m, _), w in zip(moments, weights, strict=True))
        second = sum(w * s for (_, s), w in zip(moments, weights, strict=True))
        return cls(mean, second, scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean, second = _moments(features)
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
