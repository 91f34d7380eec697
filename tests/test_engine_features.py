"""Layer names, the backbones they name, the truncated extractor, and StyleParams' layer checks."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torchvision.models.vgg import cfgs

from nst_batch.engine import FeatureExtractor, StyleParams, load_network
from nst_batch.engine.features import TORCHVISION
from nst_batch.engine.layers import LAYERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONV_CHANNELS = (64, 128, 256, 512, 512)  # out_channels of block 1..5 of both VGGs
TORCHVISION_CFG = {"vgg16": "D", "vgg19": "E"}


@pytest.fixture(scope="module")
def resnet18_random():
    network, _ = load_network("resnet18", "random")
    return network


@pytest.fixture(params=["vgg19", "vgg16"])
def vgg(request, vgg19_random):
    return vgg19_random if request.param == "vgg19" else load_network("vgg16", "random")[0]


def test_vgg_names_follow_torchvisions_features_in_order(vgg):
    """torchvision's config lists conv widths and 'M' (max pool): our names must line up with it."""
    expected = []
    for entry in cfgs[TORCHVISION_CFG[vgg.backbone]]:
        expected += [nn.MaxPool2d] if entry == "M" else [nn.Conv2d, nn.ReLU]
    assert [type(module) for module in vgg.layers.values()] == expected
    assert list(vgg.layers) == list(LAYERS[vgg.backbone])


def test_vgg_conv_names_have_their_blocks_width_and_each_relu_follows_its_conv(vgg):
    names = list(vgg.layers)
    for index, name in enumerate(names):
        module = vgg.layers[name]
        if name.startswith("conv"):
            block = int(name[4])
            assert isinstance(module, nn.Conv2d), name
            assert module.out_channels == CONV_CHANNELS[block - 1], name
            assert names[index + 1] == "relu" + name[4:]
        elif name.startswith("relu"):
            assert isinstance(module, nn.ReLU), name
            assert names[index - 1] == "conv" + name[4:]
        else:
            assert name.startswith("pool") and isinstance(module, nn.MaxPool2d), name
    assert [name for name in names if name.startswith("pool")] == [f"pool{b}" for b in range(1, 6)]


def test_random_weights_are_the_same_every_time_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first, _ = load_network("resnet18", "random")
    assert torch.equal(torch.rand(3), expected_draw)
    second, _ = load_network("resnet18", "random")
    assert torch.equal(first.layers["layer3"][0].conv1.weight, second.layers["layer3"][0].conv1.weight)


def test_extractor_stops_at_the_deepest_requested_layer(vgg19_random, tiny_images):
    extractor = FeatureExtractor(vgg19_random, ["relu2_1"])
    depth = LAYERS["vgg19"].index("relu2_1") + 1  # conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1
    assert depth == 7
    assert extractor.names == list(LAYERS["vgg19"][:depth])
    assert len(extractor.body) == depth
    features = extractor(tiny_images.gradient)
    assert set(features) == {"relu2_1"}
    assert features["relu2_1"].shape == (1, 128, 12, 12)


def test_extractor_rejects_an_unknown_layer(vgg19_random):
    with pytest.raises(ValueError, match="relu9_9"):
        FeatureExtractor(vgg19_random, ["relu1_1", "relu9_9"])


def test_avg_pooling_replaces_max_pooling_in_the_extractor_only(vgg19_random, tiny_images):
    avg = FeatureExtractor(vgg19_random, ["relu3_1"], pooling="avg")
    pools = [module for name, module in zip(avg.names, avg.body) if name.startswith("pool")]
    assert len(pools) == 2
    assert all(isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2 for pool in pools)
    assert all(isinstance(vgg19_random.layers[f"pool{b}"], nn.MaxPool2d) for b in range(1, 6))

    max_features = FeatureExtractor(vgg19_random, ["relu3_1"])(tiny_images.noise)["relu3_1"]
    avg_features = avg(tiny_images.noise)["relu3_1"]
    assert avg_features.shape == max_features.shape
    assert not torch.allclose(avg_features, max_features)


@pytest.mark.parametrize("layers", [("conv1_1", "relu1_1"), ("conv1_1", "relu2_1")])
def test_a_captured_conv_output_is_not_overwritten_by_the_inplace_relu(vgg19_random, tiny_images, layers):
    features = FeatureExtractor(vgg19_random, layers)(tiny_images.noise)
    conv = features["conv1_1"]
    assert conv.min() < 0  # random filters give negative responses; an in-place ReLU would zero them
    if "relu1_1" in features:
        assert torch.equal(features["relu1_1"], conv.clamp(min=0))


