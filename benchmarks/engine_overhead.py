"""How much an engine iteration costs beyond the bare network.

For each image size and optimizer this times, in one process and on the same image:

* **bare**: the truncated VGG-19 alone -- the :class:`FeatureExtractor` for the default layers
  (relu4_2 for content, relu1_1..relu5_1 for style, so it runs up to relu5_1), an image that
  requires grad, ``sum(feature.mean())`` over the requested layers and ``.backward()``;
* **engine**: ``stylize()`` with ``StyleParams(image_size=size, iterations=N, optimizer=...,
  early_stop_tol=0)``, the per-iteration time taken from the differences of the history's
  ``LossRecord.elapsed_s`` (the first two iterations are skipped: the first includes the
  computation of the content and style targets).

Both are summarized by the median seconds per iteration; the ratio engine / bare is the engine's
overhead (Gram matrices, losses, the optimizer step, bookkeeping). Random weights are used when
the ImageNet file is not in torchvision's cache: the timing does not depend on the values.

    python benchmarks/engine_overhead.py                         # CPU, 128 and 256 px, lbfgs and adam
    python benchmarks/engine_overhead.py --sizes 256 512 --iterations 30 --repeats 3 --json out.json
    python benchmarks/engine_overhead.py --paired --clock cpu --threads 1   # on a machine shared with other jobs
    python benchmarks/engine_overhead.py --device cuda --lbfgs-500   # 500 L-BFGS iterations at 512 px

On a machine where other jobs compete for the cores, the two measurements of the default method
("blocks": all bare iterations, then each engine run) see different loads. ``--paired`` runs a
bare pass inside stylize()'s callback after every engine iteration, so each engine iteration has
a bare pass timed next to it, and the ratio is the median of the paired ratios; ``--clock cpu``
(with ``--threads 1``) times CPU time instead of wall time, which waiting for a core does not
inflate. The JSON also keeps the minima, the load averages and the loss of the first and last
iteration (evidence that the optimizer stepped).

``--lbfgs-500`` (and ``--adam-500``) is the comparison with jcjohnson/neural-style's published
speed for 500 iterations at 512 px on a Pascal Titan X: L-BFGS 30 s (45 s without
-cudnn_autotune), Adam 22 s; the target here is L-BFGS under 5 s on an H200. It times
``stylize()`` end to end (targets included, model loading not) after a 5-iteration warm-up run,
and also prints the per-iteration median. ``--cudnn-benchmark`` is the analogue of
-cudnn_autotune; the JSON records whether it was set.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nst_batch.engine import FeatureExtractor, StyleParams, imagenet_file, load_network, resolve_device, stylize  # noqa: E402
from nst_batch.util.errors import DeviceError  # noqa: E402

WARMUP = 2  # iterations left out of every median
OPTIMIZERS = ("lbfgs", "adam")


def cpu_info() -> dict:
    """Model name, family/model numbers and the vector/matrix extensions torch may use."""
    info: dict = {"model": platform.processor() or platform.machine()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    info.update(
        model=fields.get("model name", info["model"]),
        vendor=fields.get("vendor_id"),
        family=fields.get("cpu family"),
        model_number=fields.get("model"),
        avx512="avx512f" in flags,
        amx=sorted(f for f in flags if f.startswith("amx")),
    )
    return info


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_image(size: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, 3, size, size), generator=generator).to(device)


def time_bare(network, params: StyleParams, size: int, iterations: int, device: torch.device) -> list[float]:
    """Seconds of each forward + backward of the truncated network, warm-up left out."""
    layers = (*params.content_layer_names, *params.style_layer_names)
    extractor = FeatureExtractor(network, layers, params.pooling)
    image = synthetic_image(size, 1, device).requires_grad_(True)
    times = []
    for i in range(WARMUP + iterations):
        image.grad = None  # as the engine's zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        feats = extractor(image)
        sum(feats[name].mean() for name in layers).backward()
        sync(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def run_engine(network, size: int, iterations: int, optimizer: str, device: torch.device):
    """One stylize() run on a synthetic content and style image; (result, wall seconds)."""
    params = StyleParams(image_size=size, iterations=iterations, optimizer=optimizer, early_stop_tol=0, seed=0)
    content, style = synthetic_image(size, 1, torch.device("cpu")), synthetic_image(size, 2, torch.device("cpu"))
    sync(device)
    start = time.perf_counter()
    result = stylize(network, content, [style], params)
    sync(device)
    return result, time.perf_counter() - start


def iteration_times(result) -> list[float]:
    """Per-iteration seconds from the loss history, the first WARMUP iterations left out.

    elapsed_s is taken after the losses are copied to the CPU (``tolist``), so on a GPU each
    difference already covers a synchronized iteration.
    """
    elapsed = [r.elapsed_s for r in result.history]
    return [b - a for a, b in zip(elapsed[WARMUP - 1 :], elapsed[WARMUP:])]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_paired(network, params: StyleParams, size: int, iterations: int, optimizer: str, device, clock: str = "wall"):
    """One stylize() run with a bare pass inside its callback after every iteration.

    Each engine iteration is then timed next to a bare pass, seconds apart, so a machine whose
    load changes (other jobs sharing the cores) slows both alike. With the wall clock the engine's
    time is the elapsed_s difference less the callback's own time; with ``clock="cpu"`` both are
    this process's CPU time (engine: from the end of one callback to the start of the next), which
    waiting for a busy core does not inflate -- meaningful with one torch thread, where no thread
    spins at a barrier. Returns (bare, engine) pairs and the result.
    """
    layers = (*params.content_layer_names, *params.style_layer_names)
    extractor = FeatureExtractor(network, layers, params.pooling)
    image = synthetic_image(size, 1, device).requires_grad_(True)
    bare, callback_s, cpu_in, cpu_out = [], [], [], []

    def callback(progress) -> None:
        cpu_in.append(time.process_time())
        entered = time.perf_counter()
        image.grad = None
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        feats = extractor(image)
        sum(feats[name].mean() for name in layers).backward()
        sync(device)
        bare.append(time.process_time() - start_cpu if clock == "cpu" else time.perf_counter() - start)
        callback_s.append(time.perf_counter() - entered)
        cpu_out.append(time.process_time())

    run_params = StyleParams(image_size=size, iterations=iterations + WARMUP, optimizer=optimizer,
                             early_stop_tol=0, seed=0)
    content, style = synthetic_image(size, 1, torch.device("cpu")), synthetic_image(size, 2, torch.device("cpu"))
    result = stylize(network, content, [style], run_params, callback=callback)
    elapsed = [r.elapsed_s for r in result.history]
    pairs = []
    for i in range(WARMUP, len(elapsed)):  # iteration i+1, timed after the callback of iteration i
        if clock == "cpu":
            engine = cpu_in[i] - cpu_out[i - 1]
        else:
            engine = elapsed[i] - elapsed[i - 1] - callback_s[i - 1]
        pairs.append((bare[i - 1], engine))
    return pairs, result


def summary(size: int, optimizer: str, bare: list[float], engine: list[float], result, ratios=None) -> dict:
    row = {
        "size": size,
        "optimizer": optimizer,
        "bare_s_per_it": median(bare),
        "engine_s_per_it": median(engine),
        "ratio": median(engine) / median(bare),
        "bare_min_s": min(bare),
        "engine_min_s": min(engine),
        "ratio_of_mins": min(engine) / min(bare),
        "samples": {"bare": len(bare), "engine": len(engine)},
        "bare_max_s": max(bare),
        "engine_max_s": max(engine),
        # the optimizer really stepped when these differ
        "loss_first_last": (result.history[0].total, result.history[-1].total),
    }
    if ratios is not None:
        row["ratio"] = median(ratios)  # median of the paired ratios
    print(f"  {size:>5} px  {optimizer:<5}  bare {row['bare_s_per_it']:.4f} s/it  engine "
          f"{row['engine_s_per_it']:.4f} s/it  ratio {row['ratio']:.3f}  (of minima {row['ratio_of_mins']:.3f})  "
          f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return row


def measure(network, sizes, iterations, repeats, device, paired: bool = False, clock: str = "wall") -> list[dict]:
    rows = []
    for size in sizes:
        params = StyleParams(image_size=size)
        if paired:
            for opt in OPTIMIZERS:
                pairs, result = [], None
                for _ in range(repeats):
                    more, result = run_paired(network, params, size, iterations, opt, device, clock)
                    pairs += more
                bare, engine = [b for b, _ in pairs], [e for _, e in pairs]
                rows.append(summary(size, opt, bare, engine, result, ratios=[e / b for b, e in pairs]))
            continue
        bare_samples: list[float] = []
        engine_samples: dict[str, list[float]] = {opt: [] for opt in OPTIMIZERS}
        results = {}
        for _ in range(repeats):  # interleaved, so a drift of the machine hits both alike
            bare_samples += time_bare(network, params, size, iterations, device)
            for opt in OPTIMIZERS:
                results[opt], _ = run_engine(network, size, iterations + WARMUP, opt, device)
                engine_samples[opt] += iteration_times(results[opt])
        for opt in OPTIMIZERS:
            rows.append(summary(size, opt, bare_samples, engine_samples[opt], results[opt]))
    return rows


# jcjohnson/neural-style's README, 500 iterations at -image_size 512 on a Pascal Titan X (cuDNN 5.0,
# CUDA 8.0 RC): L-BFGS 45 s, 30 s with -cudnn_autotune; Adam 22 s with -cudnn_autotune.
# -cudnn_autotune is what --cudnn-benchmark sets here.
REFERENCE_500 = {
    "lbfgs": "jcjohnson/neural-style, Pascal Titan X: 30 s with -cudnn_autotune, 45 s without",
    "adam": "jcjohnson/neural-style, Pascal Titan X: 22 s with -cudnn_autotune",
}


def iteration_flops(network, size: int, device: torch.device) -> int:
    """Floating-point operations of one iteration's network pass at ``size`` px: the forward pass
    up to relu5_1 and the backward pass to the image (no weight gradients), as PyTorch counts them."""
    params = StyleParams(image_size=size)
    extractor = FeatureExtractor(network, (*params.content_layer_names, *params.style_layer_names))
    image = synthetic_image(size, 0, device).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        features = extractor(image)
        sum(f.mean() for f in features.values()).backward()
    return counter.get_total_flops()


def run_500(network, device, optimizer: str = "lbfgs", size: int = 512, iterations: int = 500,
            peak_tflops: float | None = None) -> dict:
    """500 iterations at 512 px, end to end, as jcjohnson/neural-style reports its speed, and the
    arithmetic rate that achieves (TFLOP/s), against the device's peak when given."""
    run_engine(network, size, 5, optimizer, device)  # warm-up: kernels, allocator, cuDNN choices
    result, wall = run_engine(network, size, iterations, optimizer, device)
    flops = iteration_flops(network, size, device)
    tflops = flops * len(result.history) / wall / 1e12
    return {
        "optimizer": optimizer,
        "size": size,
        "iterations": len(result.history),
        "wall_s": wall,
        "median_s_per_it": median(iteration_times(result)),
        "gflop_per_iteration": flops / 1e9,
        "achieved_tflops": tflops,
        "fraction_of_peak": tflops / peak_tflops if peak_tflops else None,
        "reference": REFERENCE_500[optimizer],
        "target": "< 5 s on an H200" if optimizer == "lbfgs" else None,
    }


