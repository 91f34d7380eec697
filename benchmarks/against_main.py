"""Seconds per engine iteration of this tree against another checkout (say, main before a change),
measured paired: one fresh process per measurement, the two trees alternating, in one run.

    .venv/bin/python benchmarks/against_main.py --other /tmp/main-checkout [--size 256] [--iterations 30]
        [--rounds 3] [--optimizers lbfgs adam] [--json out.json]

Each tree runs its own defaults (random VGG-19 weights, the same images and seed), so what is
compared is what a run costs with each tree's engine as it ships.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from nst_batch.engine import StyleParams, load_network, stylize
network, _ = load_network("vgg19", "random")
generator = torch.Generator().manual_seed(0)
content, style = torch.rand((2, 1, 3, {size}, {size}), generator=generator)
params = StyleParams(image_size={size}, iterations={iterations}, optimizer={optimizer!r}, seed=1, early_stop_tol=0)
history = stylize(network, content, [style], params).history
# the first iteration also computes the targets: time the others
print((history[-1].elapsed_s - history[0].elapsed_s) / (len(history) - 1))
"""


def measure(root: Path, size: int, iterations: int, optimizer: str, threads: int) -> float:
    code = CHILD.format(root=str(root), size=size, iterations=iterations, optimizer=optimizer, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = {"this": ROOT, "other": args.other.resolve()}
    report = {"size": args.size, "iterations": args.iterations, "other": str(trees["other"]), "rows": []}
    for optimizer in args.optimizers:
        times: dict[str, list[float]] = {"this": [], "other": []}
        for round_ in range(args.rounds):
            order = ["this", "other"] if round_ % 2 == 0 else ["other", "this"]
            for name in order:
                times[name].append(measure(trees[name], args.size, args.iterations, optimizer, args.threads))
        this, other = statistics.median(times["this"]), statistics.median(times["other"])
        row = {"optimizer": optimizer, "this_s_per_it": this, "other_s_per_it": other, "ratio": this / other,
               "this_all": times["this"], "other_all": times["other"]}
        report["rows"].append(row)
        print(f"{optimizer}: this {this:.4f} s/it, other {other:.4f} s/it, ratio {this / other:.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
