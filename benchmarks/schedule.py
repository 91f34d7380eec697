"""Does the high-resolution schedule pay? Each of its options against plain one-scale runs at the
same size and about the same compute, on real pretrained features (HED's VGG-16, Caffe layout),
scored and drawn as ``benchmarks/quality.py`` does (its Scorer, contact sheet and JSON writer).

Compute is counted in full-size iterations: an iteration at a scale of long side s costs about
(s / size)^2 of one at full size. ``--budget N`` (default 52) gives the plain run N iterations
at full size and every ladder a schedule of about N full-size iterations:

* ``plain``: one scale, N iterations;
* ``halving``: today's ladder (``scale_ratio`` 2), 3 scales, iterations in neural-style-pt's
  multires proportions 1000 : 500 : 200;
* ``sqrt2_equal``: crowsonkb's ladder (``scale_ratio`` sqrt 2), 4 scales, the same iterations
  at each (what ``iterations`` alone gives);
* ``sqrt2``: the same ladder, fewer iterations at larger scales (``scale_iterations``);
* ``sqrt2_style_size``: ``sqrt2`` with ``style_size`` = the output size, so the coarse scales
  match the style at full resolution instead of shrunk with the image;
* ``sqrt2_adam`` and ``sqrt2_adam_carry``: ``sqrt2`` with Adam, afresh at each scale or with
  ``carry_optimizer``.

    .venv/bin/python benchmarks/schedule.py --hed-cache .cache/hed      # 2 pairs, 512 px, about 25 min on 1 thread

Writes ``--out`` (JSON), ``--sheet`` (contact sheet: whole results) and beside it ``*_crops.png``
(the centre of every result at 1:1, where high-resolution detail shows) and ``*_convergence.png``.
One torch thread by default (``--threads``). Needs ``h5py`` and ``scikit-image``.
"""

import argparse
import datetime
import math
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402
from hed import DEFAULT_CACHE  # noqa: E402
from quality import PAIRS, Variant, variant_params  # noqa: E402

from nst_batch.engine import StyleParams, load_network  # noqa: E402
from nst_batch.engine.images import fit_long_side, resize, resize_long_side  # noqa: E402

SQRT2 = math.sqrt(2)


def full_size_iterations(params: StyleParams) -> float:
    """The schedule's cost in iterations at full size: each scale's iterations x its share of the pixels."""
    return sum(
        params.iterations_at(k) * (size / params.image_size) ** 2 for k, size in enumerate(params.scale_sizes)
    )


def _scaled(proportions: tuple[float, ...], sizes: tuple[int, ...], budget: int) -> tuple[int, ...]:
    """Iterations in these proportions, smallest scale first, costing ``budget`` full-size iterations."""
    cost = sum(p * (s / sizes[-1]) ** 2 for p, s in zip(proportions, sizes))
    return tuple(max(1, round(p * budget / cost)) for p in proportions)


def schedule_variants(size: int, budget: int) -> list[Variant]:
    halving = StyleParams(image_size=size, scales=3).scale_sizes
    sqrt2 = StyleParams(image_size=size, scales=4, scale_ratio=SQRT2).scale_sizes
    ladder = {"scales": 4, "scale_ratio": SQRT2}
    decreasing = {**ladder, "scale_iterations": _scaled((3.2, 2.4, 1.6, 1.0), sqrt2, budget)}
    return [
        Variant("plain", "hed_caffe", {"iterations": budget}),
        Variant("halving", "hed_caffe", {"scales": 3, "scale_iterations": _scaled((1000, 500, 200), halving, budget)}),
        Variant("sqrt2_equal", "hed_caffe", {**ladder, "iterations": _scaled((1, 1, 1, 1), sqrt2, budget)[0]}),
        Variant("sqrt2", "hed_caffe", decreasing),
        Variant("sqrt2_style_size", "hed_caffe", {**decreasing, "style_size": size}),
        Variant("sqrt2_adam", "hed_caffe", {**decreasing, "optimizer": "adam"}),
        Variant("sqrt2_adam_carry", "hed_caffe", {**decreasing, "optimizer": "adam", "carry_optimizer": True}),
    ]


