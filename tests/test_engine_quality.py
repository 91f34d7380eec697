"""What keeps a result worth looking at: loss weights that mean the same on every network, an
L-BFGS step that cannot throw the image away, repairs of blow-ups and stalls, and the check
that no flat, black or unchanged picture passes for a result."""

import copy

import pytest
import torch

from nst_batch.engine import FeatureExtractor, StyleParams, stylize
from nst_batch.engine.checks import result_problem
from nst_batch.engine.losses import gram
from nst_batch.util.errors import DivergedError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 24


def _params(**overrides) -> StyleParams:
    return StyleParams(**{"image_size": SIZE, "iterations": 6, "seed": 0, "early_stop_tol": 0, **overrides})


def _scaled_down(network, k: float):
    """The network in float64 with conv1's weights and every bias divided by ``k``: ReLU and
    max pooling commute with a positive factor, so every layer's output is divided by ``k``."""
    scaled = copy.deepcopy(network)
    scaled.scales.clear()  # measured on the weights before
    for layer in scaled.layers.values():
        layer.to(torch.float64)
    with torch.no_grad():
        first = True
        for layer in scaled.layers.values():
            if isinstance(layer, torch.nn.Conv2d):
                if first:
                    layer.weight.div_(k)
                    first = False
                layer.bias.div_(k)
    return scaled


@pytest.fixture(scope="module")
def network64(vgg19_random):
    return _scaled_down(vgg19_random, 1.0)


