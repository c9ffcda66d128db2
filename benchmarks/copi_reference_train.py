"""Train the plain reference COPI (authors' style) on MNIST, to compare neurosim's runs with it.

    python benchmarks/copi_reference_train.py --credit fa [--alpha 1000] [--epochs 3]
        [--output-derivative] [--seed 42] [--threads 1] [--json PATH]

The network is benchmarks/copi_speed.py's ReferenceCopi (784-500x6-10, R in front of every
layer, eta = eta_R = 1e-3, batch 50, float32, Xavier-normal W and B), trained as the authors'
training loop does (nasiryahm/ConstrainedParameterInference, copi/utils.py): epoch 0 trains R
only, the data are taken in file order in epoch 0 and reshuffled after every epoch. After each
epoch it prints the test accuracy, the largest |W| and the mean |off-diagonal correlation| of
every R's output and input over the test set (uncentred, as neurosim's `decorrelation`
metric), and stops as soon as a weight is not finite. It answers two questions neurosim's own
runs raise: does the published alpha diverge with FA credit in the authors' algorithm too, and
how far does one R-only epoch decorrelate each layer there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copi_speed import BATCH, SIZES, ReferenceCopi  # noqa: E402
from timing import cpu_name  # noqa: E402

from neurosim.data import load_dataset  # noqa: E402
from neurosim.plasticity.copi import mean_offdiagonal_correlation  # noqa: E402


@torch.no_grad()
def evaluate(ref: ReferenceCopi, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Test accuracy and, per R_l, the off-diagonal correlation of its output and input."""
    correct = 0
    out_m = [None] * len(ref.decor)
    in_m = [None] * len(ref.decor)
    for i in range(0, len(x), 1000):
        yb = x[i:i + 1000]
        for l, (r, w) in enumerate(zip(ref.decor, ref.fwd)):
            xb = r(yb)
            for store, v in ((out_m, xb), (in_m, yb)):
                p = v.double().T @ v.double()
                store[l] = p if store[l] is None else store[l] + p
            a = w(xb)
            yb = ref.act(a)
        correct += int((a.argmax(1) == y[i:i + 1000]).sum())
    ratios = []
    for o, n in zip(out_m, in_m):
        before, after = mean_offdiagonal_correlation(n), mean_offdiagonal_correlation(o)
        ratios.append({"offdiag_in": before, "offdiag": after, "drop": before / after})
    return {"test_accuracy": correct / len(x), "layers": ratios}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--credit", choices=("bp", "fa"), default="fa")
    parser.add_argument("--alpha", type=float, default=1000.0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs, the R-only one included")
    parser.add_argument("--output-derivative", action="store_true",
                        help="multiply the output error by f'(a_L), as the authors' code does")
    parser.add_argument("--seed", type=int, default=42, help="the authors' configs use 42")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the per-epoch results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    ds = load_dataset("mnist")
    x_train, y_train = ds.train_x.float(), ds.train_y
    x_test, y_test = ds.test_x.float(), ds.test_y
    ref = ReferenceCopi(SIZES, alpha=args.alpha, seed=args.seed, credit=args.credit,
                        output_derivative=args.output_derivative)
    print(f"reference COPI-{args.credit.upper()} {'-'.join(map(str, SIZES))}, alpha "
          f"{args.alpha:g}, output f'(a_L) {args.output_derivative}, seed {args.seed}; "
          f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}", flush=True)
    history = []
    steps = len(x_train) // BATCH
    for epoch in range(args.epochs):
        ref.update_w = epoch > 0
        start = time.perf_counter()
        diverged = None
        for b in range(steps):
            xb = x_train[b * BATCH:(b + 1) * BATCH]
            tb = TF.one_hot(y_train[b * BATCH:(b + 1) * BATCH], SIZES[-1]).float()
            ref.train_step(xb, tb)
            if b % 20 == 19 and not all(torch.isfinite(w.weight).all() for w in ref.fwd):
                diverged = b + 1
                break
        record = {"epoch": epoch, "seconds": time.perf_counter() - start,
                  "max_abs_W": [float(w.weight.abs().max()) for w in ref.fwd]}
        if diverged:
            record["diverged_at_step"] = diverged
            print(f"epoch {epoch}: a weight is not finite by step {diverged}", flush=True)
            history.append(record)
            break
        record.update(evaluate(ref, x_test, y_test))
        history.append(record)
        drops = " ".join(f"{d['drop']:.1f}x" for d in record["layers"])
        print(f"epoch {epoch} ({'R only' if epoch == 0 else 'W and R'}): test "
              f"{100 * record['test_accuracy']:.2f} %, max |W| per layer "
              f"{' '.join(f'{m:.3g}' for m in record['max_abs_W'])}; decorrelation per R "
              f"(offdiag_in / offdiag) {drops}  [{record['seconds']:.0f} s]", flush=True)
        permutation = torch.from_numpy(np.random.permutation(len(x_train)))
        x_train, y_train = x_train[permutation], y_train[permutation]
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "history": history},
                                              indent=2))


if __name__ == "__main__":
    main()
