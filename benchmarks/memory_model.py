"""Predicted against measured peak memory of a style transfer, size by size.

For each image size and optimizer this starts a FRESH Python process (so no allocator holds on to
memory an earlier run freed) that does what the daemon does at start-up and then checks it:

1. loads VGG-19 (random weights unless told otherwise: memory does not depend on the values);
2. runs ``measure.probe`` as ``Capacity.calibrate`` does (default parameters, so L-BFGS; a
   short warm-up run, then short runs at the device's two probe sizes, measured with
   ``PeakMeter``) and fits the device's model with ``memory.fit_model``;
3. runs ``stylize()`` at the size for N iterations (default 10) under ``PeakMeter``. L-BFGS runs
   with ``lbfgs_history=N``, so its history is as full as the need says
   (``measure.measured_need``);
4. compares the measured peak with ``MemoryModel.peak(need)``, raw (margin 0) and padded (the
   model's 10% margin, what the scheduler books).

The peak is, on a GPU, ``torch.cuda.max_memory_allocated`` above what was allocated before the
run; on the CPU, the process's peak resident memory (VmHWM, reset through /proc/self/clear_refs
after malloc_trim) above its resident memory before the run. Seconds per iteration are those of
iterations 2..N from the loss history (the first also computes the targets), the probe's own
definition, so the time model can be checked too.

    python benchmarks/memory_model.py                            # CPU: 128 256 512 px, lbfgs and adam
    python benchmarks/memory_model.py --repeats 3 --json out.json
    python benchmarks/memory_model.py --device cuda              # 256 512 1024 2048 px
    python benchmarks/memory_model.py --probe-sizes 128 256      # try other probe sizes
    python benchmarks/memory_model.py --optimizers adam --autocast bf16   # as `auto` runs Adam on a bf16 CPU
    python benchmarks/memory_model.py --batch 4                  # 4 runs as one batch (stylize_batch)

With random weights the losses are tiny (about 1e-4 at 512 px), and torch's L-BFGS, whose
thresholds are absolute (it keeps a (step, gradient change) pair only when their dot product is
above 1e-10), then keeps no history at all at 512 px: the run would not hold the memory the model
counts. So ``--loss-scale`` (default 1e4 with random weights, 1 otherwise) multiplies the content
and style weights, probes included; memory does not depend on them. The number of pairs L-BFGS
really kept is recorded (``lbfgs_pairs``: N - 1 after N steps when the history fills).

``--probe-sizes`` replaces ``measure.PROBE_SIZES`` for the device, to try other probe sizes
without editing it. ``--autocast`` and ``--channels-last`` run the measured run (not the probes,
which the daemon runs in fp32) with the engine's ``Speed``. Environment variables reach the
measuring processes, so ``MALLOC_MMAP_THRESHOLD_=131072`` tries a fixed glibc mmap threshold.
"""

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

DEFAULT_SIZES = {"cpu": (128, 256, 512), "cuda": (256, 512, 1024, 2048)}
OPTIMIZERS = ("lbfgs", "adam")
TARGET = 0.15  # the target for the raw prediction on a GPU
MIB = 1 << 20


