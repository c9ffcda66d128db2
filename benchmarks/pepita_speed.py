"""PEPITA on MNIST, 784-1024-10, batch 64: milliseconds per training sample.

    python benchmarks/pepita_speed.py [--train-samples 12800] [--threads 2] [--repeats 5]

Side by side in one run (float32, dropout keep 0.9 on the hidden layer, momentum 0.9, lr 0.1):

- neurosim: the engine's path, ``protocol.train_step(x, target, generator, lr_scale)`` of the
  "pepita" protocol on a network compiled from the model text below (two feed-forward sweeps,
  the "pepita" rule on both projections);
- reference: a straightforward batched implementation in the style of the authors' PyTorch
  tutorial (an nn.Module of nn.Linear(bias=False) layers, a forward pass with a dropout mask,
  a second forward pass on the modulated input with the same mask, the updates and momentum
  written out by hand, the monitoring loss computed every step);
- GEMM floor: only the matrix products one step needs, on preallocated outputs, timed alone:
  two forward passes (64x784 @ 784x1024, 64x1024 @ 1024x10), the input modulation
  (64x10 @ 10x784) and the weight-update products (1024x64 @ 64x784, 10x64 @ 64x1024).

The three are timed in interleaved rounds (each round times each once, so other load on a
shared machine hits them alike). Prints the best and median of the repeats, the ratios
neurosim / reference and floor / neurosim, the projected time of a 100-epoch MNIST run
(60,000 x 100 x ms per sample). First it checks in float64 that neurosim and the reference
make the same updates from the same weights (dropout off, and dropout on with the masks drawn
alike from the same generator seeds), so that the timings compare equal work. Uses real
MNIST images when present (`neurosim data fetch mnist`), random images in [0, 1] otherwise
(the speed does not depend on the pixels' source).
"""
from __future__ import annotations

import os

# the reference runs as its authors' code would, under the system's allocator: neurosim's
# training keeps large freed blocks in malloc's heap (neurosim.training.allocator), which
# would speed up the reference's large temporaries too (set NEUROSIM_MALLOC= to allow it)
os.environ.setdefault("NEUROSIM_MALLOC", "system")

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, mnist_images, timed  # noqa: E402

BATCH, SIZES, LR, MOMENTUM, DROP = 64, (784, 1024, 10), 0.1, 0.9, 0.1
EPOCH_SAMPLES, EPOCHS = 60_000, 100

MODEL_TEXT = f"""
[network]
name = "pepita_speed"

[[population]]
name = "x"
type = "input"
size = {SIZES[0]}

[[population]]
name = "h1"
type = "pyramidal"
size = {SIZES[1]}
leak = 0.0
basal = 1.0
apical = 0.0
activation = "relu"

[[population]]
name = "out"
type = "pyramidal"
size = {SIZES[2]}
leak = 0.0
basal = 1.0
apical = 0.0
activation = "softmax"

[[projection]]
name = "w1"
source = "x"
target = "h1"
compartment = "basal"
init = "he_uniform"
rules = [{{ type = "pepita", lr = {LR}, momentum = {MOMENTUM} }}]

[[projection]]
name = "w2"
source = "h1"
target = "out"
compartment = "basal"
init = "he_uniform"
rules = [{{ type = "pepita", lr = {LR}, momentum = {MOMENTUM} }}]

[data]
dataset = "mnist"

[training]
batch_size = {BATCH}
threads = 2

[protocol]
type = "pepita"
dropout = {DROP}
"""


# ----------------------------------------------------------------------------- data, machine






