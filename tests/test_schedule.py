"""The high-resolution schedule: a ladder of any ratio, iterations per scale, a fixed style size
and Adam's state carried across scales; validated, stored, resumed. Tiny images, random VGG-19."""

import json
import math

import pytest
import torch
from engine_helpers import losses_of, round_trip
from pydantic import ValidationError

from nst_batch.daemon.checkpoint import load_checkpoint
from nst_batch.daemon.memory import MemoryModel, run_need, run_seconds
from nst_batch.engine import StyleParams, stylize
from nst_batch.engine.optimize import _carried_adam_state
from nst_batch.util.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(**overrides) -> StyleParams:
    """Tiny, seeded and without early stop unless a test says otherwise."""
    return StyleParams(**{"image_size": 32, "iterations": 2, "scales": 2, "seed": 0, "early_stop_tol": 0, **overrides})


def _random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(seed))


# -- the ladder ------------------------------------------------------------------------------


def test_the_default_ladder_halves_and_scale_ratio_chooses_another():
    assert StyleParams(image_size=512, scales=4).scale_sizes == (64, 128, 256, 512)
    assert StyleParams(image_size=512, scales=4, scale_ratio=math.sqrt(2)).scale_sizes == (181, 256, 362, 512)
    assert StyleParams(image_size=512, scales=3, scale_ratio=1.5).scale_sizes == (228, 341, 512)


def test_the_engine_runs_at_the_ladders_sizes(vgg19_random, tiny_images):
    shapes = []
    params = _params(image_size=48, scales=3, scale_ratio=math.sqrt(2), iterations=1)
    stylize(vgg19_random, _random_image(48, 48), [tiny_images.noise], params,
            callback=lambda p: shapes.append(tuple(p.snapshot().image.shape[-2:])))
    assert shapes == [(24, 24), (34, 34), (48, 48)]


# -- iterations per scale --------------------------------------------------------------------


def test_each_scale_runs_its_own_iteration_count(vgg19_random, tiny_images):
    seen = []
    params = _params(image_size=48, scales=3, scale_iterations="3,2 1", iterations=7)
    result = stylize(vgg19_random, _random_image(48, 48), [tiny_images.noise], params, callback=seen.append)
    assert result.scale_starts == [0, 3, 5]
    assert len(result.history) == 6
    assert [p.scale for p in seen] == [0, 0, 0, 1, 1, 2]
    assert {p.total_iterations for p in seen} == {6}


def test_without_scale_iterations_iterations_is_per_scale():
    params = StyleParams(scales=3, iterations=40)
    assert [params.iterations_at(k) for k in range(3)] == [40, 40, 40] and params.total_iterations == 120


def test_the_time_model_counts_each_scales_iterations():
    one_second_each = MemoryModel(seconds_constant=1.0, seconds_per_activation_byte=0.0)
    params = StyleParams(image_size=64, scales=3, scale_iterations=(100, 50, 20))
    assert run_seconds(params, (64, 64), 1, one_second_each) == pytest.approx(170)
    unscheduled = StyleParams(image_size=64, scales=3, iterations=20)
    assert run_seconds(unscheduled, (64, 64), 1, one_second_each) == pytest.approx(60)


def test_the_memory_model_keeps_the_longest_scales_lbfgs_history():
    """Each scale starts a fresh L-BFGS, so its history is at most the most iterations of one scale."""
    scheduled = StyleParams(image_size=64, scales=2, lbfgs_history=100, scale_iterations=(50, 10))
    def need(params: StyleParams):
        return run_need(params, (64, 64), 1)

    assert need(scheduled) == need(StyleParams(image_size=64, scales=2, iterations=50))
    assert need(scheduled) != need(StyleParams(image_size=64, scales=2, iterations=10))


# -- style size ------------------------------------------------------------------------------


def test_style_size_is_the_styles_long_side_at_every_scale():
    fixed = StyleParams(image_size=512, scales=3, style_size=300)
    assert [fixed.style_long_side(size) for size in fixed.scale_sizes] == [300, 300, 300]
    scaled = StyleParams(image_size=512, scales=3, style_scale=0.5)
    assert [scaled.style_long_side(size) for size in scaled.scale_sizes] == [64, 128, 256]


