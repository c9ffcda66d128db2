"""CorInfoMax-A-inf 784-500-10 on MNIST: M seeds as one ensemble against M sequential runs.

    python benchmarks/ensemble_speed.py [--members 10] [--rows 400] [--test-rows 1000]
                                        [--repeats 3] [--threads 2] [--device cpu]
                                        [--model models/corinfomax_ainf_mnist.toml]

Both sides run the real training loop (neurosim.training: ``Trainer.train_epoch`` once per
seed, ``Ensemble.train_epoch`` once for all seeds) on the first ``--rows`` MNIST training
images (each member shuffles them with its own seed; batch 20, T 30/10, float32) and evaluate
``--test-rows`` test images. Printed: training samples per second (the epochs' training
passes, all members counted) and evaluation samples per second for both, and their ratio;
rounds are interleaved so that other load on a shared machine hits both alike. Uses MNIST
when present (`neurosim data fetch mnist`), random images otherwise; ``--model`` names
another model file (its own dataset, e.g. models/corinfomax_digits.toml).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, mnist_images, synchronize  # noqa: E402

from neurosim.data.dataset import Dataset  # noqa: E402
from neurosim.training import Trainer  # noqa: E402
from neurosim.training.ensemble import Ensemble  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
MODEL = MODELS / "corinfomax_ainf_mnist.toml"


def cpu_flags() -> str:
    """Which of AVX2, AVX-512 and AMX the CPU reports."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    names = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("amx_tile", "AMX")]
    return ", ".join(label for flag, label in names if flag in flags) or "none of AVX2/512/AMX"


def members(model: Path, seeds, data: Dataset, device: str) -> list[Trainer]:
    text = model.read_text()
    trainers = []
    for seed in seeds:
        trainer = Trainer.from_model_text(text, progress=False, base_dir=model.parent,
                                          seed=seed, device=device, metrics=[])
        trainer._dataset = data.to(trainer.config.torch_dtype, device)   # the subset
        trainer.validation = None        # every row of the subset trains (no held-out split)
        trainer._split()
        trainers.append(trainer)
    return trainers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rows", type=int, default=400, help="training rows per epoch")
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--group-size", type=int, default=None,
                        help="members per stacked network (default: as many as fit in half "
                        "the CPU cache)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model.resolve() == MODEL:
        x, y, source = mnist_images(args.rows + args.test_rows)
        data = Dataset("mnist", x[:args.rows], y[:args.rows], x[args.rows:], y[args.rows:], 10,
                       (1, 28, 28))
    else:
        full = Trainer.from_model_file(args.model, progress=False).dataset
        data = Dataset(full.name, full.train_x[:args.rows], full.train_y[:args.rows],
                       full.test_x[:args.test_rows], full.test_y[:args.test_rows],
                       full.n_classes, full.input_shape)
        source = full.name
        args.rows, args.test_rows = len(data.train_x), len(data.test_x)
    seeds = list(range(args.members))
    ensemble = Ensemble(members(args.model, seeds, data, args.device), progress=False,
                        group_size=args.group_size)
    print(f"{args.model.name}, {source}, {args.members} seeds, {args.rows} training "
          f"rows per member and epoch (batch {ensemble.members[0].config.batch_size}), "
          f"{args.test_rows} test rows; "
          f"{cpu_name()} ({cpu_flags()}), {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {args.device}, ensemble groups of "
          f"{[part.stop - part.start for part, _ in ensemble.groups]}", flush=True)
    sequential = members(args.model, seeds, data, args.device)
    train = {"ensemble": [], "sequential": []}
    test = {"ensemble": [], "sequential": []}
    with torch.inference_mode():
        for _ in range(args.repeats):
            rows = ensemble.train_epoch()
            train["ensemble"].append(rows[0]["train_seconds"])
            test["ensemble"].append(rows[0]["seconds"] - rows[0]["train_seconds"])
            seconds = [0.0, 0.0]
            for trainer in sequential:
                row = trainer.train_epoch()
                seconds[0] += row["train_seconds"]
                seconds[1] += row["seconds"] - row["train_seconds"]
            synchronize(args.device)
            train["sequential"].append(seconds[0])
            test["sequential"].append(seconds[1])
    for what, times, rows in (("training", train, args.rows), ("evaluation", test,
                                                              args.test_rows)):
        samples = rows * args.members
        rate = {k: samples / statistics.median(v) for k, v in times.items()}
        for name, values in times.items():
            print(f"  {what:10s} {name:10s} {rate[name]:8.1f} samples/s (median of "
                  f"{len(values)}; rounds: {', '.join(f'{samples / t:.1f}' for t in values)})")
        print(f"  {what:10s} ensemble / sequential: {rate['ensemble'] / rate['sequential']:.2f}x",
              flush=True)
    check = max(float((a.net.weights[n] - b.net.weights[n]).abs().max())
                for a, b in zip(ensemble.members, sequential) for n in a.net.weights)
    print(f"  largest weight difference, ensemble member vs its separate run: {check:.2e} "
          "(float32)")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"  ({time.perf_counter() - start:.0f} s in all)")