# ----------------------------------------------------------------------------- reference
class ReferencePepita(nn.Module):
    """784-1024-10 PEPITA written plainly in the style of the authors' tutorial (for timing and
    for the agreement check): nn.Linear layers without bias, He-uniform weights, the fixed
    matrix B (the paper's F, d x C), dropout masks built per batch and shared by both passes,
    updates dW = -(h - h_mod)^T x_mod (hidden) and -e_mod^T h_mod (output), and momentum
    v <- gamma v + eta dW / batch, W <- W + v. The masks are keep = U(0, 1) >= p_drop, scaled
    by 1 / (1 - p_drop), drawn from the given generator (as neurosim draws them, so the
    agreement check can give both the same masks)."""

    def __init__(self, sizes=SIZES, eta=LR, gamma=MOMENTUM, drop=DROP, dtype=torch.float32,
                 device="cpu", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(sizes[0], sizes[1], bias=False, dtype=dtype, device=device)
        self.fc2 = nn.Linear(sizes[1], sizes[2], bias=False, dtype=dtype, device=device)
        with torch.no_grad():
            for fc in (self.fc1, self.fc2):
                limit = (6.0 / fc.in_features) ** 0.5
                nn.init.uniform_(fc.weight, -limit, limit)
        limit = (6.0 / sizes[0]) ** 0.5
        self.B = (torch.rand(sizes[0], sizes[2], dtype=dtype, device=device) * 2 - 1) \
            * limit * 0.05
        self.eta, self.gamma, self.drop = eta, gamma, drop
        self.velocity = [torch.zeros_like(fc.weight) for fc in (self.fc1, self.fc2)]

    def forward(self, x, masks=None):
        """(hidden activity after relu and dropout, output probabilities)."""
        h = TF.relu(self.fc1(x))
        if masks is not None:
            h = h * masks[0]
        return h, TF.softmax(self.fc2(h), dim=1)

    @torch.no_grad()
    def train_step(self, x, target, generator):
        """One PEPITA step on a batch (rows are samples, target one-hot); returns the
        monitoring loss (cross-entropy of the probabilities, as a Python float)."""
        masks = None
        if self.drop > 0:
            keep = torch.rand(x.shape[0], self.fc1.out_features, generator=generator,
                              dtype=x.dtype, device=x.device) >= self.drop
            masks = [keep.to(x.dtype) / (1.0 - self.drop)]
        h, out = self(x, masks)                        # pass 1
        error = out - target
        mod_x = x + error @ self.B.T                   # x_mod = x + F e
        mod_h, mod_out = self(mod_x, masks)            # pass 2, same masks
        mod_error = mod_out - target
        deltas = [-(h - mod_h).T @ mod_x, -mod_error.T @ mod_h]
        for fc, v, delta in zip((self.fc1, self.fc2), self.velocity, deltas):
            v.mul_(self.gamma).add_(delta, alpha=self.eta / x.shape[0])
            fc.weight += v
        return float(-(target * out.clamp_min(1e-30).log()).sum(1).mean())


# ----------------------------------------------------------------------------- GEMM floor
def gemm_floor_step(dtype=torch.float32, device="cpu"):
    """A closure doing only the matrix products of one PEPITA step, into preallocated
    outputs (random operands of the right shapes)."""
    d, n, c = SIZES
    g = torch.Generator(device=device).manual_seed(1)
    r = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype, device=device)  # noqa: E731
    x, w1, w2, e, F = r(BATCH, d), r(n, d), r(c, n), r(BATCH, c), r(d, c)
    h, out, x_mod, dh = r(BATCH, n), r(BATCH, c), r(BATCH, d), r(BATCH, n)
    dw1, dw2 = r(n, d), r(c, n)

    def step():
        for _ in range(2):                                 # standard and modulated passes
            torch.mm(x, w1.T, out=h)                       # 64x784 @ 784x1024
            torch.mm(h, w2.T, out=out)                     # 64x1024 @ 1024x10
        torch.mm(e, F.T, out=x_mod)                        # 64x10 @ 10x784 (modulation)
        torch.mm(dh.T, x_mod, out=dw1)                     # 1024x64 @ 64x784
        torch.mm(e.T, h, out=dw2)                          # 10x64 @ 64x1024
    return step


# ----------------------------------------------------------------------------- timing


def neurosim_protocol(dtype="float32", device="cpu", **overrides):
    """The bound "pepita" protocol and its trainer, from MODEL_TEXT."""
    from neurosim.training import Trainer
    trainer = Trainer.from_model_text(MODEL_TEXT, progress=False, dtype=dtype, device=device,
                                      **overrides)
    return trainer.protocol, trainer


