"""Speed switches: what `auto` chooses, and that the measured-safe ones keep the loss within 1%."""

import pytest
import torch

from nst_batch.engine import Speed, StyleParams, stylize
from nst_batch.settings.config import PerformanceConfig
from nst_batch.settings.tuning import choose_speed, cpu_threads


@pytest.mark.parametrize(
    ("optimizer", "device", "cpu_bf16", "expected"),
    [
        ("adam", "cpu", True, Speed("bf16")),
        ("adam", "cpu", False, Speed()),
        ("lbfgs", "cpu", True, Speed()),  # L-BFGS drifts 8-34% under bf16: off
        ("adam", "cuda", True, Speed()),  # not measured on a GPU yet: off
    ],
)
def test_auto_turns_on_only_what_was_measured_safe(optimizer, device, cpu_bf16, expected):
    assert choose_speed(PerformanceConfig(), optimizer, device, cpu_bf16) == expected


def test_explicit_settings_win():
    settings = PerformanceConfig(autocast="fp16", channels_last=True)
    assert choose_speed(settings, "lbfgs", "cuda", False) == Speed("fp16", True)
    assert choose_speed(PerformanceConfig(autocast=False), "adam", "cpu", True) == Speed()  # YAML's `off`


@pytest.mark.parametrize(
    ("configured", "omp", "expected"),
    [(None, None, 16), (None, "4", 4), (3, "4", 3), (None, "4,2", 4), (None, "64", 16), (None, "", 16),
     (None, "four", 16), (None, "0", 16)],
)
def test_cpu_threads_follow_the_config_then_omp_num_threads_then_the_cores(configured, omp, expected):
    assert cpu_threads(configured, omp, cores=16) == expected


@pytest.mark.parametrize("speed", [Speed("bf16"), Speed(None, channels_last=True)])
def test_adam_with_a_speed_switch_stays_within_one_percent_of_fp32(vgg19_random, tiny_images, speed):
    params = StyleParams(image_size=32, iterations=8, optimizer="adam", seed=1, early_stop_tol=0)
    reference = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params).history[-1].total
    fast = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params, speed=speed).history[-1].total
    assert abs(fast - reference) <= 0.01 * reference
    if speed.channels_last:
        for module in vgg19_random.layers.values():  # leave the shared network as it was found
            module.to(memory_format=torch.contiguous_format)


def test_features_come_back_in_fp32_under_autocast(vgg19_random, tiny_images):
    from nst_batch.engine import FeatureExtractor

    features = FeatureExtractor(vgg19_random, ["relu1_1", "relu3_1"], speed=Speed("bf16"))(tiny_images.gradient)
    assert {f.dtype for f in features.values()} == {torch.float32}


def test_a_compiled_gradient_pass_gives_the_eager_result(vgg19_random, tiny_images):
    """performance.compile: one graph for the batch's shape, the same losses as without it."""
    from torch._dynamo.utils import counters

    from nst_batch.engine import Member, stylize_batch

    # Two layers: inductor compiles C++ for every kernel, which on a CPU costs seconds a layer.
    params = StyleParams(image_size=24, iterations=3, optimizer="adam", seed=1, early_stop_tol=0,
                         content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    members = [Member(tiny_images.gradient, [tiny_images.noise], params),
               Member(tiny_images.checkerboard, [tiny_images.noise], params.with_overrides({"style_weight": 1e3}))]
    compiled_before = counters["stats"]["unique_graphs"]
    compiled = stylize_batch(vgg19_random, members, speed=Speed(compile=True))
    assert counters["stats"]["unique_graphs"] > compiled_before
    for fast, eager in zip(compiled, stylize_batch(vgg19_random, members), strict=True):
        assert [r.total for r in fast.history] == pytest.approx([r.total for r in eager.history], rel=1e-4)
        torch.testing.assert_close(fast.image, eager.image, rtol=0, atol=1e-4)
