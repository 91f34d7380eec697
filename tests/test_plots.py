"""Pictures for people: the loss plot, compare.jpg, the sweep sheet and thumbnails."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nst_batch.engine.optimize import EarlyStop, LossRecord
from nst_batch.results import plots
from nst_batch.results.report import ResultReport

RED, GREEN, BLUE, YELLOW, MAGENTA = (230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 220, 10), (230, 20, 230)


def solid(colour, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def tensor(colour, size=(40, 30)) -> torch.Tensor:
    array = torch.tensor(np.asarray(solid(colour, size)), dtype=torch.float32) / 255
    return array.permute(2, 0, 1).unsqueeze(0)


def history(n=60, tv=0.0) -> list[LossRecord]:
    return [LossRecord(i, 5.0 / i, 50.0 / i**0.5, tv, 5.0 / i + 50.0 / i**0.5 + tv, 0.01 * i) for i in range(1, n + 1)]


def centroid(image: Image.Image, colour, tolerance=40) -> tuple[float, float]:
    """Mean (x, y) of the pixels near ``colour``; fails if there are none."""
    array = np.asarray(image.convert("RGB")).astype(int)
    near = (np.abs(array - np.array(colour)).max(axis=2) <= tolerance)
    ys, xs = np.nonzero(near)
    assert len(xs) > 20, f"no {colour} pixels"
    return xs.mean(), ys.mean()


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- the loss plot ------------------------------------------------------------------------------


def test_loss_plot_log_scale_curves_scale_lines_and_early_stop_marks():
    stops = [EarlyStop(iteration=45, scale=1, improvement=1e-4, window=10, tol=1e-3)]
    figure = plots.loss_figure(history(), scale_starts=[0, 30], early_stops=stops, title="cat")
    [axes] = figure.axes
    assert axes.get_yscale() == "log"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["total", "content", "style", "tv (0, not drawn)"]  # tv is 0 throughout: named, not drawn
    notes = [text.get_text() for text in axes.texts]
    assert "scale 2" in notes and "scale 1" not in notes  # only a change of scale is marked
    assert "early stop" in notes
    [marker] = [line for line in axes.lines if line.get_marker() == "v"]
    assert list(marker.get_xdata()) == [45]


def test_loss_plot_leaves_out_zeros_but_draws_the_rest_of_a_curve():
    records = history(20, tv=0.0)
    records[5:10] = [LossRecord(r.iteration, r.content, r.style, 0.01, r.total, r.elapsed_s) for r in records[5:10]]
    figure = plots.loss_figure(records, early_stops=[{"iteration": 20}, 7])
    tv = [line for line in figure.axes[0].lines if line.get_label() == "tv"]
    assert tv, "a curve with some positive values is drawn"
    y = np.asarray(tv[0].get_ydata(), dtype=float)
    assert np.isnan(y[:5]).all() and (y[5:10] == 0.01).all() and np.isnan(y[10:]).all()
    assert sum(1 for text in figure.axes[0].texts if text.get_text() == "early stop") == 2


def test_a_thread_draws_each_loss_plot_into_its_figure_afresh():
    """The figure is reused: nothing of one run's plot (marks, title, a curve) stays in the next."""
    first = plots.loss_figure(history(), scale_starts=[0, 30], early_stops=[EarlyStop(45, 1, 1e-4, 10, 1e-3)], title="cat")
    second = plots.loss_figure([LossRecord(1, 0.0, 0.0, 0.0, 0.0, 0.1)], title=None)
    assert second is first  # the same figure, drawn again
    [axes] = second.axes
    assert [text.get_text() for text in axes.texts] == ["no positive loss to draw"]
    assert axes.get_title() == "" and axes.get_yscale() == "linear"
    assert not [line for line in axes.lines if line.get_marker() == "v" or len(line.get_xdata()) > 0]
    again = plots.loss_figure(history(), title="dog")
    assert axes.get_yscale() == "log" and "no positive loss to draw" not in [t.get_text() for t in again.axes[0].texts]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["total", "content", "style", "tv (0, not drawn)"]