def agreement(x, labels, device, steps=3) -> dict:
    """Largest difference between neurosim's and the reference's weights after ``steps``
    float64 steps from the same weights and F, relative to the size of the change the steps
    made; with dropout off and (same generator seeds, masks drawn alike) on."""
    result = {}
    for drop in (0.0, DROP):
        protocol, trainer = neurosim_protocol("float64", device, dropout=drop)
        net, names = trainer.net, [q.name for q in protocol.chain]
        ref = ReferencePepita(drop=drop, dtype=torch.float64, device=device)
        with torch.no_grad():
            for fc, name in zip((ref.fc1, ref.fc2), names):
                fc.weight.copy_(net.weights[name])
            ref.B = protocol.F.detach().clone().to(torch.float64)
        start = [net.weights[name].clone() for name in names]
        xs = x[:steps * BATCH].to(device, torch.float64)
        ts = TF.one_hot(labels[:steps * BATCH], SIZES[2]).to(device, torch.float64)
        with torch.inference_mode():
            for k in range(steps):
                xb, tb = xs[k * BATCH:(k + 1) * BATCH], ts[k * BATCH:(k + 1) * BATCH]
                protocol.train_step(xb, tb, torch.Generator(device=device).manual_seed(k), 1.0)
                ref.train_step(xb, tb, torch.Generator(device=device).manual_seed(k))
        worst = 0.0
        for fc, name, w0 in zip((ref.fc1, ref.fc2), names, start):
            change = float((fc.weight.detach() - w0).abs().max())
            diff = float((fc.weight.detach() - net.weights[name]).abs().max())
            worst = max(worst, diff / change if change else diff)
        result[f"dropout_{drop:g}"] = worst
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=12800,
                        help="samples per timed repeat (a multiple of the batch 64)")
    parser.add_argument("--reference-samples", type=int, default=None,
                        help="samples per repeat of the reference (default: --train-samples)")
    parser.add_argument("--floor-steps", type=int, default=400,
                        help="steps of the GEMM floor per timed repeat")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-neurosim", action="store_true",
                        help="time only the reference and the GEMM floor")
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the float64 agreement check")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    n = max(BATCH, args.train_samples // BATCH * BATCH)
    n_ref = max(BATCH, (args.reference_samples or n) // BATCH * BATCH)
    x_all, y_all, source = mnist_images(max(n, n_ref))
    x_all, y_all = x_all.to(device), y_all.to(device)
    onehot = TF.one_hot(y_all, SIZES[2]).float()
    results = {"source": source, "threads": args.threads, "device": device,
               "cpu": cpu_name(), "torch": torch.__version__, "batch": BATCH,
               "sizes": list(SIZES)}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"PEPITA {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, dropout keep "
          f"{1 - DROP:g}, momentum {MOMENTUM}, lr {LR}; {args.threads} threads on {device} "
          f"({results.get('gpu', results['cpu'])}), torch {torch.__version__}, data: {source}",
          flush=True)

    if not args.skip_neurosim and not args.skip_check:
        check = agreement(x_all.cpu() if device == "cpu" else x_all, y_all, device)
        results["agreement_max_rel_diff"] = check
        print("  float64 agreement, 3 steps from the same weights (max |W_neurosim - W_ref| / "
              "max |W change|): " + ", ".join(f"{k} {v:.2e}" for k, v in check.items()),
              flush=True)

    candidates = []
    if not args.skip_neurosim:
        protocol, _ = neurosim_protocol("float32", device)
        gen_ns = torch.Generator(device=device).manual_seed(0)

        def run_neurosim(count=n):
            with torch.inference_mode():
                for i in range(0, count, BATCH):
                    protocol.train_step(x_all[i:i + BATCH], onehot[i:i + BATCH], gen_ns, 1.0)
        run_neurosim(min(n, 20 * BATCH))                                # warm-up
        candidates.append(("neurosim", run_neurosim, n))

    ref = ReferencePepita(device=device)
    gen_ref = torch.Generator(device=device).manual_seed(0)

    def run_reference(count=n_ref):
        for i in range(0, count, BATCH):
            ref.train_step(x_all[i:i + BATCH], onehot[i:i + BATCH], gen_ref)
    run_reference(min(n_ref, 20 * BATCH))                               # warm-up
    candidates.append(("reference", run_reference, n_ref))

    floor_step = gemm_floor_step(device=device)

    def run_floor(count=args.floor_steps):
        for _ in range(count):
            floor_step()
    run_floor(20)                                                       # warm-up
    candidates.append(("GEMM floor", run_floor, args.floor_steps * BATCH))

    for name, (best, median) in timed(candidates, args.repeats, device).items():
        key = {"GEMM floor": "floor"}.get(name, name)
        results[f"{key}_ms_per_sample"], results[f"{key}_ms_median"] = best, median

    print("  100-epoch MNIST run (60,000 x 100 samples, training steps only):")
    for who in ("neurosim", "reference", "floor"):
        key = f"{who}_ms_per_sample"
        if key in results:
            seconds = EPOCH_SAMPLES * EPOCHS * results[key] / 1e3
            results[f"{who}_100_epochs_s"] = seconds
            print(f"    {who:10s} {seconds / 60:8.1f} min ({seconds / 3600:.2f} h)")
    if "neurosim_ms_per_sample" in results:
        ns = results["neurosim_ms_per_sample"]
        results["neurosim_over_reference"] = ns / results["reference_ms_per_sample"]
        results["floor_over_neurosim"] = results["floor_ms_per_sample"] / ns
        print(f"  neurosim / reference {results['neurosim_over_reference']:.3f} (below 1: "
              f"neurosim faster);  floor / neurosim {results['floor_over_neurosim']:.3f} "
              "(1: all time in the matrix products)")
    results["floor_over_reference"] = (results["floor_ms_per_sample"]
                                       / results["reference_ms_per_sample"])
    print(f"  floor / reference {results['floor_over_reference']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