def test_the_style_targets_are_computed_at_style_size(vgg19_random):
    """The first scale (24 px) of a run with style_size 48 matches its style as a one-scale run at
    24 px whose style_scale makes the style 48 px, and not as one whose style is 24 px."""
    content, style = _random_image(48, 48, seed=1), [_random_image(64, 64, seed=2)]
    fixed = stylize(vgg19_random, content, style, _params(image_size=48, style_size=48, iterations=1))
    doubled = stylize(vgg19_random, content, style, _params(image_size=24, scales=1, style_scale=2.0, iterations=1))
    plain = stylize(vgg19_random, content, style, _params(image_size=24, scales=1, iterations=1))
    assert fixed.history[0].style == pytest.approx(doubled.history[0].style, rel=1e-5)
    assert fixed.history[0].style != pytest.approx(plain.history[0].style, rel=1e-2)


def test_a_style_wide_enough_only_at_style_size_is_accepted_only_with_it(vgg19_random, tiny_images):
    narrow_style = [_random_image(20, 200)]  # at 24 px on its long side, its short side would be 2 px
    one_scale = {"image_size": 24, "scales": 1, "iterations": 1}
    stylize(vgg19_random, tiny_images.gradient, narrow_style, _params(**one_scale, style_size=200))
    with pytest.raises(InputError, match="style 1 image is too narrow.*style_size"):
        stylize(vgg19_random, tiny_images.gradient, narrow_style, _params(**one_scale))


def test_the_memory_model_counts_the_style_at_style_size():
    default, fixed = StyleParams(image_size=512), StyleParams(image_size=512, style_size=1024)
    grown = run_need(fixed, (512, 512), 2).exact_bytes - run_need(default, (512, 512), 2).exact_bytes
    assert grown == 4 * 2 * 3 * (1024**2 - 512**2)


# -- Adam's state across scales --------------------------------------------------------------


def test_carry_optimizer_goes_on_with_adams_moments_at_the_next_scales_shape(vgg19_random, tiny_images):
    content, style = _random_image(32, 32, seed=3), [tiny_images.noise]
    carried = _params(optimizer="adam", carry_optimizer=True, iterations=3)
    fresh = _params(optimizer="adam", iterations=3)
    with_carry, without = (stylize(vgg19_random, content, style, p, callback=lambda p: p.iteration == 5)
                           for p in (carried, fresh))
    # the first scale and the second's start image are the same; the second's first step is not
    assert losses_of(with_carry)[:4] == losses_of(without)[:4]
    assert with_carry.history[4].total != pytest.approx(without.history[4].total, rel=1e-4)
    state = with_carry.state.optimizer["state"][0]
    assert state["exp_avg"].shape == state["exp_avg_sq"].shape == (1, 3, 32, 32)
    assert state["step"].item() == 5  # 3 steps at 16 px, then two at 32 px
    assert without.state.optimizer["state"][0]["step"].item() == 2


def test_the_carried_moments_are_resized_and_scaled_to_the_next_scales_gradient():
    """Every loss is a mean over the pixels: at 4x the pixels a pixel's gradient is a quarter."""
    saved = {"state": {0: {"step": torch.tensor(30.0), "exp_avg": torch.full((1, 3, 8, 8), 0.2),
                           "exp_avg_sq": torch.full((1, 3, 8, 8), 0.04)}},
             "param_groups": [{"lr": 0.002, "betas": (0.9, 0.999), "params": [0]}]}
    carried = _carried_adam_state(saved, (16, 16), lr=0.02)
    moments = carried["state"][0]
    torch.testing.assert_close(moments["exp_avg"], torch.full((1, 3, 16, 16), 0.05))
    torch.testing.assert_close(moments["exp_avg_sq"], torch.full((1, 3, 16, 16), 0.04 / 16))
    assert moments["step"].item() == 30
    assert carried["param_groups"] == [{"lr": 0.02, "betas": (0.9, 0.999), "params": [0]}]  # a repair's lr is not kept


