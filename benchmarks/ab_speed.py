"""Interleaved A/B timing of CorInfoMax training and evaluation between two checkouts of
neurosim (e.g. before and after a refactoring), on the same machine in one run:

    git worktree add /tmp/before <commit>
    python benchmarks/ab_speed.py --before /tmp/before --after . [--rounds 8]

Each round runs one fresh process per checkout (the order alternates between rounds), each
timing the MNIST-settings model (784-500-10, T 30/10, gs-euler, float32, batch 20) on the
same synthetic binary images: ms per training sample (best of 3 passes over
--train-samples) and ms per test sample (evaluation batch 1000). Prints per-round numbers,
the medians and the after/before ratios; --json writes them. ``--eager`` runs both with
NEUROSIM_FUSED=off and ``--full-precision`` without the model file's ``lateral_precision``
line (both checkouts then run the eager float32 path: a regression check of that path)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = r"""
import json, sys, time, torch
from pathlib import Path
from neurosim.training import Trainer
torch.set_num_threads(int(sys.argv[3]))
n_train, text = int(sys.argv[1]), Path(sys.argv[2]).read_text()
build = getattr(Trainer, "from_model_text", Trainer)
trainer = build(text, progress=False)
g = torch.Generator().manual_seed(0)
x = (torch.rand(n_train + 4000, 784, generator=g) > 0.8).float()
y = torch.nn.functional.one_hot(torch.randint(0, 10, (len(x),), generator=g), 10).float()
p, gen = trainer.protocol, torch.Generator().manual_seed(0)
out = {}
with torch.inference_mode():
    for i in range(0, 400, 20):
        p.train_step(x[i:i + 20], y[i:i + 20], gen)
    best = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, n_train, 20):
            p.train_step(x[i:i + 20], y[i:i + 20], gen)
        best.append((time.perf_counter() - t) / n_train * 1e3)
    out["train_ms_b20"] = min(best)
    p.predict(x[:1000])
    best = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, 3000, 1000):
            p.predict(x[i:i + 1000])
        best.append((time.perf_counter() - t) / 3000 * 1e3)
    out["test_ms_b1000"] = min(best)
print(json.dumps(out))
"""


def measure(tree: Path, n_train: int, threads: int, eager: bool = False,
            full_precision: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(threads)}
    if eager:
        env["NEUROSIM_FUSED"] = "off"
    model = tree / "models" / "corinfomax_ainf_mnist.toml"
    if full_precision:
        text = "".join(line for line in model.read_text().splitlines(keepends=True)
                       if not line.lstrip().startswith("lateral_precision"))
        model = Path(tempfile.mkdtemp()) / "corinfomax_ainf_mnist.toml"
        model.write_text(text)
    done = subprocess.run([sys.executable, "-c", PROBE, str(n_train), str(model), str(threads)],
                          capture_output=True, text=True, env=env, cwd=tree, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, type=Path)
    parser.add_argument("--after", required=True, type=Path)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eager", action="store_true", help="NEUROSIM_FUSED=off for both")
    parser.add_argument("--full-precision", action="store_true",
                        help="drop the model file's lateral_precision line for both")
    parser.add_argument("--json")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs = {name: [] for name in trees}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in order:
            runs[name].append(measure(trees[name], args.train_samples, args.threads,
                                      args.eager, args.full_precision))
        print(f"round {r + 1}: " + "  ".join(
            f"{name} train {runs[name][-1]['train_ms_b20']:.4f} test "
            f"{runs[name][-1]['test_ms_b1000']:.4f}" for name in trees), flush=True)
    summary = {}
    for key in ("train_ms_b20", "test_ms_b1000"):
        med = {name: statistics.median(run[key] for run in runs[name]) for name in trees}
        summary[key] = {**med, "ratio_after_over_before": med["after"] / med["before"]}
        print(f"{key}: median before {med['before']:.4f} ms, after {med['after']:.4f} ms, "
              f"after/before {med['after'] / med['before']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
