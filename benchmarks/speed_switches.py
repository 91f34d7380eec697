"""Seconds per iteration with each speed switch on and off, and what each does to quality.

For every optimizer and combination of switches (bf16 autocast, channels-last, torch.compile;
on a GPU also fp16), one stylize() run of --iterations at --size px on the same seed gives both figures:
the median seconds per iteration (leaving out the first iterations, which include setup and
compiling) and
the final total loss, compared with the fp32 run. A switch passes when that loss stays within
1% of fp32's (the rule nst-batch's `performance: auto` follows).

    python benchmarks/speed_switches.py                 # CPU, 256 px, adam and lbfgs
    python benchmarks/speed_switches.py --device cuda --size 512 --json gpu_speed.json
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch

from nst_batch.engine import Speed, StyleParams, load_network, resolve_device, stylize

CROWSONKB_CPU_ADAM_S = 0.77  # crowsonkb/style-transfer-pytorch, 256 px, Adam, this kind of 2-core machine
WARMUP = 3


def switches(device_type: str) -> dict[str, Speed]:
    choices = {"fp32": Speed(), "channels_last": Speed(None, True), "bf16": Speed("bf16"),
               "bf16+channels_last": Speed("bf16", True), "compile": Speed(compile=True)}
    if device_type == "cuda":
        choices["fp16"] = Speed("fp16")
    return choices


def measure(network, device, optimizer: str, speed: Speed, size: int, iterations: int) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(0)
    content = torch.rand((1, 3, size * 3 // 4, size), generator=generator)
    style = torch.rand((1, 3, size, size), generator=generator)
    params = StyleParams(image_size=size, iterations=iterations, optimizer=optimizer, seed=1, early_stop_tol=0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    history = stylize(network, content, [style], params, speed=speed).history
    gaps = [b.elapsed_s - a.elapsed_s for a, b in zip(history[WARMUP:], history[WARMUP + 1 :])]
    return statistics.median(gaps), history[-1].total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--optimizers", nargs="+", default=["adam", "lbfgs"])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: every core)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    network, info = load_network("vgg19", "random")
    network.to(device)
    rows = []
    for optimizer in args.optimizers:
        reference = None
        for name, speed in switches(device.type).items():
            for module in network.layers.values():  # each row starts from the plain layout
                module.to(memory_format=torch.contiguous_format)
            seconds, loss = measure(network, device, optimizer, speed, args.size, args.iterations)
            reference = loss if reference is None else reference
            change = (loss - reference) / reference
            rows.append({"optimizer": optimizer, "switches": name, "s_per_it": seconds, "final_loss": loss,
                         "loss_change": change, "within_1pct": abs(change) <= 0.01})
            print(f"{optimizer:5} {name:20} {seconds:.3f} s/it  loss {loss:.4g} ({change * 100:+.2f}%)", flush=True)

    print(f"\n{args.size} px, {args.iterations} iterations, {torch.get_num_threads()} threads on {device}, "
          f"weights {'pretrained' if info.pretrained else 'random'}")
    print("| optimizer | switches | s/it | speed-up | final loss vs fp32 | within 1% |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        base = next(r for r in rows if r["optimizer"] == row["optimizer"] and r["switches"] == "fp32")
        print(f"| {row['optimizer']} | {row['switches']} | {row['s_per_it']:.3f} | {base['s_per_it'] / row['s_per_it']:.2f}x "
              f"| {row['loss_change'] * 100:+.2f}% | {'yes' if row['within_1pct'] else 'no'} |")
    if device.type == "cpu":
        print(f"\ncrowsonkb/style-transfer-pytorch on this kind of machine: {CROWSONKB_CPU_ADAM_S} s/it (Adam, 256 px)")
    if args.json:
        environment = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": str(device),
                       "threads": torch.get_num_threads(), "cores": os.cpu_count(), "machine": platform.processor(),
                       "loadavg": os.getloadavg(), "size": args.size, "iterations": args.iterations}
        with open(args.json, "w") as file:
            json.dump({"environment": environment, "rows": rows}, file, indent=2)


if __name__ == "__main__":
    main()