def test_dividing_conv1_and_every_bias_by_k_divides_every_layer_by_k(network64, tiny_images):
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    image = tiny_images.gradient.double()
    plain = FeatureExtractor(network64, layers)(image)
    smaller = FeatureExtractor(_scaled_down(network64, 50.0), layers)(image)
    for name in layers:
        torch.testing.assert_close(smaller[name] * 50, plain[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_the_defaults_give_the_same_run_on_a_network_whose_features_are_fifty_times_smaller(
    network64, tiny_images, optimizer
):
    """loss_normalization: network (the default). In float64 the two networks' features agree to 1e-15, so any
    difference here is the loss's, not rounding's; tolerance 1e-9 (L-BFGS amplifies such a
    rounding about 3e5-fold over six iterations: see test_engine_batch)."""
    content, style = tiny_images.gradient.double(), [tiny_images.noise.double()]
    params = _params(optimizer=optimizer)
    plain = stylize(network64, content, style, params)
    smaller = stylize(_scaled_down(network64, 50.0), content, style, params)
    torch.testing.assert_close(
        torch.tensor([r.total for r in smaller.history]), torch.tensor([r.total for r in plain.history]), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(smaller.image, plain.image, rtol=0, atol=1e-9)


def test_without_normalization_the_same_weights_mean_another_balance(network64, tiny_images):
    content, style = tiny_images.gradient.double(), [tiny_images.noise.double()]
    params = _params(loss_normalization="none", iterations=3)
    plain = stylize(network64, content, style, params)
    smaller = stylize(_scaled_down(network64, 50.0), content, style, params)
    first, second = plain.history[0], smaller.history[0]
    assert first.style / second.style == pytest.approx(50**4, rel=1e-6)  # the Gram matrix grows with k^2
    assert (smaller.image - plain.image).abs().max() > 1e-3


def _resnet_times(network, k: float):
    """ResNet-18 in float64 with every feature map k times larger. BatchNorm is not homogeneous,
    so the VGG construction fails here; instead: the stem's BatchNorm scales by k; in each block
    the first BatchNorm's running statistics take the k-fold input back to what it was, and the
    BatchNorms that write to the residual stream (the second, the downsample's) scale by k. With
    eps 0 (running variances are 1 in a random network) every step is exact."""
    scaled = copy.deepcopy(network)
    scaled.scales.clear()
    modules = list(scaled.layers.values())
    for layer in modules:
        layer.to(torch.float64)
        for bn in layer.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.eps = 0.0
    with torch.no_grad():
        stem_bn = modules[0][1]
        stem_bn.weight.mul_(k), stem_bn.bias.mul_(k)
        for stage in modules[2:]:
            for block in stage:
                block.bn1.running_mean.mul_(k), block.bn1.running_var.mul_(k * k)
                block.bn2.weight.mul_(k), block.bn2.bias.mul_(k)
                if block.downsample is not None:
                    bn = block.downsample[1]
                    bn.running_mean.mul_(k), bn.running_var.mul_(k * k), bn.weight.mul_(k), bn.bias.mul_(k)
    return scaled


def test_resnet_defaults_give_the_same_run_when_its_features_are_fifty_times_larger(tiny_images):
    from nst_batch.engine import load_network

    resnet, _ = load_network("resnet18", "random")
    plain, larger = _resnet_times(resnet, 1.0), _resnet_times(resnet, 50.0)
    image = tiny_images.gradient.double()
    layers = ["conv1", "layer1", "layer2", "layer3"]
    for name, feature in FeatureExtractor(plain, layers)(image).items():
        torch.testing.assert_close(FeatureExtractor(larger, layers)(image)[name], 50 * feature, rtol=1e-10, atol=1e-10)
    params = _params(backbone="resnet18", image_size=32, style_layers=("conv1", "layer1", "layer2"),
                     content_layers=("layer2",))
    content, style = tiny_images.gradient.double(), [tiny_images.noise.double()]
    one, other = stylize(plain, content, style, params), stylize(larger, content, style, params)
    torch.testing.assert_close(
        torch.tensor([r.total for r in other.history]), torch.tensor([r.total for r in one.history]), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(other.image, one.image, rtol=0, atol=1e-9)


def test_loss_normalization_none_gives_the_numbers_of_before(vgg19_random, tiny_images):
    """Today's figures for neural-style's weights: the terms unscaled, weights 1 and 1e6."""
    params = _params(loss_normalization="none", lbfgs_max_step=0, iterations=1)
    result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params)
    features = FeatureExtractor(vgg19_random, params.style_layer_names)
    with torch.no_grad():
        mine, theirs = features(tiny_images.gradient), features(tiny_images.noise)
        by_hand = sum(torch.nn.functional.mse_loss(gram(mine[n]), gram(theirs[n])) for n in params.style_layer_names)
    assert (params.alpha, params.beta) == (1.0, 1e6)
    assert result.history[0].style == pytest.approx(1e6 * by_hand.item(), rel=1e-5)
    assert result.history[0].content == 0


# -- the L-BFGS step bound and repairs ---------------------------------------------------------


def test_an_lbfgs_step_changes_no_pixel_by_more_than_the_bound(vgg19_random, tiny_images):
    frames = []
    params = _params(lbfgs_max_step=0.01, frame_every=1, iterations=5)
    result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params,
                     callback=lambda p: frames.append(p.frame) and False)
    steps = [(after - before).abs().max().item() for before, after in zip([tiny_images.gradient, *frames], frames)]
    assert max(steps) <= 0.01 + 1e-6 and max(steps) > 0.005  # bounded, and it did bind
    unbounded = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params.with_overrides({"lbfgs_max_step": 0}))
    assert (unbounded.image - tiny_images.gradient).abs().max() > 0.05
    assert result.history[-1].total < result.history[0].total


def test_a_blow_up_goes_back_to_the_best_image_with_a_smaller_step(vgg19_random, tiny_images):
    params = _params(optimizer="adam", lr=30.0, iterations=12)
    result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params)
    assert result.repairs, "lr 30 throws the image out of [0, 1]: the loss must blow up"
    first = result.repairs[0]
    assert first.cause.startswith("blow-up") and first.lr == pytest.approx(3.0) and first.optimizer == "adam"
    assert result.history[first.iteration - 1].total > 100 * result.history[first.restart_from - 1].total
    # the iteration after a repair evaluates the image it went back to
    assert result.history[first.iteration].total == pytest.approx(result.history[first.restart_from - 1].total, rel=1e-5)
    assert len(result.history) == 12 and result.history[-1].total < result.history[0].total


def test_a_loss_that_blows_up_after_every_repair_is_a_diverged_error(vgg19_random, tiny_images):
    with pytest.raises(DivergedError, match="after 3 repairs"):
        stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], _params(optimizer="adam", lr=1e30, iterations=20))


def test_a_frozen_lbfgs_is_a_stall_not_convergence(vgg19_random, tiny_images, monkeypatch):
    """L-BFGS that takes no step, as after a bad curvature pair (neural-style #89): repaired, and
    early stop, which would call the flat loss converged, never fires."""
    monkeypatch.setattr(torch.optim.LBFGS, "step", lambda self, closure: closure())
    params = _params(iterations=12, early_stop_tol=0.5, early_stop_window=2)
    result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params)
    causes = [(r.cause.split(":")[0], r.optimizer) for r in result.repairs]
    assert causes == [("stall", "lbfgs"), ("stall", "lbfgs"), ("stall", "adam")]
    assert [r.iteration for r in result.repairs] == [3, 6, 9]
    assert result.early_stops == [] or result.early_stops[0].iteration > 9  # Adam moves; only then may it stop
    assert (result.image - tiny_images.gradient).abs().mean() > 1e-3