def child(args: argparse.Namespace) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from nst_batch.daemon import measure, memory
    from nst_batch.engine import Member, StyleParams, load_network, resolve_device, stylize_batch
    from nst_batch.engine.features import Speed

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if args.probe_sizes:
        measure.PROBE_SIZES[kind] = tuple(args.probe_sizes)
    network, _ = load_network("vgg19", args.weights)
    network.to(device)
    scale = args.loss_scale if args.loss_scale is not None else (1e4 if args.weights == "random" else 1.0)
    defaults = StyleParams()
    weights = {"content_weight": scale * defaults.content_weight, "style_weight": scale * defaults.style_weight}
    pairs = _count_lbfgs_pairs(torch)
    started = time.perf_counter()
    samples = measure.probe(network, device, StyleParams(**weights))
    probe_seconds = time.perf_counter() - started
    model = memory.fit_model(samples)

    base = StyleParams(optimizer=args.optimizer, **weights)
    speed = Speed(None if args.autocast == "off" else args.autocast, args.channels_last)
    generator = torch.Generator().manual_seed(args.size)

    size, iterations = args.size, args.iterations
    params = base.with_overrides({"image_size": size, "iterations": iterations, "early_stop_tol": 0,
                                  "lbfgs_history": iterations, "seed": 0, "init": "content", "frame_every": 0})
    members = [Member(torch.rand((1, 3, size, size), generator=generator),
                      [torch.rand((1, 3, size, size), generator=generator)], params.with_overrides({"seed": i}))
               for i in range(args.batch)]
    pairs.clear()
    with measure.PeakMeter(device) as meter:
        started = time.perf_counter()
        result, *_ = stylize_batch(network, members, speed=speed)
        wall_seconds = time.perf_counter() - started
    history = result.history
    seconds = (history[-1].elapsed_s - history[0].elapsed_s) / max(1, len(history) - 1)
    need = measure.measured_need(params, (size, size), 1, len(result.history))
    raw = _booked(dataclasses.replace(model, margin=0.0), need, args.batch)
    padded = _booked(model, need, args.batch)
    measured = meter.peak_bytes
    row = {
        "size": size,
        "batch": args.batch,
        "optimizer": args.optimizer,
        "iterations": len(result.history),
        "loss_scale": scale,
        "autocast": args.autocast,
        "channels_last": args.channels_last,
        "wall_seconds": wall_seconds,
        "lbfgs_pairs": max(pairs, default=None),
        "activation_bytes": need.activation_bytes,
        "exact_bytes": need.exact_bytes,
        "predicted_raw_bytes": raw,
        "predicted_padded_bytes": padded,
        "measured_bytes": measured,
        "raw_error": (raw - measured) / measured if measured else None,
        "padded_covers": padded >= measured,
        "predicted_s_per_it": model.seconds_per_iteration(need),
        "measured_s_per_it": seconds,
        # what the run itself implies, given the fitted constant: compare with the fitted slope
        "implied_per_activation": (measured - need.exact_bytes - model.constant_bytes) / need.activation_bytes,
        "model": dataclasses.asdict(model),
        "probe": [{"size": s.need.height, "peak_bytes": s.peak_bytes, "s_per_it": s.seconds_per_iteration,
                   "activation_bytes": s.need.activation_bytes, "exact_bytes": s.need.exact_bytes}
                  for s in samples],
        "probe_seconds": probe_seconds,
        "loss_first_last": [result.history[0].total, result.history[-1].total],
    }
    if device.type == "cuda":
        row["max_memory_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return row


def _booked(model, need, batch: int) -> int:
    """What the scheduler books for ``batch`` such runs together (scheduler.Batch.need_bytes)."""
    from nst_batch.daemon.scheduler import Batch, Candidate

    runs = tuple(Candidate(i, i, 0, 0, model.peak(need), False, "shape", model.shared_bytes()) for i in range(batch))
    return Batch(runs).need_bytes


def _count_lbfgs_pairs(torch) -> list[int]:
    """After every L-BFGS step, the number of pairs in its history (a count: nothing is copied)."""
    lengths: list[int] = []
    step = torch.optim.LBFGS.step

    def counted(self, closure):
        loss = step(self, closure)
        lengths.append(len(self.state[self._params[0]].get("old_dirs", ())))
        return loss

    torch.optim.LBFGS.step = counted
    return lengths


def environment(args: argparse.Namespace) -> dict:
    import torch
    from engine_overhead import cores, cpu_info

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "device": args.device,
        "cpu": cpu_info(),
        "cores": cores(),
        "threads": args.threads or torch.get_num_threads(),
        "weights": args.weights,
        "iterations": args.iterations,
        "autocast": args.autocast,
        "channels_last": args.channels_last,
        "loss_scale": args.loss_scale,
        "probe_sizes": args.probe_sizes,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "load_average": os.getloadavg(),
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        env["cuda"] = torch.version.cuda
    return env


def measure(args: argparse.Namespace, size: int, optimizer: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--size", str(size),
               "--optimizer", optimizer, "--device", args.device, "--iterations", str(args.iterations),
               "--weights", args.weights]
    if args.loss_scale is not None:
        command += ["--loss-scale", str(args.loss_scale)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.autocast != "off":
        command += ["--autocast", args.autocast]
    if args.channels_last:
        command.append("--channels-last")
    if args.batch > 1:
        command += ["--batch", str(args.batch)]
    if args.probe_sizes:
        command += ["--probe-sizes", *map(str, args.probe_sizes)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"measurement at {size} px ({optimizer}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| size | batch | optimizer | activations MiB | exact MiB | fitted constant MiB | fitted per activation "
        "| L-BFGS pairs | predicted raw MiB | predicted +10% MiB | measured MiB | raw error | +10% covers | "
        "predicted s/it | measured s/it |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r.get('batch', 1)} | {r['optimizer']} | {r['activation_bytes'] / MIB:.0f} | {r['exact_bytes'] / MIB:.1f} | "
            f"{r['model']['constant_bytes'] / MIB:.1f} | {r['model']['per_activation']:.3f} | "
            f"{'-' if r['lbfgs_pairs'] is None else r['lbfgs_pairs']} | "
            f"{r['predicted_raw_bytes'] / MIB:.0f} | {r['predicted_padded_bytes'] / MIB:.0f} | "
            f"{r['measured_bytes'] / MIB:.0f} | {100 * r['raw_error']:+.1f}% | "
            f"{'yes' if r['padded_covers'] else '**no**'} | {r['predicted_s_per_it']:.3f} | "
            f"{r['measured_s_per_it']:.3f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    errors = [abs(r["raw_error"]) for r in rows]
    within = sum(e <= TARGET for e in errors)
    covered = sum(r["padded_covers"] for r in rows)
    return (f"raw prediction within {TARGET:.0%}: {within} of {len(rows)} (worst {100 * max(errors):.1f}%, "
            f"median {100 * statistics.median(errors):.1f}%); padded prediction at or above the measurement: "
            f"{covered} of {len(rows)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="long sides in px (default 128 256 512 on cpu, 256 512 1024 2048 on cuda)")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--iterations", type=int, default=10, help="iterations of the measured run (default 10)")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per size and optimizer (default 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    parser.add_argument("--weights", default="random", help="random | imagenet | a .pth file (default random)")
    parser.add_argument("--loss-scale", type=float,
                        help="multiply content and style weights (default 1e4 with random weights, else 1)")
    parser.add_argument("--autocast", choices=("off", "bf16", "fp16"), default="off",
                        help="precision of the measured run (the probes stay fp32, as in the daemon)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last layout for the measured run")
    parser.add_argument("--batch", type=int, default=1,
                        help="measure N runs of the size as one batch, against what the scheduler books for them")
    parser.add_argument("--probe-sizes", type=int, nargs=2, help="replace measure.PROBE_SIZES for the device")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed to one measurement")
    parser.add_argument("--json", type=Path, help="write the rows and the environment here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 (L-BFGS keeps no history before its second step)")
    if args.child:
        print(json.dumps(child(args)))
        return 0

    from nst_batch.engine import resolve_device
    from nst_batch.util.errors import DeviceError

    try:
        resolve_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    sizes = args.sizes or DEFAULT_SIZES[kind]
    env = environment(args)
    print(f"# memory model: torch {env['torch']}, {env.get('gpu') or env['cpu']['model']}, device {args.device}, "
          f"{env['threads']} threads, {args.weights} weights, {args.iterations} iterations, "
          f"probe sizes {args.probe_sizes or 'default'}, autocast {args.autocast}"
          f"{', channels-last' if args.channels_last else ''}, batches of {args.batch}", file=sys.stderr)
    rows = []
    for _ in range(args.repeats):
        for size in sizes:
            for optimizer in args.optimizers:
                started = time.perf_counter()
                rows.append(measure(args, size, optimizer))
                r = rows[-1]
                print(f"# {size} px {optimizer}: predicted {r['predicted_raw_bytes'] / MIB:.0f} MiB raw, "
                      f"measured {r['measured_bytes'] / MIB:.0f} MiB ({100 * r['raw_error']:+.1f}%) "
                      f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(table(rows))
    print()
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