def test_write_loss_plot_writes_a_png_with_the_curves_and_no_temp_file(tmp_path):
    path = tmp_path / "losses.png"
    plots.write_loss_plot(path, history(), [0, 30], [EarlyStop(60, 1, 1e-4, 10, 1e-3)])
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 450)
        centroid(image, (214, 39, 40))  # the style curve's red
        centroid(image, (31, 119, 180))  # the content curve's blue
    assert no_temp_files(tmp_path)


def test_write_loss_plot_copes_with_no_iterations_and_all_zero_losses(tmp_path):
    plots.write_loss_plot(tmp_path / "empty.png", [])
    plots.write_loss_plot(tmp_path / "zeros.png", [LossRecord(1, 0.0, 0.0, 0.0, 0.0, 0.1)])
    assert Image.open(tmp_path / "empty.png").size == Image.open(tmp_path / "zeros.png").size == (800, 450)


def test_plots_never_import_pyplot(tmp_path):
    """pyplot's global state is not thread-safe, and runs write plots from worker threads.
    (Nor does drawing a plot need torch.)"""
    code = (
        "import sys, matplotlib; from pathlib import Path; from nst_batch.results import plots; "
        "record = dict(iteration=1, content=1.0, style=2.0, tv=0.0, total=3.0); "
        f"plots.write_loss_plot(Path({str(tmp_path / 'l.png')!r}), [record]); "
        "assert 'matplotlib.pyplot' not in sys.modules and 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "l.png").exists()


# --- compare --------------------------------------------------------------------------------


def test_compare_is_content_then_styles_then_result_at_one_height_and_captioned(tmp_path):
    path = tmp_path / "compare.jpg"
    plots.write_compare(path, tensor(RED, (60, 30)), [solid(GREEN, (20, 40)), tensor(YELLOW)], tensor(BLUE, (80, 40)), height=400)
    with Image.open(path) as image:
        assert image.format == "JPEG"
        # The height is capped at the result's 40 px; each panel keeps its aspect ratio at that height.
        xs = [centroid(image, c)[0] for c in (RED, GREEN, YELLOW, BLUE)]
        assert xs == sorted(xs)
        assert image.width >= 80 + 20 + 53 + 80 and image.height > 40  # panels + a caption bar
        caption = np.asarray(image.convert("L"))[44:, :]
        assert caption.min() < 128  # dark text in the caption bar
    assert no_temp_files(tmp_path)


def test_compare_needs_one_caption_per_picture(tmp_path):
    with pytest.raises(ValueError, match="3 captions for 4 pictures"):
        plots.write_compare(tmp_path / "c.jpg", solid(RED), [solid(GREEN), solid(BLUE)], solid(YELLOW), captions=["a", "b", "c"])


# --- sweep sheets -----------------------------------------------------------------------------


def test_two_varying_parameters_make_rows_and_columns(tmp_path):
    colours = {(1e4, 0.0): RED, (1e4, 1e-3): GREEN, (1e6, 0.0): BLUE, (1e6, 1e-3): YELLOW}
    results = [({"style_weight": sw, "tv_weight": tv, "iterations": 100}, solid(c)) for (sw, tv), c in colours.items()]
    path = tmp_path / "sweep.jpg"
    plots.write_sweep_sheet(path, results, cell=64)
    with Image.open(path) as image:
        red, green, blue, yellow = (centroid(image, c) for c in (RED, GREEN, BLUE, YELLOW))
    assert abs(red[1] - green[1]) < 2 and red[0] < green[0]  # a row per style_weight, tv_weight across
    assert abs(red[0] - blue[0]) < 2 and red[1] < blue[1]
    assert abs(yellow[0] - green[0]) < 2 and abs(yellow[1] - blue[1]) < 2


def test_a_missing_combination_stays_blank(tmp_path):
    results = [({"a": 1, "b": 1}, solid(RED)), ({"a": 1, "b": 2}, solid(GREEN)), ({"a": 2, "b": 1}, solid(BLUE))]
    plots.write_sweep_sheet(tmp_path / "s.jpg", results, cell=64)
    with Image.open(tmp_path / "s.jpg") as image:
        green, blue = centroid(image, GREEN), centroid(image, BLUE)
        corner = image.getpixel((int(green[0]), int(blue[1])))
    assert min(corner) > 240  # where (a=2, b=2) would be: background


def test_one_varying_parameter_makes_one_row(tmp_path):
    results = [({"style_weight": v}, tensor(c)) for v, c in ((1e4, RED), (1e5, GREEN), (1e6, BLUE))]
    plots.write_sweep_sheet(tmp_path / "s.jpg", results, cell=64)
    with Image.open(tmp_path / "s.jpg") as image:
        points = [centroid(image, c) for c in (RED, GREEN, BLUE)]
        assert image.width > 2 * image.height
    assert max(y for _, y in points) - min(y for _, y in points) < 2


def test_three_varying_parameters_make_a_captioned_grid(tmp_path):
    colours = [RED, GREEN, BLUE, YELLOW, MAGENTA]
    results = [({"a": i, "b": 2 * i, "c": str(i)}, solid(c)) for i, c in enumerate(colours)]
    plots.write_sweep_sheet(tmp_path / "s.jpg", results, cell=64)
    with Image.open(tmp_path / "s.jpg") as image:
        red, green, blue, yellow, magenta = (centroid(image, c) for c in colours)
    # 5 results: 3 columns, 2 rows
    assert abs(red[1] - green[1]) < 2 and abs(green[1] - blue[1]) < 2 and red[0] < green[0] < blue[0]
    assert abs(yellow[1] - magenta[1]) < 2 and yellow[1] > red[1] + 30 and abs(yellow[0] - red[0]) < 2


def test_varying_keys_and_values_as_written_on_sheets():
    values = [{"style_weight": 1e5, "tv_weight": 0.0, "x": [1, 2]}, {"style_weight": 1e6, "tv_weight": 0.0, "x": [1, 2]}]
    assert plots.varying_keys(values) == ["style_weight"]
    assert plots.varying_keys([{"a": 1}, {"a": 1, "b": 2}]) == ["b"]
    assert [plots.format_value(v) for v in (1e5, 0.001, 0.0, 3, "relu1_1", [1, 0.5])] == ["100000", "0.001", "0", "3", "relu1_1", "1+0.5"]


def test_sweep_entries_from_job_results(tmp_path):
    for label in ("a_sw=1", "a_sw=2", "b_sw=1", "b_sw=2"):
        solid(RED).save(tmp_path / f"{label}.png")
    results = [
        {"label": f"{c}_sw={sw}", "status": "done", "content": f"{c}.jpg", "styles": ["starry.jpg"], "varying": {"style_weight": sw}}
        for c in ("a", "b") for sw in (1, 2)
    ]
    reports = lambda dicts: [ResultReport(**r) for r in dicts]  # noqa: E731
    entries = plots.sweep_entries(tmp_path, reports(results))
    assert [values for values, _ in entries] == [
        {"content": "a", "style_weight": 1}, {"content": "a", "style_weight": 2},
        {"content": "b", "style_weight": 1}, {"content": "b", "style_weight": 2},
    ]
    assert [image.name for _, image in entries] == ["a_sw=1.png", "a_sw=2.png", "b_sw=1.png", "b_sw=2.png"]
    results[1]["status"] = "failed"
    assert len(plots.sweep_entries(tmp_path, reports(results))) == 3
    assert plots.sweep_entries(tmp_path, reports(results[:1])) == []  # one result: no sheet
    same = [{**r, "content": "a.jpg", "varying": {}} for r in results]
    assert plots.sweep_entries(tmp_path, reports(same)) == []  # nothing varies: no sheet


# --- thumbnails -------------------------------------------------------------------------------


def test_thumbnail_keeps_the_aspect_ratio_within_max_side(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 600), RED).save(big, quality=95)
    assert plots.write_thumbnail(big, tmp_path / "t.jpg", max_side=256) == (256, 128)
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.format == "JPEG" and thumb.size == (256, 128)
    assert plots.write_thumbnail(tensor(GREEN, (40, 30)), tmp_path / "small.jpg") == (40, 30)  # never enlarged
    assert no_temp_files(tmp_path)


def test_thumbnail_of_a_transparent_image_is_on_white(tmp_path):
    source = tmp_path / "alpha.png"
    Image.new("RGBA", (64, 64), (255, 0, 0, 0)).save(source)
    plots.write_thumbnail(source, tmp_path / "t.jpg", 32)
    assert min(Image.open(tmp_path / "t.jpg").getpixel((16, 16))) > 240