def test_repairs_survive_an_interruption(vgg19_random, tiny_images):
    params = _params(optimizer="adam", lr=30.0, iterations=12)
    whole = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params)
    stopped = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params,
                      callback=lambda p: p.iteration == whole.repairs[0].iteration + 1)
    state = type(stopped.state).from_dict(stopped.state.to_dict())
    rest = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params, resume=state)
    assert rest.repairs == whole.repairs
    torch.testing.assert_close(rest.image, whole.image, rtol=0, atol=1e-5)


def test_a_checkpoint_state_from_before_repairs_existed_resumes():
    old = {"seed": 1, "scale": 0, "iteration": 2, "image": torch.zeros(1, 3, 4, 4), "optimizer": {}, "elapsed_s": 1.0,
           "scale_starts": [0], "history": [], "early_stops": []}
    from nst_batch.engine import RunState

    state = RunState.from_dict(old)
    assert state.repairs == [] and state.best_image is None


# -- results that are not pictures -------------------------------------------------------------


def test_a_flat_a_black_and_an_unchanged_result_are_named(tiny_images):
    content = tiny_images.gradient
    assert "black" in result_problem(torch.zeros_like(content), content, content, 100)
    assert "one colour" in result_problem(torch.full_like(content, 0.6), content, content, 100)
    assert "started from" in result_problem(content + 0.3 / 255, content, content, 100)
    assert result_problem(content, content, content, 5) is None  # a few iterations may change little
    assert result_problem(torch.full_like(content, 0.6), torch.full_like(content, 0.5), None, 100) is None  # flat in, flat out
    assert result_problem(content, content, None, 100) is None  # noise init: no start to compare with
    assert result_problem(content, content, content, 100, first_loss=0.0) is None  # it started at its optimum


def test_real_runs_with_random_weights_are_not_taken_for_broken_ones(vgg19_random, tiny_images):
    """The tests' weights and sizes: what the suite's daemon runs do."""
    for overrides in ({"iterations": 20}, {"iterations": 20, "optimizer": "adam"}, {"iterations": 1}):
        result = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], _params(**overrides))
        assert result_problem(result.image, tiny_images.gradient, tiny_images.gradient, len(result.history)) is None


# -- the quality options: a Wasserstein style loss and an average of the iterates ---------------


def test_the_wasserstein_style_loss_means_the_same_on_a_network_fifty_times_smaller(network64, tiny_images):
    content, style = tiny_images.gradient.double(), [tiny_images.noise.double()]
    params = _params(style_loss="wasserstein", optimizer="adam", iterations=4, style_layers=("relu1_1", "relu2_1"),
                     content_layers=("relu2_1",))
    plain = stylize(network64, content, style, params)
    smaller = stylize(_scaled_down(network64, 50.0), content, style, params)
    totals = [r.total for r in plain.history]
    assert totals[-1] < totals[0]
    torch.testing.assert_close(torch.tensor([r.total for r in smaller.history]), torch.tensor(totals), rtol=1e-7, atol=0)


def test_the_wasserstein_distance_of_a_style_to_itself_is_nought(vgg19_random, tiny_images):
    from nst_batch.engine.losses import Moments, WassersteinStyleLoss

    features = FeatureExtractor(vgg19_random, ["relu2_1"])(tiny_images.noise)["relu2_1"]
    loss = WassersteinStyleLoss.blended([Moments.of(features)], [1.0])
    assert abs(loss(features).item()) < 0.05 * loss(FeatureExtractor(vgg19_random, ["relu2_1"])(tiny_images.gradient)["relu2_1"]).item()


def test_with_ema_each_scale_ends_on_the_average_of_its_iterates(vgg19_random, tiny_images):
    params = _params(optimizer="adam", iterations=2, lr=0.05)
    iterates = []
    stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params,
            callback=lambda p: iterates.append(p.snapshot().image) and False)
    averaged = stylize(vgg19_random, tiny_images.gradient, [tiny_images.noise], params.with_overrides({"ema": 0.5}))
    decay = min(0.5, 3 / 12)  # the warm-up: (1 + steps) / (10 + steps) at the second step
    expected = iterates[0] + (1 - decay) * (iterates[1] - iterates[0])
    torch.testing.assert_close(averaged.image, expected.clamp(0, 1), rtol=0, atol=1e-6)


def test_weights_on_neural_styles_scale_get_a_hint_only_where_they_mean_something_else():
    assert "loss_normalization: none" in StyleParams(style_weight=1e6).weights_hint()
    assert StyleParams(style_weight=1e6, loss_normalization="none").weights_hint() is None
    assert StyleParams(style_weight=3000).weights_hint() is None and StyleParams().weights_hint() is None
