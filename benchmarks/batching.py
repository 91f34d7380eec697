"""Whether batching pays: N same-shape transfers through stylize_batch() against the same N
run one after another with stylize().

For each optimizer and batch size N this builds N distinct members (their own random content
and style images and seeds, content 3:4 like speed_switches.py, early stop off) and times,
wall clock and synchronized on a GPU:

* **batched**: one stylize_batch() call on all N, one shared forward and backward pass per
  iteration, each member with its own optimizer (an Adam state, or an L-BFGS history);
* **serial**: the same N members, one stylize() call each.

Both include computing each member's content and style targets, as a real job does; loading
the network does not count, and an untimed 2-iteration run of every batch shape (N, and 1 for
the serial runs) comes first so cuDNN/oneDNN set-up is not timed (cudnn.benchmark is on for
cuda). A row reports seconds per member-iteration both ways, the speed-up serial / batched, the
results per hour a 300-iteration job at this size would get batched, and whether every batched
member ended on its serial counterpart's final total loss (within 1e-4 relative for Adam,
1e-3 for L-BFGS, whose history amplifies the rounding differences a batch's kernels bring).

    python benchmarks/batching.py                       # CPU, 128 px, 20 iterations, N = 1 2 4 8
    python benchmarks/batching.py --threads 1 --batch-sizes 1 2 4 --json batching_cpu.json
    python benchmarks/batching.py --device cuda --size 512 --iterations 300 --batch-sizes 1 4 8 16 32
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nst_batch.engine import Member, StyleParams, load_network, resolve_device, stylize, stylize_batch  # noqa: E402
from nst_batch.util.errors import DeviceError, NstBatchError  # noqa: E402

JOB_ITERATIONS = 300  # the job the results-per-hour figure is projected for
WARMUP_ITERATIONS = 2
TOLERANCE = {"adam": 1e-4, "lbfgs": 1e-3}  # relative difference of final total losses


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_members(optimizer: str, n: int, size: int, iterations: int) -> list[Member]:
    """N distinct transfers of one shape: their own images (from a seeded generator) and seeds."""
    generator = torch.Generator().manual_seed(n)
    members = []
    for i in range(n):
        content = torch.rand((1, 3, size * 3 // 4, size), generator=generator)
        style = torch.rand((1, 3, size, size), generator=generator)
        params = StyleParams(image_size=size, iterations=iterations, optimizer=optimizer, seed=i + 1, early_stop_tol=0)
        members.append(Member(content, [style], params))
    return members


def final_losses(outcomes: list) -> list[float]:
    for outcome in outcomes:
        if isinstance(outcome, NstBatchError):
            raise outcome
    return [outcome.history[-1].total for outcome in outcomes]


def run_batched(network, device: torch.device, members: list[Member]) -> tuple[float, list[float]]:
    """Wall seconds of one stylize_batch() on all members, and each member's final total loss."""
    sync(device)
    start = time.perf_counter()
    outcomes = stylize_batch(network, members)
    sync(device)
    return time.perf_counter() - start, final_losses(outcomes)


def run_serial(network, device: torch.device, members: list[Member]) -> tuple[float, list[float]]:
    """Wall seconds of one stylize() per member in turn, and each member's final total loss."""
    sync(device)
    start = time.perf_counter()
    outcomes = [stylize(network, m.content, m.styles, m.params) for m in members]
    sync(device)
    return time.perf_counter() - start, final_losses(outcomes)


def warm_up(network, device: torch.device, members: list[Member]) -> None:
    """A short untimed run of this batch shape, so kernel selection and allocation are not timed."""
    short = [Member(m.content, m.styles, m.params.model_copy(update={"iterations": WARMUP_ITERATIONS}))
             for m in members]
    run_batched(network, device, short)


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def measure(network, device: torch.device, optimizer: str, n: int, size: int, iterations: int) -> dict:
    members = make_members(optimizer, n, size, iterations)
    warm_up(network, device, members[:1])
    warm_up(network, device, members)
    batched_s, batched_losses = run_batched(network, device, members)
    serial_s, serial_losses = run_serial(network, device, members)
    worst = max(relative_difference(b, s) for b, s in zip(batched_losses, serial_losses))
    member_iterations = n * iterations
    batched_per_it, serial_per_it = batched_s / member_iterations, serial_s / member_iterations
    return {
        "optimizer": optimizer,
        "n": n,
        "batched_s": batched_s,
        "serial_s": serial_s,
        "batched_s_per_member_it": batched_per_it,
        "serial_s_per_member_it": serial_per_it,
        "speed_up": serial_s / batched_s,
        "results_per_hour": 3600 / (batched_per_it * JOB_ITERATIONS),
        "serial_results_per_hour": 3600 / (serial_per_it * JOB_ITERATIONS),
        "max_loss_difference": worst,
        "same_results": worst <= TOLERANCE[optimizer],
        "loadavg": os.getloadavg(),
    }


def environment(device: torch.device, args: argparse.Namespace, pretrained: bool) -> dict:
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "loadavg": os.getloadavg(),
        "size": args.size,
        "iterations": args.iterations,
        "weights": args.weights,
        "pretrained": pretrained,
        "job_iterations": JOB_ITERATIONS,
        "tolerance": TOLERANCE,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


def table(rows: list[dict]) -> str:
    lines = [
        f"| optimizer | N | batched s | serial s | batched s/member-it | serial s/member-it | speed-up "
        f"| results/h ({JOB_ITERATIONS} it) | same results |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['n']} | {r['batched_s']:.2f} | {r['serial_s']:.2f} "
            f"| {r['batched_s_per_member_it']:.4f} | {r['serial_s_per_member_it']:.4f} | {r['speed_up']:.2f}x "
            f"| {r['results_per_hour']:.0f} | {'yes' if r['same_results'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    parser.add_argument("--size", type=int, default=128, help="long side in px (default 128)")
    parser.add_argument("--iterations", type=int, default=20, help="iterations of every transfer (default 20)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="values of N (default 1 2 4 8)")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(TOLERANCE), default=["adam", "lbfgs"],
                        help="adam | lbfgs (default both)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--weights", default="random", help="random | imagenet | a .pth file (default random)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1:
        parser.error("batch sizes must be at least 1")

    try:
        device = resolve_device(args.device)
    except DeviceError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    network, info = load_network("vgg19", args.weights)
    network.to(device)

    rows = []
    for optimizer in args.optimizers:
        for n in args.batch_sizes:
            row = measure(network, device, optimizer, n, args.size, args.iterations)
            rows.append(row)
            print(f"{optimizer:5} N={n:<3} batched {row['batched_s']:.2f} s  serial {row['serial_s']:.2f} s  "
                  f"speed-up {row['speed_up']:.2f}x  max loss difference {row['max_loss_difference']:.1e}  "
                  f"load {row['loadavg'][0]:.1f}", file=sys.stderr, flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        env = environment(device, args, info.pretrained)
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")
    print(f"\n{args.size} px, {args.iterations} iterations, {torch.get_num_threads()} threads on {device}, "
          f"weights {'pretrained' if info.pretrained else 'random (not pretrained)'}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