def test_torchvision_normalization_of_a_known_pixel(vgg19_random):
    assert vgg19_random.normalization == TORCHVISION
    pixel = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    by_hand = [(0.2 - 0.485) / 0.229, (0.4 - 0.456) / 0.224, (0.6 - 0.406) / 0.225]
    normalized = FeatureExtractor(vgg19_random, ["conv1_1"]).normalize(pixel)
    torch.testing.assert_close(normalized.flatten(), torch.tensor(by_hand))


def test_network_is_frozen_but_gradients_reach_the_image(vgg19_random, tiny_images):
    assert all(not p.requires_grad for module in vgg19_random.layers.values() for p in module.parameters())
    assert all(not module.training for module in vgg19_random.layers.values())
    image = tiny_images.noise.requires_grad_(True)
    FeatureExtractor(vgg19_random, ["relu3_1"])(image)["relu3_1"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert vgg19_random.layers["conv1_1"].weight.grad is None


def test_resnet18_is_in_eval_mode_so_batch_norm_statistics_do_not_move(resnet18_random, tiny_images):
    modules = [m for stage in resnet18_random.layers.values() for m in stage.modules()]
    assert all(not module.training for module in modules)
    batch_norm = resnet18_random.layers["layer1"][0].bn1
    before = batch_norm.running_mean.clone()
    FeatureExtractor(resnet18_random, ["layer1"])(tiny_images.noise)
    assert torch.equal(batch_norm.running_mean, before)


def test_resnet18_extractor_returns_its_stages_with_their_widths(resnet18_random):
    image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    stages = ["layer1", "layer2", "layer3", "layer4"]
    features = FeatureExtractor(resnet18_random, stages)(image)
    assert {name: features[name].shape for name in stages} == {
        "layer1": (1, 64, 16, 16),
        "layer2": (1, 128, 8, 8),
        "layer3": (1, 256, 4, 4),
        "layer4": (1, 512, 2, 2),
    }


@pytest.mark.parametrize(
    ("backbone", "deepest", "min_side"),
    [("vgg19", "relu1_1", 1), ("vgg19", "relu3_1", 4), ("vgg19", "relu5_1", 16), ("resnet18", "layer4", 32)],
)
def test_min_side_is_the_smallest_input_that_reaches_the_deepest_layer(
    vgg19_random, resnet18_random, backbone, deepest, min_side
):
    network = vgg19_random if backbone == "vgg19" else resnet18_random
    extractor = FeatureExtractor(network, [deepest])
    assert extractor.min_side == min_side
    with torch.no_grad():
        assert extractor(torch.rand(1, 3, min_side, min_side))[deepest].shape[-1] >= 1
        if backbone == "vgg19" and min_side > 1:  # VGG's unpadded pools fail below it; ResNet pads
            with pytest.raises(RuntimeError):
                extractor(torch.rand(1, 3, min_side // 2, min_side // 2))


@pytest.mark.parametrize(
    ("backbone", "layer", "suggestion"),
    [("vgg19", "rleu4_2", "'relu4_2'"), ("vgg16", "relu4_4", "'relu4_3'"), ("resnet18", "layer5", "'layer")],
)
def test_style_params_reject_an_unknown_layer_with_a_suggestion(backbone, layer, suggestion):
    with pytest.raises(ValidationError) as error:
        StyleParams(backbone=backbone, style_layers=[layer])
    assert error.value.errors()[0]["loc"] == ("style_layers",)
    message = str(error.value)
    assert f"unknown layer {layer!r} for {backbone}" in message
    assert f"did you mean {suggestion}" in message


def test_style_params_reject_a_layer_of_another_backbone():
    with pytest.raises(ValidationError, match="unknown layer 'relu4_2' for resnet18"):
        StyleParams(backbone="resnet18", content_layers=["relu4_2"])


@pytest.mark.parametrize(
    ("layers", "expected"),
    [({"style_layers": "relu1_1 relu2_1 relu3_1"}, "2 values for 3 style layers"), ({}, "2 values for 5 style layers")],
)
def test_style_params_reject_a_style_layer_weight_count_that_does_not_match(layers, expected):
    with pytest.raises(ValidationError, match=expected) as error:
        StyleParams(**layers, style_layer_weights=[1, 0.5])
    assert error.value.errors()[0]["loc"] == ("style_layer_weights",)


def test_style_params_accept_one_weight_per_style_layer():
    params = StyleParams(style_layers="relu1_1,relu2_1", style_layer_weights="1 0.5")
    assert params.layer_weights == {"relu1_1": 1.0, "relu2_1": 0.5}
