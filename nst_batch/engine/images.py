"""Image tensors: (1, 3, H, W), RGB, float in [0, 1]. Resizing and colour handling."""

import torch
import torch.nn.functional as F

_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def fit_long_side(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) scaled so the longer side is ``size``, aspect kept."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(shape):
        return image
    return F.interpolate(image, size=shape, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    return resize(image, fit_long_side(*image.shape[-2:], size))


# A progress frame is a preview (a GIF's frame): at most this many pixels on its long side, whatever
# the image's size. At 4096 px a full-size frame would be 50 MB in fp32; this one is at most 3 MB.
FRAME_LONG_SIDE = 512


def shrink_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """The image with its long side at most ``size`` (aspect kept); a smaller one as it is."""
    return resize_long_side(image, size) if max(image.shape[-2:]) > size else image


def _mix(image: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", matrix.to(image), image)


def rgb_to_yiq(image: torch.Tensor) -> torch.Tensor:
    return _mix(image, _RGB_TO_YIQ)


def yiq_to_rgb(image: torch.Tensor) -> torch.Tensor:
    return _mix(image, _YIQ_TO_RGB)


def luminance(image: torch.Tensor) -> torch.Tensor:
    """The image as grey: its luminance in all three channels."""
    return rgb_to_yiq(image)[:, :1].expand_as(image).contiguous()


def keep_colors(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance with the content's chroma (Gatys et al. 2016, colour preservation)."""
    content = resize(content, tuple(result.shape[-2:]))
    yiq = torch.cat([rgb_to_yiq(result)[:, :1], rgb_to_yiq(content)[:, 1:]], dim=1)
    return yiq_to_rgb(yiq).clamp(0, 1)
