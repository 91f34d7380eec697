"""The memory model (nst_batch.daemon.memory): shapes, needs, fitting, the too-big policies; and one
start-up probe on the CPU (nst_batch.daemon.measure).

Everything here is pure arithmetic except the shape checks against the real random-weight
networks and the probe test at the end.
"""

import random
import re

import pytest
import torch

from nst_batch.daemon import measure
from nst_batch.daemon.memory import (
    FLOAT_BYTES,
    GIB,
    MemoryModel,
    Need,
    RunFit,
    Sample,
    activation_elements,
    fit_model,
    fit_run,
    layer_shape,
    run_need,
)
from nst_batch.engine import FeatureExtractor, StyleParams, load_network
from nst_batch.engine.layers import LAYERS

MIB = 1 << 20
IMAGE = 3 * FLOAT_BYTES  # bytes of one image pixel (RGB, float32)
GRAM_BYTES = FLOAT_BYTES * (64**2 + 128**2 + 256**2 + 512**2 + 512**2)  # default VGG style targets


def need_of(size: int, **overrides) -> Need:
    """The need of a square run of ``size`` px with one style image."""
    return run_need(StyleParams(image_size=size, **overrides), (size, size), 1)


def model_bytes(need: Need, model: MemoryModel) -> float:
    """exact + per_activation x activations, the size-dependent part of a prediction."""
    return need.exact_bytes + model.per_activation * need.activation_bytes


# --- shapes: the table of layer sizes against the real networks ----------------------------------


@pytest.fixture(scope="module")
def resnet18_random():
    network, _ = load_network("resnet18", "random")
    return network