def centre(image: torch.Tensor, side: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[..., top : top + side, left : left + side]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget", type=int, default=52, help="full-size iterations of every variant (default 52)")
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=["chelsea+ihc", "coffee+gravel"])
    parser.add_argument("--variants", nargs="+", help="names of schedule_variants() to run (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hed-cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, help="JSON results (default docs/results/schedule_<device>_<date>.json)")
    parser.add_argument("--sheet", type=Path, default=ROOT / "docs" / "quality" / "schedule_sheet.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    date = datetime.date.today().isoformat()
    out = args.out or ROOT / "docs" / "results" / f"schedule_{device.type}_{date}.json"
    variants = [v for v in schedule_variants(args.size, args.budget) if not args.variants or v.name in args.variants]
    base = {"backbone": "vgg16", "image_size": args.size, "iterations": args.budget, "seed": args.seed,
            "optimizer": "lbfgs", "early_stop_tol": 0.0}
    report: dict[str, Any] = {
        "date": date, "device": str(device), "cpu": quality.cpu_model(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "size": args.size, "budget_full_size_iterations": args.budget,
        "base_params": base,
        "variants": [{"name": v.name, "overrides": v.overrides,
                      "scale_sizes": list(variant_params(v, base)[0].scale_sizes),
                      "full_size_iterations": round(full_size_iterations(variant_params(v, base)[0]), 2)}
                     for v in variants],
        "scores": "style_gain = 1 - Ds(result)/Ds(content); content_keep = 1 - Dc(result)/Dc(style); "
                  "see benchmarks/quality.py",
        "pairs": [],
    }
    weights, layout = quality.NETWORKS["hed_caffe"]
    network = load_network("vgg16", str(weights(args.hed_cache)), layout)[0].to(device)
    rows, crop_rows = [], []
    for pair in args.pairs:
        content_name, style_name = PAIRS[pair]
        content, style = quality.load_image(content_name), quality.load_image(style_name)
        shape = fit_long_side(*content.shape[-2:], args.size)
        scorer = quality.Scorer(network, content.to(device), style.to(device), shape)
        entry = {"pair": pair, "content": content_name, "style": style_name, "shape": list(shape),
                 "Ds_content": scorer.ds_content, "Dc_style": scorer.dc_style, "runs": []}
        row = {"content": content_name, "style": style_name, "runs": {}, "images": {},
               "content_image": resize(content, shape), "style_image": resize_long_side(style, args.size)}
        for variant in variants:
            record, image = quality.run_one(network, scorer, content, style, variant, base)
            entry["runs"].append(record)
            row["runs"][variant.name], row["images"][variant.name] = record, image
            if "error" in record:
                print(f"{pair:16s} {variant.name:18s} {record['error']}", flush=True)
            else:
                s = record["scores"]
                print(f"{pair:16s} {variant.name:18s} style_gain {s['style_gain']:+.3f} content_keep "
                      f"{s['content_keep']:+.3f} loss {record['final']['total']:.4g} {record['wall_s']:.0f} s",
                      flush=True)
            quality._write_json(report | {"pairs": [*report["pairs"], entry]}, out)  # as it goes
        report["pairs"].append(entry)
        rows.append(row)
        crop_rows.append({**row, "content_image": centre(row["content_image"], 256),
                          "style_image": centre(row["style_image"], 256),
                          "images": {k: centre(v, 256) for k, v in row["images"].items() if v is not None}})
    names = [v.name for v in variants]
    beside = args.sheet.with_name
    report["contact_sheet"] = str(quality.contact_sheet(rows, names, args.sheet, cell=320))
    report["crops_sheet"] = str(quality.contact_sheet(crop_rows, names, beside(args.sheet.stem + "_crops.png")))
    report["convergence_plot"] = str(quality.convergence_plot(report, beside(args.sheet.stem + "_convergence.png")))
    quality._write_json(report, out)
    print(f"wrote {out}, {report['contact_sheet']} and {report['crops_sheet']}")


if __name__ == "__main__":
    main()