def environment(device: torch.device, weights: str) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu": cpu_info(),
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
        "weights": weights,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_conv"] = torch.backends.cudnn.allow_tf32
    return env


def table(rows: list[dict]) -> str:
    lines = ["| size | optimizer | bare s/it | engine s/it | ratio |", "|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['optimizer']} | {r['bare_s_per_it']:.4f} | "
                     f"{r['engine_s_per_it']:.4f} | {r['ratio']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="long sides in px (default 128 256)")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations per measurement (default 20)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per size, interleaved (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    parser.add_argument("--weights", default="auto",
                        help="imagenet | random | a .pth file; auto = imagenet if cached, else random")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores available)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="set torch.backends.cudnn.benchmark")
    parser.add_argument("--lbfgs-500", action="store_true",
                        help="also time 500 L-BFGS iterations at 512 px end to end (meant for a GPU)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak TFLOP/s in the precision used, to report the fraction achieved")
    parser.add_argument("--adam-500", action="store_true",
                        help="also time 500 Adam iterations at 512 px (jcjohnson's 22 s figure is for Adam)")
    parser.add_argument("--skip-overhead", action="store_true",
                        help="with --lbfgs-500/--adam-500: only those measurements")
    parser.add_argument("--paired", action="store_true",
                        help="time a bare pass next to every engine iteration (for a machine shared with other jobs)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="with --paired: cpu = this process's CPU time (use with --threads 1 on a busy machine)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and not args.paired:
        parser.error("--clock cpu needs --paired (the engine's own history records wall time)")
    if args.clock == "cpu" and (args.threads or cores()) > 1:
        print("# --clock cpu with several threads counts threads spinning at barriers: prefer --threads 1",
              file=sys.stderr)
    if args.iterations < 3:
        parser.error("--iterations must be at least 3 for a meaningful median")

    torch.set_num_threads(args.threads or cores())
    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    weights = args.weights
    if weights == "auto":
        weights = "imagenet" if imagenet_file("vgg19").is_file() else "random"
    network, info = load_network("vgg19", weights)
    network.to(device)
    env = environment(device, weights)
    print(f"# engine overhead: torch {env['torch']}, {env.get('gpu') or env['cpu']['model']}, "
          f"{env['cores']} cores, {env['torch_threads']} threads, weights {info.describe()}", file=sys.stderr)

    out: dict = {"environment": env, "iterations": args.iterations, "repeats": args.repeats, "warmup": WARMUP}
    if not args.skip_overhead:
        out["method"] = "paired" if args.paired else "blocks"
        out["clock"] = args.clock
        out["loadavg_before"] = os.getloadavg()
        rows = measure(network, args.sizes, args.iterations, args.repeats, device, args.paired, args.clock)
        out["loadavg_after"] = os.getloadavg()
        out["rows"] = rows
        print(table(rows))
        busiest = max(out["loadavg_before"][0], out["loadavg_after"][0])
        if device.type == "cpu" and busiest > env["cores"] + 0.5:
            out["warning"] = f"load average {busiest:.1f} on {env['cores']} cores: other jobs shared the CPU"
            print(f"# WARNING: {out['warning']}; the wall-clock figures are unreliable "
                  "(try --paired --clock cpu --threads 1)", file=sys.stderr)
    for optimizer, wanted in (("lbfgs", args.lbfgs_500), ("adam", args.adam_500)):
        if not wanted:
            continue
        if device.type != "cuda":
            print(f"# 500 {optimizer} iterations at 512 px on a CPU: expect many minutes", file=sys.stderr)
        out[f"{optimizer}_500"] = res = run_500(network, device, optimizer, peak_tflops=args.peak_tflops)
        peak = f", {res['fraction_of_peak']:.1%} of {args.peak_tflops:g}" if args.peak_tflops else ""
        print(f"\n{res['iterations']} {optimizer} iterations at {res['size']} px: {res['wall_s']:.2f} s end to end "
              f"({res['median_s_per_it'] * 1000:.1f} ms/it median; {res['gflop_per_iteration']:.0f} GFLOP/it, "
              f"{res['achieved_tflops']:.2f} TFLOP/s{peak}); {res['reference']}"
              + (f"; target {res['target']}" if res["target"] else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
