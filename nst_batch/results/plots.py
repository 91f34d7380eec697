"""Pictures about results, for people to look at: the loss plot, the content | style | result
comparison, the sweep sheet and thumbnails. Images in (tensors, PIL images or files), one file
out, written atomically.

The loss plot uses matplotlib's object API with the Agg canvas, never ``pyplot``: pyplot keeps
global state that is not thread-safe, and runs write their files from worker threads. Nothing
here changes matplotlib's global backend. Captions use Pillow's bundled default font, so no font
is looked up on the system or fetched.
"""

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..util.atomicio import atomic_path
from ..util.text import distinct, format_value
from .report import ResultReport

JPEG_QUALITY = 90
THUMB_QUALITY = 82
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
CURVES = (("total", "#111111"), ("content", "#1f77b4"), ("style", "#d62728"), ("tv", "#2ca02c"))

# What can be drawn: a (1, 3, H, W) or (3, H, W) tensor in [0, 1], a PIL image or an image file.
Picture = Any


# --- the loss plot ----------------------------------------------------------------------------


def write_loss_plot(
    path: Path,
    history: Sequence[Any],
    scale_starts: Sequence[int] = (),
    early_stops: Sequence[Any] = (),
    title: str | None = None,
) -> None:
    """Content, style, TV and total loss per iteration on a log scale, as a PNG.

    ``history``: LossRecords (or mappings with the same keys). ``scale_starts``: the first
    iteration of each scale; a line marks every one after the first ("scale 2", ...).
    ``early_stops``: EarlyStops, mappings with an ``iteration`` or plain iteration numbers; each
    is marked on the total curve. A log axis cannot show zero or negative values: such points
    are left out, and a curve with none left (tv with ``tv_weight: 0``) is named in the legend
    as "(0, not drawn)".
    """
    figure = loss_figure(history, scale_starts, early_stops, title)
    with atomic_path(path) as temp:
        # Fast zlib: a loss plot is mostly flat colour, and the default level costs 4x the time.
        figure.savefig(temp, format="png", pil_kwargs={"compress_level": 1})


def loss_figure(
    history: Sequence[Any], scale_starts: Sequence[int] = (), early_stops: Sequence[Any] = (), title: str | None = None
):
    """The matplotlib Figure that ``write_loss_plot`` saves, on its own Agg canvas. Each thread
    draws into one figure of its own, made once: making the figure, its axes and its legend cost
    more than drawing the curves."""
    plot = getattr(_loss_plots, "plot", None)
    if plot is None:
        plot = _loss_plots.plot = _LossPlot()
    return plot.draw([_record(r) for r in history], scale_starts, early_stops, title)


