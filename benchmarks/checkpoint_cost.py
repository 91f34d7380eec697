"""What a run's checkpoint costs to write, and how often the daemon then writes one.

For each image size and optimizer this builds the state a run would checkpoint: the image, the
optimizer's state (Adam: two moments; L-BFGS: ``--history`` pairs of image-sized tensors, made by
stepping a real ``torch.optim.LBFGS`` on a quadratic, so the structure is torch's own) and
``--frames`` 8-bit progress frames. It then times ``checkpoint.save_checkpoint`` into ``--dir``
(a temporary folder by default: put it on the disk ``state_dir`` is on) and reports the size, the
seconds, and, for each ``--iteration-s`` given, the iterations between checkpoints that
``checkpoint_due`` allows once saving has reached its share (``CHECKPOINT_SHARE``) of the time:
``save_s / share / iteration_s``, or ``checkpoint_every`` when that is more.

    python benchmarks/checkpoint_cost.py                                 # 256 512 px, lbfgs and adam
    python benchmarks/checkpoint_cost.py --dir /var/lib/nst-batch --json out.json
    python benchmarks/checkpoint_cost.py --iteration-s 0.44 2.1 0.01     # CPU 256, CPU 512, a GPU's 512

No network is involved: what is written does not depend on the weights.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nst_batch.daemon.checkpoint import CHECKPOINT_SHARE, save_checkpoint  # noqa: E402
from nst_batch.engine import LossRecord, RunState, StyleParams  # noqa: E402
from nst_batch.results.reel import FrameReel  # noqa: E402


def optimizer_state(optimizer: str, size: int, history: int) -> dict:
    image = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    target = torch.rand_like(image)
    if optimizer == "adam":
        chosen = torch.optim.Adam([image], lr=0.01)
    else:
        chosen = torch.optim.LBFGS([image], lr=0.5, max_iter=1, history_size=history)

    def closure() -> torch.Tensor:
        chosen.zero_grad()
        # badly conditioned and large, so that L-BFGS (absolute thresholds) keeps a pair at every step
        loss = 1e6 * ((image - target) ** 2 * torch.logspace(0, 4, size)).sum()
        loss.backward()
        return loss

    for _ in range(history + 1 if optimizer == "lbfgs" else 3):
        chosen.step(closure)
    return chosen.state_dict()


def measure(optimizer: str, size: int, history: int, frames: int, folder: Path, repeats: int) -> dict:
    state_dict = optimizer_state(optimizer, size, history)
    iterations = 300
    state = RunState(
        seed=0, scale=0, iteration=iterations, image=torch.rand((1, 3, size, size)), optimizer=state_dict,
        history=[LossRecord(i, 1.0, 1.0, 0.0, 2.0, i * 0.1) for i in range(1, iterations + 1)],
    )
    reel = FrameReel()  # as the runner keeps them: bounded, at most 512 px
    for _ in range(frames):
        reel.offer(torch.rand((1, 3, size, size)))
    params = StyleParams(image_size=size, optimizer=optimizer)
    path = folder / f"run-{optimizer}-{size}.pt"
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        assert save_checkpoint(path, state, reel, params)
        seconds.append(time.perf_counter() - began)
    size_bytes = path.stat().st_size
    path.unlink()
    pairs = len(state_dict["state"][0].get("old_dirs", [])) if optimizer == "lbfgs" else 0
    return {"optimizer": optimizer, "size": size, "lbfgs_pairs": pairs, "frames": len(reel),
            "mib": round(size_bytes / 2**20, 1), "save_s": round(statistics.median(seconds), 3),
            "save_s_all": [round(s, 3) for s in seconds]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--optimizers", nargs="+", default=["lbfgs", "adam"], choices=["lbfgs", "adam"])
    parser.add_argument("--history", type=int, default=StyleParams().lbfgs_history)
    parser.add_argument("--frames", type=int, default=50,
                        help="progress frames offered (gif: true keeps about 50; the reel keeps at most 256)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=25, help="checkpoint_every")
    parser.add_argument("--iteration-s", type=float, nargs="+", default=[0.44, 2.1, 0.01],
                        help="seconds per iteration to work out the checkpoint interval for")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        rows = [measure(o, s, args.history, args.frames, Path(folder), args.repeats)
                for s in args.sizes for o in args.optimizers]
    for row in rows:
        row["interval_iterations"] = {
            str(it): max(args.every, round(row["save_s"] / CHECKPOINT_SHARE / it)) for it in args.iteration_s
        }
        intervals = ", ".join(f"{n} it at {it} s/it" for it, n in row["interval_iterations"].items())
        print(f"{row['optimizer']:>5} {row['size']:>4} px: {row['mib']:>7.1f} MiB in {row['save_s']:.3f} s "
              f"({row['lbfgs_pairs']} pairs, {row['frames']} frames); every {intervals}")
    if args.json:
        args.json.write_text(json.dumps({"share": CHECKPOINT_SHARE, "every": args.every, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