@pytest.mark.parametrize(
    ("overrides", "stop_at"),
    [({"optimizer": "adam", "carry_optimizer": True}, 2),  # mid-scale
     ({"optimizer": "adam", "carry_optimizer": True}, 3),  # the last iteration of the first scale
     ({"optimizer": "adam", "carry_optimizer": True}, 4),  # the first of the second
     ({"optimizer": "lbfgs", "scale_ratio": 1.5}, 3)],
)
def test_a_run_resumed_at_any_point_of_the_schedule_ends_as_an_uninterrupted_one(vgg19_random, tiny_images, overrides,
                                                                                 stop_at):
    content, style = 0.4 + 0.2 * _random_image(32, 32, seed=4), [tiny_images.noise]
    params = _params(scale_iterations=(3, 3), **overrides)
    whole = stylize(vgg19_random, content, style, params)
    first = stylize(vgg19_random, content, style, params, callback=lambda p: p.iteration == stop_at)
    assert first.interrupted and len(first.history) == stop_at
    rest = stylize(vgg19_random, content, style, params, resume=round_trip(first.state))
    assert rest.scale_starts == whole.scale_starts == [0, 3]
    torch.testing.assert_close(torch.tensor(losses_of(rest)), torch.tensor(losses_of(whole)), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(rest.image, whole.image, atol=1e-5, rtol=0)


# -- validation, storage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "key", "message"),
    [({"scales": 3, "scale_iterations": "100,50"}, "scale_iterations", "2 values for 3 scales: give one per scale"),
     ({"scales": 2, "scale_iterations": "100,0"}, "scale_iterations", "greater than or equal to 1"),
     ({"style_size": 256, "style_scale": 0.5}, "style_size", "style_size 256 and style_scale 0.5 both size"),
     ({"carry_optimizer": True}, "carry_optimizer", "L-BFGS's curvature pairs .*: set optimizer: adam"),
     ({"scale_ratio": 1.0}, "scale_ratio", "greater than 1")],
)
def test_a_schedule_that_cannot_run_is_refused_naming_its_key(given, key, message):
    with pytest.raises(ValidationError, match=message) as caught:
        StyleParams(**given)
    assert caught.value.errors()[0]["loc"][0] == key


def test_scale_iterations_reads_a_list_as_written_on_a_command_line():
    assert StyleParams(scales=3, scale_iterations="1000,500,200").scale_iterations == (1000, 500, 200)


def test_a_stored_schedule_reads_back_as_itself():
    params = StyleParams(
        image_size=1024, scales=3, scale_ratio=math.sqrt(2), scale_iterations=(400, 200, 100), style_size=512,
        optimizer="adam", carry_optimizer=True,
    )
    assert StyleParams.from_stored(json.loads(json.dumps(params.stored()))) == params


def test_a_record_from_before_the_schedule_means_what_it_meant():
    old = {"image_size": 256, "scales": 2, "iterations": 50, "style_scale": 0.5, "optimizer": "adam",
           "loss_normalization": "none", "lbfgs_max_step": 0.0}
    params = StyleParams.from_stored(old)
    assert params.scale_sizes == (128, 256)
    assert [params.iterations_at(k) for k in range(2)] == [50, 50]
    assert [params.style_long_side(size) for size in params.scale_sizes] == [64, 128]
    assert not params.carry_optimizer


def test_a_checkpoint_from_before_the_schedule_still_resumes(tmp_path, vgg19_random, tiny_images):
    """An older nst-batch recorded no schedule keys; its checkpoint is of the same run today."""
    params = _params(optimizer="adam", iterations=3)
    first = stylize(vgg19_random, _random_image(32, 32), [tiny_images.noise], params,
                    callback=lambda p: p.iteration == 4)
    record = params.stored()
    assert not {"scale_ratio", "scale_iterations", "style_size", "carry_optimizer"} & set(record)
    path = tmp_path / "run.ckpt"
    torch.save({"run": first.state.to_dict(), "frames": [], "params": json.dumps(record)}, path)
    resumed, _ = load_checkpoint(path, params)
    assert resumed is not None and resumed.iteration == 4 and resumed.scale == 1
    # ...while the schedule's keys are compared like any other: carrying the state is another run
    state, reel = load_checkpoint(path, params.with_overrides({"carry_optimizer": True}))
    assert state is None and len(reel) == 0