class _LossPlot:
    """One reusable loss figure: the axes, four curves and the legend stay; what depends on the
    run (marks of scales and early stops, the title, the scale of the y axis) is redrawn."""

    def __init__(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullLocator

        # A fixed layout: a constrained-layout solve took most of the 0.1 s this plot once cost.
        self.figure = Figure(figsize=(8, 4.5), dpi=100)
        self.figure.subplots_adjust(left=0.12, right=0.98, bottom=0.11, top=0.92)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.add_subplot()
        self.curves = {
            name: self.axes.plot([], [], color=colour, linewidth=2.0 if name == "total" else 1.2, label=name)[0]
            for name, colour in CURVES
        }
        self.axes.set_xlabel("iteration")
        self.axes.grid(True, which="major", alpha=0.3)
        self.legend = self.axes.legend(loc="upper right", fontsize=9)
        self._null_locator, self._plain = NullLocator, FuncFormatter(lambda value, _: f"{value:g}")
        self.marks: list[Any] = []  # this run's: removed before the next one is drawn

    def draw(self, rows: list[dict[str, float]], scale_starts: Sequence[int], early_stops: Sequence[Any], title: str | None):
        axes = self.axes
        for mark in self.marks:
            mark.remove()
        self.marks = []
        iterations = [r["iteration"] for r in rows]
        drawn = False
        for (name, _), label in zip(CURVES, self.legend.get_texts(), strict=True):
            positive = [v if v > 0 and math.isfinite(v) else math.nan for v in (r[name] for r in rows)]
            empty = all(math.isnan(v) for v in positive)
            self.curves[name].set_data([] if empty else iterations, [] if empty else positive)
            self.curves[name].set_label(f"{name} (0, not drawn)" if empty and rows else name)
            label.set_text(self.curves[name].get_label())
            drawn |= not empty
        axes.set_yscale("log" if drawn else "linear")
        if drawn:
            axes.yaxis.set_minor_locator(self._null_locator())  # dozens of unlabelled ticks cost a third of the drawing
            axes.yaxis.set_major_formatter(self._plain)  # 1e+06, not $10^{6}$: no mathtext to typeset
        else:
            self.marks.append(axes.text(0.5, 0.5, "no positive loss to draw" if rows else "no iterations",
                                        ha="center", va="center", transform=axes.transAxes))
        axes.relim()
        axes.autoscale_view()
        for number, start in enumerate(scale_starts, start=1):
            if start > 0:
                self.marks.append(axes.axvline(start, color="#888888", linestyle="--", linewidth=1))
                self.marks.append(axes.annotate(f"scale {number}", xy=(start, 1), xycoords=("data", "axes fraction"),
                                                xytext=(3, -12), textcoords="offset points", fontsize=9, color="#555555"))
        by_iteration = {r["iteration"]: r["total"] for r in rows}
        for stop in early_stops:
            at = _stop_iteration(stop)
            total = by_iteration.get(at)
            if at is None or total is None or not (total > 0 and math.isfinite(total)):
                if at is not None:
                    self.marks.append(axes.axvline(at, color="#ff7f0e", linestyle=":", linewidth=1.5))
                continue
            self.marks += axes.plot([at], [total], marker="v", markersize=9, color="#ff7f0e", linestyle="none")
            self.marks.append(axes.annotate("early stop", xy=(at, total), xytext=(-8, 12), textcoords="offset points",
                                            ha="right", fontsize=9, color="#ff7f0e"))
        axes.set_ylabel("loss (weighted)" + (", log scale" if drawn else ""))
        axes.set_title(title or "", fontsize=11, y=1.0)  # a fixed place: no search for one above the ticks
        return self.figure


_loss_plots = threading.local()


def _record(record: Any) -> dict[str, float]:
    get = record.get if isinstance(record, Mapping) else lambda key: getattr(record, key)
    return {"iteration": int(get("iteration")), **{name: float(get(name)) for name, _ in CURVES}}


def _stop_iteration(stop: Any) -> int | None:
    if isinstance(stop, int):
        return stop
    if isinstance(stop, Mapping):
        return stop.get("iteration")
    return getattr(stop, "iteration", None)


# --- compare and sweep sheets -------------------------------------------------------------------


def write_compare(
    path: Path,
    content: Picture,
    styles: Sequence[Picture],
    result: Picture,
    captions: Sequence[str] | None = None,
    height: int = 384,
) -> None:
    """One row, content | style(s) | result at a common height, each captioned, as a JPEG.

    ``captions``: one per picture (content, each style, result); default "content", "style"
    (or "style 1", "style 2", ...) and "result". ``height`` is capped at the result's height.
    """
    pictures = [to_pil(content), *(to_pil(s) for s in styles), to_pil(result)]
    if captions is None:
        names = ["style"] if len(styles) == 1 else [f"style {i}" for i in range(1, len(styles) + 1)]
        captions = ["content", *names, "result"]
    if len(captions) != len(pictures):
        raise ValueError(f"{len(captions)} captions for {len(pictures)} pictures")
    height = max(16, min(height, pictures[-1].height))
    panels = [_captioned(_to_height(p, height), text) for p, text in zip(pictures, captions)]
    _save_jpeg(path, _row(panels, gap=8))


def write_sweep_sheet(path: Path, results: Sequence[tuple[Mapping[str, Any], Picture]], cell: int = 256) -> None:
    """A grid of results labelled with what varies between them, as a JPEG.

    ``results``: (the values of this result, its image). Keys whose value is the same in every
    result are left out of the labels. Two keys vary: a row per value of the first, a column per
    value of the second, with row and column headers (a missing combination stays blank). One
    key varies: one row (wrapped after 8), each cell captioned with its value. Otherwise: a
    near-square grid, each cell captioned with all its values.
    """
    if not results:
        raise ValueError("a sweep sheet needs at least one result")
    keys = varying_keys([values for values, _ in results])
    pictures = [_small(picture, 2 * cell) for _, picture in results]  # a big sweep's images stay small in memory
    aspect = sorted(p.height / p.width for p in pictures)[len(pictures) // 2]  # the usual shape, for all cells
    aspect = min(2.0, max(0.5, aspect))
    if len(keys) == 2:
        rows, cols = (distinct([values.get(k) for values, _ in results]) for k in keys)
        width = _cell_size(cell, len(cols))
        box = (width, round(width * aspect))
        font = _font(max(12, width // 16))
        grid: dict[tuple[int, int], Image.Image] = {}
        for (values, _), picture in zip(results, pictures):
            grid[rows.index(values.get(keys[0])), cols.index(values.get(keys[1]))] = _fit(picture, box)
        row_labels = [f"{keys[0]}={format_value(v)}" for v in rows]
        col_labels = [f"{keys[1]}={format_value(v)}" for v in cols]
        sheet = _headed_grid(grid, len(rows), len(cols), box, row_labels, col_labels, font)
    else:
        columns = min(len(results), 8) if len(keys) <= 1 else math.ceil(math.sqrt(len(results)))
        width = _cell_size(cell, columns)
        box = (width, round(width * aspect))

        def caption(values: Mapping[str, Any]) -> str:
            return "\n".join(f"{k}={format_value(values.get(k))}" for k in keys)

        panels = [_captioned(_fit(p, box), caption(v)) for (v, _), p in zip(results, pictures)]
        sheet = _plain_grid(panels, columns, gap=6)
    _save_jpeg(path, sheet)


def varying_keys(all_values: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys, in first-seen order, whose value is not the same in every mapping."""
    keys = distinct([k for values in all_values for k in values])
    return [k for k in keys if len(distinct([repr(v.get(k)) for v in all_values])) > 1]


# --- thumbnails ---------------------------------------------------------------------------------


def write_thumbnail(src: Picture, dst: Path, max_side: int = 256) -> tuple[int, int]:
    """A JPEG no larger than ``max_side`` on its long side; returns its (width, height).

    A JPEG source is decoded at reduced size (``draft``), so a thumbnail of a big result costs
    a fraction of a full decode.
    """
    picture = _small(src, max_side)
    _save_jpeg(dst, picture, quality=THUMB_QUALITY)
    return picture.size


def _small(picture: Picture, max_side: int) -> Image.Image:
    """An RGB image no larger than ``max_side``; a JPEG file is decoded at reduced size."""
    if isinstance(picture, (str, Path)):
        with Image.open(picture) as image:
            image.draft("RGB", (max_side, max_side))
            small = _rgb(ImageOps.exif_transpose(image))
    else:
        small = to_pil(picture)
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return small


# --- pictures -----------------------------------------------------------------------------------


def to_pil(picture: Picture) -> Image.Image:
    """An RGB PIL image of a tensor in [0, 1] ((1, 3, H, W) or (3, H, W)), a PIL image or a file."""
    if isinstance(picture, Image.Image):
        return _rgb(picture)
    if isinstance(picture, (str, Path)):
        with Image.open(picture) as image:
            return _rgb(ImageOps.exif_transpose(image))
    tensor = picture.detach().cpu()
    if tensor.dim() == 4:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1, 3, H, W) image tensor, got shape {tuple(picture.shape)}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    array = (tensor.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(array, "RGB")


def _rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def _save_jpeg(path: Path, image: Image.Image, quality: int = JPEG_QUALITY) -> None:
    with atomic_path(path) as temp:  # the temporary name ends in .tmp: the format is given
        image.save(temp, format="JPEG", quality=quality, optimize=True)


def _to_height(image: Image.Image, height: int) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def _fit(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """Scaled (up or down) to fit a box of (width, height), centred on the background."""
    scale = min(box[0] / image.width, box[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(size, Image.Resampling.LANCZOS)
    cell = Image.new("RGB", box, BACKGROUND)
    cell.paste(scaled, ((box[0] - size[0]) // 2, (box[1] - size[1]) // 2))
    return cell


def _cell_size(cell: int, columns: int, max_width: int = 4096) -> int:
    """Cells shrink when there are many columns, so a sheet stays under ``max_width``."""
    return max(64, min(cell, max_width // max(1, columns)))


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font, scalable where FreeType is built in
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _shorten(font, text: str, width: int) -> str:
    """Each line of ``text`` cut with "..." until it fits ``width`` pixels."""
    lines = []
    for line in text.split("\n"):
        if font.getlength(line) > width:
            while line and font.getlength(line + "...") > width:
                line = line[:-1]
            line += "..."
        lines.append(line)
    return "\n".join(lines)


def _captioned(image: Image.Image, text: str, width: int | None = None) -> Image.Image:
    """The image above a caption bar, the text centred (and shortened if too long)."""
    width = width or image.width
    font = _font(max(12, min(20, image.height // 18)))
    text = _shorten(font, text, width - 8)
    _, text_height = _text_size(font, text or "Ag")
    bar = text_height + 12
    panel = Image.new("RGB", (width, image.height + bar), BACKGROUND)
    panel.paste(image, ((width - image.width) // 2, 0))
    draw = ImageDraw.Draw(panel)
    draw.multiline_text((width / 2, image.height + bar / 2), text, fill=INK, font=font, anchor="mm", align="center")
    return panel


def _row(panels: Sequence[Image.Image], gap: int) -> Image.Image:
    width = sum(p.width for p in panels) + gap * (len(panels) + 1)
    height = max(p.height for p in panels) + 2 * gap
    row = Image.new("RGB", (width, height), BACKGROUND)
    x = gap
    for panel in panels:
        row.paste(panel, (x, gap))
        x += panel.width + gap
    return row


def _plain_grid(panels: Sequence[Image.Image], columns: int, gap: int) -> Image.Image:
    rows = math.ceil(len(panels) / columns)
    cell_w, cell_h = max(p.width for p in panels), max(p.height for p in panels)
    sheet = Image.new("RGB", (columns * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), BACKGROUND)
    for i, panel in enumerate(panels):
        row, col = divmod(i, columns)
        sheet.paste(panel, (gap + col * (cell_w + gap), gap + row * (cell_h + gap)))
    return sheet


def _headed_grid(
    grid: Mapping[tuple[int, int], Image.Image],
    rows: int,
    cols: int,
    box: tuple[int, int],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    font,
    gap: int = 6,
) -> Image.Image:
    """Cells under a header row (column values) and beside a header column (row values)."""
    cell_w, cell_h = box
    col_labels = [_shorten(font, text, cell_w - 4) for text in col_labels]
    widest = max(_text_size(font, text)[0] for text in row_labels)
    header_w = min(widest, 2 * cell_w) + 2 * gap
    row_labels = [_shorten(font, text, header_w - 2 * gap) for text in row_labels]
    header_h = _text_size(font, "Ag")[1] + 2 * gap
    size = (header_w + cols * (cell_w + gap) + gap, header_h + rows * (cell_h + gap) + gap)
    sheet = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(col_labels):
        draw.text((header_w + c * (cell_w + gap) + cell_w / 2, header_h / 2), text, fill=INK, font=font, anchor="mm")
    for r, text in enumerate(row_labels):
        draw.text((header_w - gap, header_h + r * (cell_h + gap) + cell_h / 2), text, fill=INK, font=font, anchor="rm")
    for (r, c), image in grid.items():
        sheet.paste(image, (header_w + c * (cell_w + gap), header_h + r * (cell_h + gap)))
    return sheet


def sweep_entries(folder: Path, results: Sequence[ResultReport]) -> list[tuple[dict[str, Any], Path]]:
    """What a job's sweep sheet shows: (what varies, image file) per result whose image exists.

    The content and the style count as varying values when they differ between results, so a
    job of several contents x several styles gets a content x style grid. Empty when the job
    has fewer than two results with images, or when nothing varies.
    """
    entries = []
    for result in results:
        image = find_result_image(folder, result.label) if result.done else None
        if image is None:
            continue
        values = {
            "content": Path(result.content or "").stem,
            "style": "+".join(Path(s).stem for s in result.styles),
            **result.varying,
        }
        entries.append((values, image))
    if len(entries) < 2:
        return []
    keys = varying_keys([values for values, _ in entries])
    if not keys:
        return []
    return [({k: values[k] for k in keys if k in values}, image) for values, image in entries]


RESULT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def find_result_image(folder: Path, label: str, exists: Callable[[Path], bool] = Path.is_file) -> Path | None:
    """The result image of ``label`` in a job folder (``LABEL.png``, ``.jpg`` or ``.webp``)."""
    for suffix in RESULT_SUFFIXES:
        candidate = folder / f"{label}{suffix}"
        if exists(candidate):
            return candidate
    return None
