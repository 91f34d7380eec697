"""Exact tiling (``tile``): is it exact, what does it cost, how large can a result be?

Four parts, each a flag (default: all but ``--big``, which takes minutes):

``--exactness``  The gradient of the tiled loss against the untiled one, full-width random VGG-19
    and ResNet-18, 256 px, 64 px tiles (every halo matters): relative error ``||g_t - g|| / ||g||``
    and the loss's, for max and avg pooling, one and two styles, Gram and Wasserstein.
``--overhead``   Seconds per iteration untiled and tiled at a size where both fit (512 px, Adam,
    VGG-19), side by side in one process, against the memory model's predicted work; and the
    share of a forward pass alone in a forward and backward pass (``memory.FORWARD_SHARE``).
``--big SIDE``   A SIDE x SIDE run (VGG-19, Adam, random weights, 3 iterations, a style image of the
    same size) in a fresh process: the tile the daemon's way (``too_big: tile`` on the model fitted
    to the start-up probes, for ``--budget``), the process's peak resident memory (VmHWM), the
    predicted peak, the untiled prediction and the seconds per iteration.
``--projection`` From the model fitted on this machine's probes: the largest square result that
    fits 8, 24 and 141 GB, untiled and tiled, for Adam and L-BFGS.

    .venv/bin/python benchmarks/tiling.py --exactness --overhead --projection
    .venv/bin/python benchmarks/tiling.py --big 2048 --budget 2.2GiB --json docs/results/tiling_big.json
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from nst_batch.daemon.capacity import probed_model  # noqa: E402
from nst_batch.daemon.measure import PeakMeter  # noqa: E402
from nst_batch.daemon.memory import FORWARD_SHARE, fit_run, run_need  # noqa: E402
from nst_batch.engine import StyleParams, load_network, stylize  # noqa: E402
from nst_batch.engine.features import FeatureExtractor  # noqa: E402
from nst_batch.engine.losses import StyleTransferLoss  # noqa: E402
from nst_batch.engine.optimize import scale_loss  # noqa: E402
from nst_batch.engine.tiling import TiledLoss, Tiling  # noqa: E402


def _image(seed: int, height: int, width: int) -> torch.Tensor:
    return torch.rand((1, 3, height, width), generator=torch.Generator().manual_seed(seed))


def _waves(frequency: float, height: int, width: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return (torch.stack([torch.sin(frequency * (x + k * y) + k) for k in range(3)]).unsqueeze(0) + 1) / 2


def _loss(extractor, params, content, styles, tiling) -> StyleTransferLoss:
    return scale_loss(extractor, tiling, content, styles, params, params.blend_weights(len(styles)), content.shape[-1])


def exactness(size: int = 256, tile: int = 64) -> list[dict]:
    cases = [
        ("vgg19", {}, 1), ("vgg19", {"pooling": "avg"}, 2), ("vgg19", {"style_loss": "wasserstein", "tv_weight": 1.0}, 1),
        ("resnet18", {}, 2), ("resnet18", {"pooling": "avg"}, 1),
    ]
    networks = {name: load_network(name, "random")[0] for name in ("vgg19", "resnet18")}
    rows = []
    for backbone, overrides, n_styles in cases:
        params = StyleParams(backbone=backbone, **overrides)
        layers = (*params.content_layer_names, *params.style_layer_names)
        extractor = FeatureExtractor(networks[backbone], layers, params.pooling)
        content, styles = _waves(7.0, size, size), [_image(2 + i, size - 32 * i, size) for i in range(n_styles)]
        whole, tiles = Tiling.for_layers(backbone, layers, None), Tiling.for_layers(backbone, layers, tile)
        image = (0.7 * _waves(11.0, size, size) + 0.3 * _image(9, size, size)).requires_grad_(True)
        started = time.perf_counter()
        total, _ = _loss(extractor, params, content, styles, whole)(image, extractor(image))
        total.backward()
        untiled_s, expected, image.grad = time.perf_counter() - started, image.grad, None
        started = time.perf_counter()
        tiled_total, _ = TiledLoss(_loss(extractor, params, content, styles, tiles), extractor, tiles).backward(image)
        rows.append({
            "backbone": backbone, "pooling": params.pooling, "style_loss": params.style_loss, "styles": n_styles,
            "tiles": len(tiles.tiles(size, size)), "halo": tiles.halo,
            "gradient_relative_error": ((image.grad - expected).norm() / expected.norm()).item(),
            "loss_relative_error": abs(tiled_total.item() - total.item()) / abs(total.item()),
            "untiled_s": untiled_s, "tiled_s": time.perf_counter() - started,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _per_iteration(params: StyleParams, network, content, style) -> float:
    history = stylize(network, content, [style], params).history
    return (history[-1].elapsed_s - history[0].elapsed_s) / (len(history) - 1)  # the first also computes targets


def overhead(size: int = 512, tiles: tuple[int, ...] = (256, 128), iterations: int = 4, repeats: int = 2) -> dict:
    network = load_network("vgg19", "random")[0]
    content, style = _waves(9.0, size, size), _image(3, size, size)
    base = StyleParams(image_size=size, optimizer="adam", iterations=iterations, early_stop_tol=0, seed=0)
    rows = {tile: [] for tile in (None, *tiles)}
    for _ in range(repeats):  # interleaved, so a machine that drifts drifts for all alike
        for tile in rows:
            rows[tile].append(_per_iteration(base.with_overrides({"tile": tile}), network, content, style))
    untiled = min(rows[None])
    table = []
    for tile, seconds in rows.items():
        need = run_need(base.with_overrides({"tile": tile}), (size, size), 1)
        table.append({
            "tile": tile, "seconds_per_iteration": min(seconds), "all": seconds,
            "measured_ratio": min(seconds) / untiled,
            "predicted_ratio": need.work / run_need(base, (size, size), 1).work,
            "crop": list(Tiling.for_layers("vgg19", (*base.content_layer_names, *base.style_layer_names), tile)
                         .largest_crop(size, size)),
        })
        print(json.dumps(table[-1]), flush=True)
    extractor = FeatureExtractor(network, (*base.content_layer_names, *base.style_layer_names))
    image = content.clone().requires_grad_(True)
    forward, both = [], []
    for _ in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            extractor(image)
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        sum(f.square().mean() for f in extractor(image).values()).backward()
        both.append(time.perf_counter() - started)
    share = {"forward_s": min(forward), "forward_backward_s": min(both), "measured_share": min(forward) / min(both),
             "model_share": FORWARD_SHARE}
    print(json.dumps(share), flush=True)
    return {"size": size, "iterations": iterations, "rows": table, "forward_share": share}


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def big_child(side: int, budget: int, iterations: int, tile: int | None) -> dict:
    network = load_network("vgg19", "random")[0]
    model = probed_model(network, torch.device("cpu"), "vgg19")
    params = StyleParams(image_size=side, optimizer="adam", iterations=iterations, early_stop_tol=0, seed=0)
    untiled = model.peak(run_need(params, (side, side), 1))
    if tile is None:
        fit = fit_run(params, (side, side), 1, model, budget, "tile")
        if fit.params is None:
            return {"refusal": fit.refusal}
        params = fit.params
    else:
        params = params.with_overrides({"tile": tile})
    content, style = _waves(13.0, side, side), _image(5, side, side)
    before_run = _status("VmRSS")
    with PeakMeter(torch.device("cpu")) as meter:
        result = stylize(network, content, [style], params)
    history = result.history
    return {
        "side": side, "tile": params.tile, "iterations": len(history),
        "vmhwm_bytes": _status("VmHWM"), "rss_before_run_bytes": before_run, "run_peak_bytes": meter.peak_bytes,
        "predicted_peak_bytes": model.peak(run_need(params, (side, side), 1)), "untiled_predicted_peak_bytes": untiled,
        "budget_bytes": budget,
        "seconds_per_iteration": (history[-1].elapsed_s - history[0].elapsed_s) / max(1, len(history) - 1),
        "first_iteration_s": history[0].elapsed_s, "total_s": history[-1].elapsed_s,
        "predicted_seconds_per_iteration": model.seconds_per_iteration(run_need(params, (side, side), 1)),
        "model": {"constant_bytes": model.constant_bytes, "per_activation": model.per_activation,
                  "seconds_per_activation_byte": model.seconds_per_activation_byte},
    }


def projection(network) -> list[dict]:
    """The largest square side that fits each card, by bisection on the fitted model: whole, and
    with the largest tile that fits (``too_big: tile``), for Adam and L-BFGS (history 100)."""
    model = probed_model(network, torch.device("cpu"), "vgg19")
    rows = []
    for gigabytes in (8, 24, 141):
        budget = int(gigabytes * 1e9 * 0.95)  # the CUDA context and other processes take the rest
        for optimizer in ("adam", "lbfgs"):
            for tiled in (False, True):
                def fits(side: int, optimizer=optimizer, tiled=tiled, budget=budget) -> bool:
                    params = StyleParams(image_size=side, optimizer=optimizer, iterations=1000)
                    fit = fit_run(params, (side, side), 1, model, budget, "tile" if tiled else "fail")
                    return fit.params is not None  # tiled: whole, or with the largest tile that fits

                low, high = 64, 16384  # image_size's limit: "16384" means at least that
                while low < high:
                    middle = (low + high + 1) // 2
                    low, high = (middle, high) if fits(middle) else (low, middle - 1)
                rows.append({"card_gb": gigabytes, "optimizer": optimizer, "tiled": tiled, "largest_side": low,
                             "model": {"constant_bytes": model.constant_bytes, "per_activation": model.per_activation,
                                       "margin": model.margin}})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def environment() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg()}  # other work on the machine slows every figure alike


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exactness", action="store_true")
    parser.add_argument("--overhead", action="store_true")
    parser.add_argument("--projection", action="store_true")
    parser.add_argument("--big", type=int, metavar="SIDE")
    parser.add_argument("--budget", default="2.2GiB", help="for --big: the memory budget the tile is chosen for")
    parser.add_argument("--tile", type=int, help="for --big: this tile instead of the budget's")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pydantic import ByteSize, TypeAdapter

    budget = int(TypeAdapter(ByteSize).validate_python(args.budget))
    if args.child:
        print(json.dumps(big_child(args.big, budget, args.iterations, args.tile)))
        return 0
    report: dict = {"environment": environment()}
    if not (args.exactness or args.overhead or args.projection or args.big):
        args.exactness = args.overhead = args.projection = True
    def save() -> None:  # after every part: a later one that fails loses nothing
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    if args.exactness:
        report["exactness"] = exactness()
        save()
    if args.overhead:
        report["overhead"] = overhead()
        save()
    if args.projection:
        report["projection"] = projection(load_network("vgg19", "random")[0])
        save()
    if args.big:
        command = [sys.executable, __file__, "--child", "--big", str(args.big), "--budget", args.budget,
                   "--iterations", str(args.iterations), *(["--tile", str(args.tile)] if args.tile else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        report["big"] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(report["big"]), flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