def _real_outputs(network, layers, height: int, width: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, (channels, height, width)) of every layer the extractor runs, as it really runs them."""
    extractor = FeatureExtractor(network, layers)
    outputs = []
    with torch.no_grad():
        x = extractor.normalize(torch.rand(1, 3, height, width))
        for name, layer in zip(extractor.names, extractor.body):
            x = layer(x)
            outputs.append((name, tuple(x.shape[1:])))
    return outputs


@pytest.mark.parametrize(("height", "width"), [(64, 64), (48, 80)])
def test_vgg19_activation_elements_count_every_real_layer_output(vgg19_random, height, width):
    style_layers = StyleParams().style_layer_names
    outputs = _real_outputs(vgg19_random, style_layers, height, width)
    assert outputs[-1][0] == "relu5_1"
    real = sum(c * h * w for _, (c, h, w) in outputs)
    assert activation_elements("vgg19", "relu5_1", height, width) == real
    for name, shape in outputs:  # and layer by layer, so a wrong entry cannot hide behind a right sum
        assert layer_shape("vgg19", name, height, width) == shape, name


def test_vgg19_odd_sizes_are_floored_by_every_pool_as_in_the_network(vgg19_random):
    outputs = _real_outputs(vgg19_random, ("relu5_1",), 50, 70)
    assert all(layer_shape("vgg19", name, 50, 70) == shape for name, shape in outputs)


def test_resnet18_layer_shapes_match_the_real_stages_at_64px(resnet18_random):
    outputs = _real_outputs(resnet18_random, ("layer4",), 64, 64)
    assert [name for name, _ in outputs] == list(LAYERS["resnet18"])
    for name, shape in outputs:
        assert layer_shape("resnet18", name, 64, 64) == shape, name


@pytest.mark.parametrize("backbone", ["vgg19", "vgg16", "resnet18"])
def test_activation_elements_grow_with_depth_and_with_size(backbone):
    names = LAYERS[backbone]
    by_depth = [activation_elements(backbone, name, 256, 256) for name in names]
    assert all(a < b for a, b in zip(by_depth, by_depth[1:]))
    by_size = [activation_elements(backbone, names[-1], s, s) for s in (64, 96, 128, 256, 512)]
    assert all(a < b for a, b in zip(by_size, by_size[1:]))


# --- run_need: what grows with what ------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 256, 512, 1024])
def test_need_is_linear_in_the_pixels_apart_from_the_style_targets(size):
    """Doubling the side (4x the pixels) gives exactly 4x the activations, and 4x the exact part
    but for the Gram targets, which depend only on the channels."""
    small, large = need_of(size, optimizer="adam"), need_of(2 * size, optimizer="adam")
    assert large.activation_bytes == 4 * small.activation_bytes
    assert large.exact_bytes - GRAM_BYTES == 4 * (small.exact_bytes - GRAM_BYTES)
    assert (large.height, large.width) == (2 * size, 2 * size)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_predicted_peak_at_512px_is_close_to_4x_the_256px_one(optimizer):
    """The size-dependent part of a prediction (exact + activations) is close to linear."""
    model = MemoryModel()
    small, large = need_of(256, optimizer=optimizer), need_of(512, optimizer=optimizer)
    assert model_bytes(large, model) / model_bytes(small, model) == pytest.approx(4, rel=0.05)
    assert model.peak(large) > model.peak(small)


def test_need_grows_with_the_pixels_for_every_size_and_aspect():
    previous = None
    for size in range(64, 1100, 37):
        need = run_need(StyleParams(image_size=size), (1600, 900), 1)
        assert (need.width, need.height) == (size, round(900 * size / 1600))
        if previous:
            assert need.activation_bytes >= previous.activation_bytes
            assert need.exact_bytes > previous.exact_bytes
        previous = need


def test_lbfgs_exact_part_is_2_history_plus_4_image_sizes_more_than_adams_2():
    """Image and gradient (2 image sizes) for both; Adam adds its two moments (2), L-BFGS its
    history of (step, gradient change) pairs and 4 working vectors: 2 x history + 4."""
    pixels = IMAGE * 512 * 512
    adam = need_of(512, optimizer="adam")
    for history in (1, 5, 100, 300):
        lbfgs = need_of(512, optimizer="lbfgs", lbfgs_history=history)
        assert lbfgs.exact_bytes - adam.exact_bytes == (2 * history + 4 - 2) * pixels
        assert lbfgs.activation_bytes == adam.activation_bytes
    one_more = need_of(512, lbfgs_history=11).exact_bytes - need_of(512, lbfgs_history=10).exact_bytes
    assert one_more == 2 * pixels
    # a scale of N iterations never holds more than N pairs, whatever the history size allows
    assert need_of(512, lbfgs_history=1000, iterations=300) == need_of(512, lbfgs_history=300, iterations=300)


def test_exact_part_adds_up_from_its_documented_terms():
    """adam at 256 px, one style image: image + gradient + the step before + the best image so far
    + 2 moments, the relu4_2 content target (512 channels at 1/8 size), five Gram matrices and the
    resized style image; with ema, the average too."""
    need = need_of(256, optimizer="adam")
    image = IMAGE * 256 * 256
    content_target = FLOAT_BYTES * 512 * 32 * 32
    style_image = image
    assert need.exact_bytes == 6 * image + content_target + GRAM_BYTES + style_image
    assert need_of(256, optimizer="adam", ema=0.9).exact_bytes == need.exact_bytes + image


def test_more_style_images_and_a_larger_style_scale_cost_only_their_images():
    one, three = need_of(256), run_need(StyleParams(image_size=256), (256, 256), 3)
    assert three.exact_bytes - one.exact_bytes == 2 * IMAGE * 256 * 256
    assert three.activation_bytes == one.activation_bytes
    double = need_of(256, style_scale=2.0)
    assert double.exact_bytes - one.exact_bytes == 3 * IMAGE * 256 * 256


def test_deeper_layers_cost_activations_and_shallower_ones_save_them():
    default = need_of(512)
    shallow = need_of(512, content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    assert shallow.activation_bytes == FLOAT_BYTES * activation_elements("vgg19", "relu2_1", 512, 512)
    assert shallow.activation_bytes < 0.6 * default.activation_bytes  # most activations are near full size
    deeper = need_of(512, content_layers=("relu5_4",))
    assert deeper.activation_bytes == FLOAT_BYTES * activation_elements("vgg19", "relu5_4", 512, 512)
    assert deeper.activation_bytes > default.activation_bytes


def test_a_multi_scale_run_needs_what_its_largest_scale_needs():
    for optimizer in ("adam", "lbfgs"):
        assert need_of(1024, scales=3, optimizer=optimizer) == need_of(1024, scales=1, optimizer=optimizer)


def test_resnet18_need_uses_its_stage_table():
    need = run_need(StyleParams(backbone="resnet18", image_size=256, optimizer="adam"), (256, 256), 1)
    assert need.activation_bytes == FLOAT_BYTES * activation_elements("resnet18", "layer3", 256, 256)


# --- fit: coefficients from measured samples ---------------------------------------------------


def sample(size: int, constant: float, per_activation: float, seconds=(0.0, 0.0), noise: float = 0.0) -> Sample:
    need = need_of(size, optimizer="adam")
    peak = constant + need.exact_bytes + per_activation * need.activation_bytes + noise
    return Sample(need, int(peak), seconds[0] + seconds[1] * need.activation_bytes)


def raw(model: MemoryModel) -> MemoryModel:
    return MemoryModel(model.constant_bytes, model.per_activation, 0.0, model.seconds_constant,
                       model.seconds_per_activation_byte)


def test_two_samples_on_a_line_give_back_its_constant_and_slope():
    model = fit_model([sample(256, 300 * MIB, 1.7), sample(512, 300 * MIB, 1.7)])
    assert model.constant_bytes == pytest.approx(300 * MIB, abs=4)
    assert model.per_activation == pytest.approx(1.7, rel=1e-6)
    assert model.margin == MemoryModel().margin
    big = need_of(2048, optimizer="adam")
    assert raw(model).peak(big) == pytest.approx(300 * MIB + big.exact_bytes + 1.7 * big.activation_bytes, rel=1e-6)
    assert model.peak(big) == pytest.approx(1.1 * raw(model).peak(big), rel=1e-6)


def test_the_time_model_is_fitted_on_the_same_line():
    model = fit_model([sample(256, 0, 1, seconds=(0.05, 3e-9)), sample(512, 0, 1, seconds=(0.05, 3e-9))])
    assert model.seconds_constant == pytest.approx(0.05, rel=1e-6)
    assert model.seconds_per_activation_byte == pytest.approx(3e-9, rel=1e-6)
    need = need_of(1024, optimizer="adam")
    assert model.seconds_per_iteration(need) == pytest.approx(0.05 + 3e-9 * need.activation_bytes, rel=1e-6)


def test_untimed_samples_leave_the_time_model_to_the_prior():
    prior = MemoryModel(seconds_constant=0.2, seconds_per_activation_byte=1e-9)
    model = fit_model([sample(256, MIB, 1.0), sample(512, MIB, 1.0)], prior)
    assert (model.seconds_constant, model.seconds_per_activation_byte) == (0.2, 1e-9)


def test_no_samples_keep_the_prior():
    prior = MemoryModel(constant_bytes=123 * MIB, per_activation=3.0)
    assert fit_model([], prior) == prior


def test_one_sample_keeps_the_prior_constant_and_explains_itself_with_the_slope():
    prior = MemoryModel(constant_bytes=100 * MIB, per_activation=9.0)
    one = sample(512, 40 * MIB, 1.5)
    model = fit_model([one], prior)
    assert model.constant_bytes == pytest.approx(prior.constant_bytes, abs=1)
    assert raw(model).peak(one.need) == pytest.approx(one.peak_bytes, abs=2)
    # a sample below the prior constant cannot give a negative slope: it is simply covered
    tiny = Sample(one.need, one.need.exact_bytes + 10 * MIB, 0.1)
    model = fit_model([tiny], prior)
    assert (model.constant_bytes, model.per_activation) == (100 * MIB, 0.0)


def test_repeated_samples_of_one_size_count_as_one_size():
    prior = MemoryModel(constant_bytes=64 * MIB)
    model = fit_model([sample(256, 80 * MIB, 1.2), sample(256, 80 * MIB, 1.2, noise=8 * MIB)], prior)
    assert model.constant_bytes >= prior.constant_bytes
    assert raw(model).peak(need_of(256, optimizer="adam")) >= sample(256, 80 * MIB, 1.2, noise=8 * MIB).peak_bytes


def test_fit_never_predicts_below_a_sample():
    """Random devices, random sizes, noisy peaks (and a first run that paid a one-off cost):
    the fitted line, without its margin, is at or above every sample it was fitted on."""
    rng = random.Random(20261120)
    for _ in range(300):
        constant, slope = rng.uniform(0, 2 * GIB), rng.uniform(0.3, 4.0)
        sizes = rng.sample(range(64, 4097, 16), rng.randint(1, 8))
        samples = [sample(s, constant, slope, noise=rng.gauss(0, 0.1) * constant) for s in sizes]
        samples[0] = Sample(samples[0].need, samples[0].peak_bytes + rng.randint(0, 200 * MIB), 0.0)
        model = raw(fit_model(samples, MemoryModel(constant_bytes=rng.uniform(0, GIB), per_activation=rng.uniform(0, 4))))
        assert model.per_activation >= 0 and model.constant_bytes >= 0
        for s in samples:
            assert model.peak(s.need) >= s.peak_bytes, (s, model)


def test_a_decreasing_set_of_samples_gives_a_flat_line_above_them():
    first = sample(128, 500 * MIB, 1.0)  # a cold first run, larger than the next
    second = sample(256, 100 * MIB, 1.0)
    model = raw(fit_model([first, second]))
    assert model.per_activation == 0.0
    assert model.peak(first.need) >= first.peak_bytes and model.peak(second.need) >= second.peak_bytes


# --- fit_run: the too-big policies ------------------------------------------------------------

MODEL = MemoryModel(constant_bytes=200 * MIB, per_activation=1.5, margin=0.1)
BIG = StyleParams(image_size=2048)  # L-BFGS, history 100
CONTENT = (2048, 2048)


def peak(params: StyleParams, content=CONTENT) -> int:
    return MODEL.peak(run_need(params, content, 1))


def gib_in(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+\.\d\d) GiB", text)]


def test_a_run_that_fits_is_left_alone():
    assert fit_run(BIG, CONTENT, 1, MODEL, peak(BIG), "fail") == RunFit(BIG)
    assert fit_run(BIG, CONTENT, 1, MODEL, peak(BIG) + GIB, "downscale") == RunFit(BIG)


def test_lbfgs_history_policy_keeps_the_longest_history_that_fits():
    budget = peak(BIG.with_overrides({"lbfgs_history": 40})) + 1000
    result = fit_run(BIG, CONTENT, 1, MODEL, budget, "lbfgs_history")
    assert result.refusal is None and result.params.lbfgs_history == 40
    assert result.params.with_overrides({"lbfgs_history": 100}) == BIG  # nothing else changed
    assert peak(result.params) <= budget < peak(result.params.with_overrides({"lbfgs_history": 41}))
    assert "lbfgs_history: 100 -> 40" in result.warning
    assert gib_in(result.warning) == [round(peak(BIG) / GIB, 2), round(budget / GIB, 2)]


def test_adam_policy_switches_the_optimizer():
    budget = peak(BIG.with_overrides({"optimizer": "adam"})) + 1000
    assert budget < peak(BIG.with_overrides({"lbfgs_history": 1}))  # so only adam could do it
    result = fit_run(BIG, CONTENT, 1, MODEL, budget, "adam")
    assert result.params.optimizer == "adam" and peak(result.params) <= budget
    assert result.params.with_overrides({"optimizer": "lbfgs"}) == BIG
    assert "optimizer: lbfgs -> adam" in result.warning


@pytest.mark.parametrize("content", [(2048, 2048), (3000, 1700), (900, 1600)])
def test_downscale_picks_the_largest_size_that_fits(content):
    budget = 3 * GIB
    assert peak(BIG, content) > budget
    result = fit_run(BIG, content, 1, MODEL, budget, "downscale")
    size = result.params.image_size
    assert 64 <= size < 2048
    assert peak(result.params, content) <= budget < peak(BIG.with_overrides({"image_size": size + 1}), content)
    assert result.params.with_overrides({"image_size": 2048}) == BIG
    assert f"image_size: 2048 -> {size}" in result.warning


def test_a_policy_that_cannot_help_refuses_with_the_options_that_would():
    """Adam is already the optimizer: the adam policy cannot help, the refusal says what would."""
    adam = BIG.with_overrides({"optimizer": "adam"})
    result = fit_run(adam, CONTENT, 1, MODEL, 2 * GIB, "adam")
    assert result.params is None and "image_size:" in result.refusal


def test_fail_refuses_naming_need_budget_and_every_option_that_would_fit():
    budget = peak(BIG.with_overrides({"lbfgs_history": 40})) + 1000  # adam, a shorter history or a smaller size
    result = fit_run(BIG, CONTENT, 1, MODEL, budget, "fail")
    assert result.params is None and result.warning is None
    assert f"needs {peak(BIG) / GIB:.2f} GiB" in result.refusal
    assert f"the memory budget is {budget / GIB:.2f} GiB" in result.refusal
    assert "optimizer: adam" in result.refusal
    history = fit_run(BIG, CONTENT, 1, MODEL, budget, "lbfgs_history").params.lbfgs_history
    size = fit_run(BIG, CONTENT, 1, MODEL, budget, "downscale").params.image_size
    assert f"lbfgs_history: {history}" in result.refusal and f"image_size: {size}" in result.refusal
    assert "scheduler.memory_budget" in result.refusal


def test_a_budget_too_small_for_anything_says_so():
    for policy in ("lbfgs_history", "adam", "downscale", "fail"):
        result = fit_run(BIG, CONTENT, 1, MODEL, 100 * MIB, policy)
        assert result.params is None
        assert "cannot fit on this device even at 64 px" in result.refusal
        assert "0.10 GiB" in result.refusal


# --- calibration on the CPU: the start-up probe, for real (about 3 s) -----------------------------


def test_probe_measures_two_sizes_and_the_larger_needs_more(vgg19_random, one_torch_thread):
    """The real probe at the CPU's two sizes (64 and 128 px, 5 iterations each, after its own
    warm-up run: the first run of a process pays one-off set-up that would land in the 64 px sample)."""
    samples = measure.probe(vgg19_random, torch.device("cpu"), StyleParams())
    assert [(s.need.height, s.need.width) for s in samples] == [(64, 64), (128, 128)]
    assert all(s.peak_bytes > 0 and s.seconds_per_iteration > 0 for s in samples)
    small, large = samples
    assert large.need.activation_bytes == 4 * small.need.activation_bytes
    assert large.peak_bytes > small.peak_bytes
    assert large.seconds_per_iteration > small.seconds_per_iteration
    model = fit_model(samples)
    assert raw(model).peak(large.need) >= large.peak_bytes


# --- tiles -----------------------------------------------------------------------------------


def test_a_tiled_run_holds_one_crops_activations_and_computes_every_crops():
    from nst_batch.daemon.memory import FORWARD_SHARE
    from nst_batch.engine.tiling import Tiling

    whole, tiled = need_of(2048), need_of(2048, tile=512)
    tiling = Tiling.for_layers("vgg19", ("relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), 512)
    crop = tiling.largest_crop(2048, 2048)
    assert crop == (512 + 2 * tiling.halo, 512 + 2 * tiling.halo)
    assert tiled.activation_bytes == FLOAT_BYTES * activation_elements("vgg19", "relu5_1", *crop)
    assert tiled.activation_bytes < whole.activation_bytes / 8
    crops = [(r.crop_stop - r.crop_start, c.crop_stop - c.crop_start) for r in tiling.spans(2048) for c in tiling.spans(2048)]
    work = sum(activation_elements("vgg19", "relu5_1", h, w) for h, w in crops)
    assert tiled.work == int(FLOAT_BYTES * work * (1 + FORWARD_SHARE)) and tiled.work > whole.work  # the halos overlap
    assert tiled.exact_bytes == whole.exact_bytes + 2 * IMAGE * 2048 * 2048  # a step's passing copies, counted
    assert need_of(256, tile=512) == need_of(256)  # one tile: not tiled at all


def test_the_tile_policy_picks_the_largest_tile_that_fits():
    adam = BIG.with_overrides({"optimizer": "adam"})
    budget = peak(adam.with_overrides({"tile": 512}))
    assert budget < peak(adam)
    result = fit_run(adam, CONTENT, 1, MODEL, budget, "tile")
    tile = result.params.tile
    assert tile is not None and peak(result.params) <= budget
    assert result.params.with_overrides({"tile": None}) == adam.with_overrides({"tile": None})
    larger = [t for t in range(tile + 16, 2048, 16) if peak(adam.with_overrides({"tile": t})) <= budget]
    assert larger == [] or max(larger) - tile < 2 * 80  # candidates are the tiles that split the side evenly
    assert f"tile: None -> {tile}" in result.warning


def test_auto_tiles_first_then_shortens_the_history_of_a_tiled_run_then_downscales():
    tiled = fit_run(BIG, CONTENT, 1, MODEL, peak(BIG.with_overrides({"tile": 1024})), "auto")
    assert tiled.params.tile == 1024 and tiled.params.lbfgs_history == 100
    # a history of 100 images does not fit even with the smallest tile: auto keeps tiles and shortens it
    budget = peak(BIG.with_overrides({"tile": 1024, "lbfgs_history": 30}))
    assert fit_run(BIG, CONTENT, 1, MODEL, budget, "tile").refusal is not None
    shorter = fit_run(BIG, CONTENT, 1, MODEL, budget, "auto").params
    assert shorter.tile is not None and 30 <= shorter.lbfgs_history < 100 and peak(shorter) <= budget
    # not even Adam's image-sized tensors and the smallest tile fit: only a smaller image does, still tiled
    budget = peak(BIG.with_overrides({"optimizer": "adam", "tile": 160})) - 1
    small = fit_run(BIG, CONTENT, 1, MODEL, budget, "auto").params
    assert small.image_size < 2048 and small.optimizer == "lbfgs" and peak(small) <= budget
    assert small.tile is not None and small.image_size > fit_run(BIG, CONTENT, 1, MODEL, budget, "downscale").params.image_size


def test_auto_prefers_adam_to_an_lbfgs_history_too_short_to_be_lbfgs():
    budget = peak(BIG.with_overrides({"tile": 160, "lbfgs_history": 5}))  # 160: the smallest tile auto tries
    assert fit_run(BIG.with_overrides({"tile": 160}), CONTENT, 1, MODEL, budget, "lbfgs_history").params.lbfgs_history < 10
    chosen = fit_run(BIG, CONTENT, 1, MODEL, budget, "auto").params
    assert chosen.optimizer == "adam" and chosen.tile is not None and peak(chosen) <= budget


def test_samples_of_tiled_runs_keep_their_work_and_old_databases_gain_the_column(tmp_path):
    import sqlite3

    from nst_batch.daemon.store import Store

    old = sqlite3.connect(tmp_path / "jobs.sqlite3")
    old.execute("CREATE TABLE memory_samples (id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, "
                "backbone TEXT NOT NULL, exact_bytes INTEGER NOT NULL, activation_bytes INTEGER NOT NULL, "
                "height INTEGER NOT NULL, width INTEGER NOT NULL, peak_bytes INTEGER NOT NULL, "
                "seconds_per_iteration REAL NOT NULL, source TEXT NOT NULL, created REAL NOT NULL)")
    old.execute("INSERT INTO memory_samples VALUES (1, 'cpu', 'vgg19', 10, 20, 64, 64, 100, 0.5, 'probe', 0)")
    old.commit()
    old.close()
    store = Store(tmp_path)
    tiled = need_of(2048, tile=512)
    store.add_sample("cpu", "vgg19", Sample(tiled, 3 * GIB, 60.0), "run")
    newest, oldest = store.samples("cpu", "vgg19")
    assert newest.need == tiled and newest.need.work > newest.need.activation_bytes
    assert oldest.need.work == oldest.need.activation_bytes == 20
    store.close()
