"""Exact tiling: the tiled loss and gradient are the untiled ones, up to float rounding.

The networks are random and thin (VGG-19's and ResNet-18's layers and strides, fewer channels):
exactness depends on the shapes of the convolutions and pools, not on their widths, and thin
networks keep a 256 px image cheap.
"""

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vgg import make_layers

from nst_batch.engine import StyleParams, stylize
from nst_batch.engine.features import TORCHVISION, FeatureExtractor, build_network
from nst_batch.engine.layers import DEFAULT_LAYERS, receptive_fields
from nst_batch.engine.losses import StyleTransferLoss
from nst_batch.engine.optimize import scale_loss
from nst_batch.engine.tiling import TiledLoss, Tiling

SIZE = 256
TILE = 64  # interiors this small, so every tile's halo matters


def _thin_vgg19():
    torch.manual_seed(0)
    plan = [8, 8, "M", 16, 16, "M", 32, 32, 32, 32, "M", 64, 64, 64, 64, "M", 64, 64, 64, 64, "M"]
    return build_network("vgg19", make_layers(plan), TORCHVISION)


class _ThinResNet18(ResNet):
    def __init__(self):
        super().__init__(BasicBlock, [2, 2, 2, 2])
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(BasicBlock, 16, 2)
        self.layer2 = self._make_layer(BasicBlock, 32, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, 32, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, 32, 2, stride=2)


def _thin_resnet18():
    torch.manual_seed(0)
    return build_network("resnet18", _ThinResNet18(), TORCHVISION)


NETWORKS = {"vgg19": _thin_vgg19, "resnet18": _thin_resnet18}


@pytest.fixture(scope="module")
def networks():
    return {name: make() for name, make in NETWORKS.items()}


def _image(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    return torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(seed))


def _waves(frequency: float, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """Smooth colour waves: an image whose statistics are far from noise's, so the loss is far
    from its minimum and its gradient is not a difference of nearly equal numbers."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    channels = [torch.sin(frequency * (x + k * y) + k) for k in range(3)]
    return (torch.stack(channels).unsqueeze(0) + 1) / 2


def _loss(extractor, params: StyleParams, content, styles, tiling: Tiling) -> StyleTransferLoss:
    return scale_loss(extractor, tiling, content, styles, params, params.blend_weights(len(styles)), SIZE)


def _relative(tiled: torch.Tensor, whole: torch.Tensor) -> float:
    return ((tiled - whole).norm() / whole.norm()).item()


CASES = {
    "vgg19 max, one style": ("vgg19", {}, 1),
    "vgg19 avg, two styles": ("vgg19", {"pooling": "avg"}, 2),
    "vgg19 wasserstein, tv": ("vgg19", {"style_loss": "wasserstein", "tv_weight": 1.0}, 1),
    "resnet18 max, two styles": ("resnet18", {}, 2),
    "resnet18 avg": ("resnet18", {"pooling": "avg"}, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_the_tiled_gradient_is_the_untiled_gradient(networks, case):
    backbone, overrides, n_styles = CASES[case]
    params = StyleParams(backbone=backbone, **overrides)
    layers = (*params.content_layer_names, *params.style_layer_names)
    extractor = FeatureExtractor(networks[backbone], layers, params.pooling)
    content, styles = _waves(7.0), [_image(2 + i, SIZE - 32 * i, SIZE) for i in range(n_styles)]
    whole, tiles = Tiling.for_layers(backbone, layers, None), Tiling.for_layers(backbone, layers, TILE)
    assert len(tiles.tiles(SIZE, SIZE)) == 16 and tiles.halo < SIZE  # the halos overlap other tiles

    image = (0.7 * _waves(11.0) + 0.3 * _image(9)).requires_grad_(True)
    loss = _loss(extractor, params, content, styles, whole)
    total, _ = loss(image, extractor(image))
    total.backward()
    expected, image.grad = image.grad, None

    tiled_total, terms = TiledLoss(_loss(extractor, params, content, styles, tiles), extractor, tiles).backward(image)
    assert _relative(image.grad, expected) <= 1e-4
    assert tiled_total.item() == pytest.approx(total.item(), rel=1e-4)
    assert sum(terms.values()).item() == pytest.approx(tiled_total.item())


@pytest.mark.parametrize("backbone", NETWORKS)
@pytest.mark.parametrize("height, width", [(203, 157), (96, 250)])
def test_tiled_targets_are_the_whole_images(networks, backbone, height, width):
    """Odd sizes too: every feature position lies in exactly one tile's interior."""
    layers = DEFAULT_LAYERS[backbone][1]
    extractor = FeatureExtractor(networks[backbone], layers)
    image = _image(4, height, width)
    tiling = Tiling.for_layers(backbone, layers, TILE)
    whole = extractor(image)
    with torch.no_grad():
        for name, features in tiling.features(extractor, image, layers).items():
            assert features.shape == whole[name].shape
            torch.testing.assert_close(features, whole[name], rtol=1e-4, atol=1e-5)
    for name, moments in tiling.moments(extractor, image, layers).items():
        assert moments.count == whole[name].shape[-2] * whole[name].shape[-1]
        torch.testing.assert_close(moments.outer / moments.count, (whole[name].flatten(2) @ whole[name].flatten(2).mT)[0] / moments.count,
                                   rtol=1e-4, atol=1e-5)


def test_halos_cover_half_the_receptive_field_and_tiles_start_on_the_stride():
    fields = receptive_fields("vgg19")
    assert fields["relu5_1"].size == 156 and receptive_fields("resnet18")["layer3"].size == 211
    tiling = Tiling.for_layers("vgg19", ["relu4_2", "relu5_1"], 100)
    assert (tiling.align, tiling.interior, tiling.halo) == (16, 96, 80)  # 96: 100 rounded down to the stride
    for span in tiling.spans(1000):
        assert span.start % 16 == span.crop_start % 16 == 0
        assert span.crop_start == max(0, span.start - 80) and span.crop_stop == min(1000, span.stop + 80)
    assert Tiling.for_layers("vgg19", ["relu1_1"], 8).halo == 1  # one 3 x 3 convolution
    assert not Tiling.for_layers("vgg19", ["relu5_1"], None).splits(4096, 4096)


def test_a_tiled_run_makes_the_untiled_runs_picture(vgg19_random, tiny_images):
    """Through stylize(): Adam, a few iterations, two scales, tiles that split the larger one."""
    content = torch.nn.functional.interpolate(tiny_images.gradient, size=(64, 48), mode="bilinear")
    params = dict(iterations=3, optimizer="adam", scales=2, image_size=64, seed=0, early_stop_tol=0,
                  content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    whole = stylize(vgg19_random, content, [tiny_images.noise], StyleParams(**params))
    tiled = stylize(vgg19_random, content, [tiny_images.noise], StyleParams(**params, tile=16))
    assert Tiling.for_layers("vgg19", ("relu1_1", "relu2_1"), 16).splits(64, 48)
    torch.testing.assert_close(tiled.image, whole.image, rtol=0, atol=1e-4)
    for a, b in zip(tiled.history, whole.history):
        assert a.total == pytest.approx(b.total, rel=1e-4)
