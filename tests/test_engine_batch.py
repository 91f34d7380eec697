"""stylize_batch(): members of one shape share forward passes yet end as they would alone,
each with its own losses, optimizer state, iteration count, callback and failure."""

import pytest
import torch

from nst_batch.engine import FeatureExtractor, Member, Result, StyleParams, batch_key, stylize, stylize_batch
from nst_batch.errors import DivergedError, InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 24  # the side of conftest's tiny images


def _params(**overrides) -> StyleParams:
    return StyleParams(**{"image_size": SIZE, "iterations": 6, "seed": 0, "early_stop_tol": 0, **overrides})


def _noise(seed: int, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    return torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(seed))


def _alone(network, member: Member) -> Result:
    return stylize(network, member.content, member.styles, member.params, callback=member.callback, resume=member.resume)


# A batched convolution rounds differently from a single one (features agree to ~1e-7), and
# L-BFGS's curvature pairs let that grow over the iterations; Adam's steps barely amplify it.
TOLERANCE = {"adam": (1e-4, 1e-4), "lbfgs": (1e-3, 2e-2)}  # (loss rtol, pixel atol)


def _assert_same(batched: Result, alone: Result, optimizer: str = "lbfgs") -> None:
    """The same run: iteration for iteration the same losses, and the same image."""
    loss_rtol, pixel_atol = TOLERANCE[optimizer]
    assert [r.iteration for r in batched.history] == [r.iteration for r in alone.history]
    assert batched.scale_starts == alone.scale_starts
    assert batched.early_stops == alone.early_stops
    batched_totals = torch.tensor([r.total for r in batched.history])
    alone_totals = torch.tensor([r.total for r in alone.history])
    torch.testing.assert_close(batched_totals, alone_totals, rtol=loss_rtol, atol=0)
    torch.testing.assert_close(batched.image, alone.image, rtol=0, atol=pixel_atol)


def _members(tiny_images, optimizer: str, **overrides) -> list[Member]:
    """Three transfers that differ in everything a batch lets them differ in."""
    return [
        Member(tiny_images.gradient, [tiny_images.noise], _params(optimizer=optimizer, **overrides)),
        Member(tiny_images.checkerboard, [_noise(1)], _params(optimizer=optimizer, style_weight=1e4, seed=3, **overrides)),
        Member(
            _noise(2), [tiny_images.noise, _noise(4, 40, 30)],
            _params(optimizer=optimizer, init="noise", seed=5, tv_weight=1e-2, style_blend_weights=(3, 1), **overrides),
        ),
    ]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_batch_gives_each_member_the_run_it_would_have_had_alone(vgg19_random, tiny_images, optimizer):
    members = _members(tiny_images, optimizer)
    batched = stylize_batch(vgg19_random, members)
    for member, result in zip(members, batched, strict=True):
        _assert_same(result, _alone(vgg19_random, member), optimizer)
    assert len({result.image.sum().item() for result in batched}) == 3  # three different runs, not one thrice


def test_lbfgs_members_keep_their_own_history_size_and_step(vgg19_random, tiny_images):
    members = [
        Member(tiny_images.gradient, [tiny_images.noise], _params(lbfgs_history=2, iterations=8)),
        Member(tiny_images.gradient, [tiny_images.noise], _params(lbfgs_history=50, lr=0.5, iterations=8)),
    ]
    short_history, long_history = stylize_batch(vgg19_random, members)
    _assert_same(short_history, _alone(vgg19_random, members[0]))
    _assert_same(long_history, _alone(vgg19_random, members[1]))
    assert short_history.history[-1].total != pytest.approx(long_history.history[-1].total, rel=1e-3)


def test_adam_and_lbfgs_members_and_different_lengths_share_a_batch(vgg19_random, tiny_images):
    members = [
        Member(tiny_images.gradient, [tiny_images.noise], _params(optimizer="adam", iterations=3)),
        Member(tiny_images.checkerboard, [tiny_images.noise], _params(optimizer="lbfgs", iterations=7)),
    ]
    adam, lbfgs = stylize_batch(vgg19_random, members)
    assert (len(adam.history), len(lbfgs.history)) == (3, 7)
    _assert_same(adam, _alone(vgg19_random, members[0]), "adam")
    _assert_same(lbfgs, _alone(vgg19_random, members[1]))


def test_members_go_through_the_scales_together(vgg19_random, tiny_images):
    members = _members(tiny_images, "lbfgs", scales=2, image_size=48, iterations=3)
    for member, result in zip(members, stylize_batch(vgg19_random, members), strict=True):
        assert result.scale_starts == [0, 3]
        _assert_same(result, _alone(vgg19_random, member))


def test_a_member_that_stops_early_leaves_the_others_running(vgg19_random, tiny_images):
    early = _params(optimizer="adam", iterations=40, early_stop_tol=0.5, early_stop_window=2)
    members = [Member(tiny_images.gradient, [tiny_images.noise], early), *_members(tiny_images, "adam")[1:]]
    stopped, *others = stylize_batch(vgg19_random, members)
    assert stopped.early_stops and len(stopped.history) < 40
    assert [len(r.history) for r in others] == [6, 6]
    _assert_same(stopped, _alone(vgg19_random, members[0]), "adam")


