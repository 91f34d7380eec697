"""The losses of Gatys et al., one small module each, composed by :class:`StyleTransferLoss`.

Every term is a mean, not a sum, so the same weights work at any image size: the Gram matrix is
divided by C x H x W and its error averaged over its C x C entries (the convention of PyTorch's
tutorial, with which ``content_weight: 1, style_weight: 1e6`` are the familiar defaults).
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
    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target.detach())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(features, self.target)


class StyleLoss(nn.Module):
    """Distance between the Gram matrix of the features and a target Gram matrix.

    Several style images are blended by blending their Gram matrices, as neural-style's
    ``-style_blend_weights`` does.
    """

    def __init__(self, target_gram: torch.Tensor):
        super().__init__()
        self.register_buffer("target", target_gram.detach())

    @classmethod
    def blended(cls, style_features: Sequence[torch.Tensor], weights: Sequence[float]) -> "StyleLoss":
        return cls(sum(w * gram(f) for f, w in zip(style_features, weights, strict=True)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(gram(features), self.target)


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
        style: Mapping[str, StyleLoss],
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