def test_a_member_whose_callback_stops_it_can_resume_alone_to_the_same_result(vgg19_random, tiny_images):
    members = _members(tiny_images, "lbfgs")
    stop_second = Member(members[1].content, members[1].styles, members[1].params,
                         callback=lambda progress: progress.iteration == 2)
    first, interrupted, third = stylize_batch(vgg19_random, [members[0], stop_second, members[2]])
    assert interrupted.interrupted and interrupted.state.iteration == 2
    assert not first.interrupted and len(first.history) == len(third.history) == 6
    resumed = stylize(vgg19_random, members[1].content, members[1].styles, members[1].params, resume=interrupted.state)
    _assert_same(resumed, _alone(vgg19_random, members[1]))


def test_a_diverging_member_fails_alone(vgg19_random, tiny_images):
    members = _members(tiny_images, "adam")
    blows_up = Member(tiny_images.gradient, [tiny_images.noise], _params(optimizer="adam", lr=1e30))
    outcomes = stylize_batch(vgg19_random, [members[0], blows_up, members[2]])
    assert isinstance(outcomes[1], DivergedError)
    _assert_same(outcomes[0], _alone(vgg19_random, members[0]), "adam")
    _assert_same(outcomes[2], _alone(vgg19_random, members[2]), "adam")


def test_a_member_whose_callback_raises_ends_with_that_error_and_the_others_go_on(vgg19_random, tiny_images):
    """A daemon's callback writes progress to a database, which may fail: that ends its run only."""
    members = _members(tiny_images, "lbfgs")

    def broken(progress) -> bool:
        if progress.iteration == 3:
            raise RuntimeError("database is locked")
        return False

    failing = Member(tiny_images.gradient, [_noise(6)], _params(), callback=broken)
    outcomes = stylize_batch(vgg19_random, [members[0], failing, members[2]])
    assert isinstance(outcomes[1], RuntimeError) and "database is locked" in str(outcomes[1])
    _assert_same(outcomes[0], _alone(vgg19_random, members[0]))
    _assert_same(outcomes[2], _alone(vgg19_random, members[2]))
    with pytest.raises(RuntimeError, match="database is locked"):  # alone, stylize() raises it
        _alone(vgg19_random, failing)


def test_running_out_of_memory_in_one_member_is_raised_for_the_whole_batch(vgg19_random, tiny_images):
    def no_memory(progress) -> bool:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    members = _members(tiny_images, "adam", iterations=2)
    with pytest.raises(torch.OutOfMemoryError):
        stylize_batch(vgg19_random, [*members, Member(tiny_images.gradient, [_noise(6)], _params(), callback=no_memory)])


def test_a_member_with_a_style_too_narrow_gets_its_error_and_the_others_run(vgg19_random, tiny_images):
    members = _members(tiny_images, "adam", iterations=2)
    narrow = Member(tiny_images.gradient, [_noise(0, 4, 64)], _params(optimizer="adam", iterations=2))
    outcomes = stylize_batch(vgg19_random, [narrow, *members[1:]])
    assert isinstance(outcomes[0], InputError) and "too narrow" in str(outcomes[0])
    assert all(isinstance(result, Result) and len(result.history) == 2 for result in outcomes[1:])


def test_a_member_sees_its_own_features_in_the_batched_pass(vgg19_random, tiny_images):
    extractor = FeatureExtractor(vgg19_random, ["relu1_1", "relu3_1", "relu5_1"])
    alone = extractor(tiny_images.checkerboard)
    batched = extractor(torch.cat([tiny_images.gradient, tiny_images.checkerboard, tiny_images.noise]))
    for name, features in alone.items():
        torch.testing.assert_close(batched[name][1:2], features, rtol=1e-5, atol=1e-5)


def test_batch_key_is_the_network_truncation_and_the_shape_at_every_scale():
    content = (1, 3, 30, 40)
    key = batch_key(_params(), content)
    for same in (dict(style_weight=1), dict(optimizer="adam", lr=0.1), dict(seed=9, init="noise"),
                 dict(iterations=50, lbfgs_history=3), dict(style_scale=2.0, preserve_colors=True)):
        assert batch_key(_params(**same), content) == key, same
    for different in (dict(image_size=32), dict(scales=2), dict(pooling="avg"),
                      dict(style_layers=("relu1_1",)), dict(backbone="vgg16")):
        assert batch_key(_params(**different), content) != key, different
    assert batch_key(_params(), (1, 3, 40, 30)) != key  # portrait and landscape
    assert batch_key(_params(), (1, 3, 300, 400)) == key  # the same shape once resized


def test_members_of_different_shapes_are_refused(vgg19_random, tiny_images):
    members = [Member(tiny_images.gradient, [tiny_images.noise], _params()),
               Member(_noise(0, 12, 24), [tiny_images.noise], _params())]
    with pytest.raises(ValueError, match="batch_key"):
        stylize_batch(vgg19_random, members)


def test_a_resumed_member_joins_fresh_ones_and_each_ends_as_alone(vgg19_random, tiny_images):
    members = _members(tiny_images, "lbfgs", scales=2, image_size=48, iterations=3)
    stop_at_4 = Member(members[0].content, members[0].styles, members[0].params,
                       callback=lambda progress: progress.iteration == 4)  # in the second scale
    (interrupted,) = stylize_batch(vgg19_random, [stop_at_4])
    assert interrupted.state.scale == 1
    resumed = Member(members[0].content, members[0].styles, members[0].params, resume=interrupted.state)
    outcomes = stylize_batch(vgg19_random, [members[1], resumed, members[2]])
    for member, result in zip([members[1], members[0], members[2]], outcomes, strict=True):
        _assert_same(result, _alone(vgg19_random, member))
