"""COPI-BP on MNIST, 784-500x6-10, batch 50: milliseconds per training sample.

    python benchmarks/copi_speed.py [--steps 200] [--threads 2] [--repeats 5] [--json PATH]

Side by side in one run (float32, a decorrelating R_l in front of every layer, input included;
leaky-ReLU 0.1 hidden layers, linear output, eta = eta_R = 1e-3, alpha = 1000, plain SGD; both
W and R learn, i.e. a step after the R-only first epoch):

- neurosim: the engine's path, ``protocol.train_step(x, target, generator, lr_scale, epoch=1)``
  of the "copi" protocol on the network of models/copi_bp_mnist.toml (its text, unchanged);
- reference: a straightforward batched implementation in the style of the authors' code
  (nasiryahm/ConstrainedParameterInference, copi/copi.py): nn.Linear(bias=False) layers for R
  (identity) and W (Xavier normal), a forward pass keeping x_l and a_l, the BP perturbations
  (alpha (t - a_L), then @ W_l, @ R_l, * f'(a_{l-1})), and the updates written with einsum:
  dW = <(a + delta) x^T> - <x^2> * W and dR = -C_off R with C_off = <x x^T> * (1 - I), the
  n^3 product C_off @ R. Unlike that code the output error is not multiplied by f'(a_L)
  (neurosim's default ``output_derivative = false``), so both make the same updates;
- GEMM floor (reference algorithm): only the matrix products one step of the reference needs,
  on preallocated outputs, timed alone: per layer the forward x R^T and x W^T, the backward
  delta W and delta R (layers 2..L), the update products delta^T x, x^T x and C_off @ R (n^3);
- GEMM floor (neurosim's rule): the same, with the decorrelation step done as neurosim's
  rule does it (neurosim/plasticity/copi.py): C_off R = x^T (x R) / B - diag<x^2> R, two
  B x n x n products in place of x^T x and the n^3 product. (Both floors leave out the one
  product neurosim does beyond them: the credit of the input's linear copy d0, delta_1 W_1,
  which no rule reads; about 3 % of a step's multiply-adds.)

The four are timed in interleaved rounds (each round times each once, so other load on a
shared machine hits them alike). Prints the best and median of the repeats, the ratios
neurosim / reference and floor / neurosim (both floors), the projected time of one MNIST epoch
(60,000 samples) and of 100 epochs (training steps only, every epoch counted as a W-and-R
epoch). First it checks in float64 that neurosim and the reference, from the same weights,
give the same W and R after two steps, so that the timings compare equal work. Uses real
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
import re
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, mnist_images, timed  # noqa: E402

BATCH, SIZES, LR, ALPHA, SLOPE = 50, (784, 500, 500, 500, 500, 500, 500, 10), 1e-3, 1000.0, 0.1
EPOCH_SAMPLES, EPOCHS = 60_000, 100
MODEL_FILE = Path(__file__).resolve().parents[1] / "models" / "copi_bp_mnist.toml"
TRAIN_EPOCH = 1          # epoch 0 is the decorrelation rules' R-only warm-up


# ----------------------------------------------------------------------------- model text
def model_text(sizes=SIZES) -> str:
    """models/copi_bp_mnist.toml's text, with its population sizes set to ``sizes``
    (n_0, ..., n_L: x and d0 get n_0, h_l and d_l get n_l, out gets n_L); unchanged for the
    default sizes. The file's depth is kept: ``sizes`` must have as many entries as it has
    layers + 1."""
    text = MODEL_FILE.read_text()
    depth = len(SIZES) - 1
    if len(sizes) != depth + 1:
        raise ValueError(f"{MODEL_FILE.name} has {depth} layers; give {depth + 1} sizes, got "
                         f"{len(sizes)}.")
    size_of = {"x": sizes[0], "out": sizes[-1]}
    for l in range(depth):
        size_of[f"d{l}"] = sizes[l]
        if l:
            size_of[f"h{l}"] = sizes[l]
    seen = []

    def resize(match):
        seen.append(match.group(2))
        return f"{match.group(1)}{size_of[match.group(2)]}"
    text = re.sub(r'(name = "(\w+)"\s*\ntype = "\w+"\s*\nsize = )\d+', resize, text)
    if sorted(seen) != sorted(size_of):
        raise ValueError(f"{MODEL_FILE.name}: expected populations {sorted(size_of)}, found "
                         f"{sorted(seen)}.")
    return text


def neurosim_protocol(dtype="float32", device="cpu", sizes=SIZES):
    """The bound "copi" protocol and its trainer, from the model file's text."""
    from neurosim.training import Trainer
    trainer = Trainer.from_model_text(model_text(sizes), where=str(MODEL_FILE), progress=False,
                                      dtype=dtype, device=device)
    return trainer.protocol, trainer


def layer_names(sizes=SIZES):
    """(R names, W names) of the model file: r1..rL, w1..wL."""
    depth = len(sizes) - 1
    return [f"r{l}" for l in range(1, depth + 1)], [f"w{l}" for l in range(1, depth + 1)]


# ----------------------------------------------------------------------------- data, machine






# ----------------------------------------------------------------------------- reference
class ReferenceCopi(nn.Module):
    """COPI written plainly in the style of the authors' code (for timing, for the agreement
    check and for benchmarks/copi_reference_train.py): per layer an nn.Linear(bias=False)
    R_l (identity) and W_l (Xavier normal), leaky-ReLU hidden layers, linear output; one step
    is a forward pass keeping x_l and a_l, the perturbations from alpha (t - a_L) (times
    f'(a_L) only with ``output_derivative``), sent down by BP (through W_l and R_l) or by FA
    (``credit="fa"``: fixed Xavier-normal B_l bypassing R), and the updates
    W += lr (<(a + delta) x^T> - <x^2> * W) (skipped while ``update_w`` is False) and
    R += lr (-C_off R), C_off = <x x^T> * (1 - I)."""

    def __init__(self, sizes=SIZES, lr=LR, alpha=ALPHA, slope=SLOPE, dtype=torch.float32,
                 device="cpu", seed=0, credit="bp", output_derivative=False):
        super().__init__()
        if credit not in ("bp", "fa"):
            raise ValueError(f'credit: "bp" or "fa", got {credit!r}')
        torch.manual_seed(seed)
        self.sizes, self.lr, self.alpha, self.slope = tuple(sizes), lr, alpha, slope
        self.credit, self.output_derivative = credit, output_derivative
        self.update_w = True                    # False in the R-only first epoch
        self.decor = nn.ModuleList()
        self.fwd = nn.ModuleList()
        self.bwd = nn.ModuleList()              # FA: fixed B_l (n_l x n_{l+1}), bypassing R
        self.off_diagonal = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            r = nn.Linear(n_in, n_in, bias=False, dtype=dtype, device=device)
            w = nn.Linear(n_in, n_out, bias=False, dtype=dtype, device=device)
            with torch.no_grad():
                nn.init.eye_(r.weight)
                nn.init.xavier_normal_(w.weight)
            self.decor.append(r)
            self.fwd.append(w)
            if credit == "fa":
                b = nn.Linear(n_out, n_in, bias=False, dtype=dtype, device=device)
                with torch.no_grad():
                    nn.init.xavier_normal_(b.weight)
                self.bwd.append(b)
            self.off_diagonal.append(1.0 - torch.eye(n_in, dtype=dtype, device=device))
        self.requires_grad_(False)

    def act(self, a):
        return torch.where(a >= 0, a, self.slope * a)

    def act_prime(self, a):
        # in a's dtype (torch.where of two Python numbers would give float32, 0.1 rounded)
        return torch.where(a >= 0, torch.ones_like(a), torch.full_like(a, self.slope))

    def forward(self, y):
        """(x_l per layer, a_l per layer, the output a_L)."""
        x_vals, a_vals = [], []
        for r, w in zip(self.decor, self.fwd):
            x = r(y)
            a = w(x)
            x_vals.append(x)
            a_vals.append(a)
            y = self.act(a)
        return x_vals, a_vals, a

    def perturbations(self, a_vals, output, target):
        """delta_l per layer, from the output down (computed before any update): BP through
        W_l and R_l, or FA through the fixed B_l; times f'(a_L) at the output only with
        ``output_derivative`` (as the authors' code does)."""
        pert = self.alpha * (target - output)
        if self.output_derivative:
            pert = pert * self.act_prime(output)
        perts = [pert]
        for l in range(len(self.fwd) - 1, 0, -1):
            if self.credit == "bp":
                pert = pert @ self.fwd[l].weight
                pert = pert @ self.decor[l].weight
            else:
                pert = self.bwd[l](pert)
            pert = pert * self.act_prime(a_vals[l - 1])
            perts.append(pert)
        return perts[::-1]

    def update_params(self, x_vals, a_vals, perts):
        for l, (r, w) in enumerate(zip(self.decor, self.fwd)):
            x, batch = x_vals[l], x_vals[l].shape[0]
            if self.update_w:
                dW = (torch.einsum("ni,nj->ij", a_vals[l] + perts[l], x) / batch
                      - torch.einsum("j,ij->ij", (x ** 2).mean(dim=0), w.weight))
                w.weight += self.lr * dW
            corr = torch.einsum("ni,nj->ij", x, x) / batch * self.off_diagonal[l]
            dR = -torch.einsum("ij,jk->ik", corr, r.weight)
            r.weight += self.lr * dR

    @torch.no_grad()
    def train_step(self, x, target):
        """One COPI-BP step on a batch (rows are samples, target one-hot); returns the
        output a_L."""
        x_vals, a_vals, output = self(x)
        perts = self.perturbations(a_vals, output, target)
        self.update_params(x_vals, a_vals, perts)
        return output


# ----------------------------------------------------------------------------- GEMM floors
def gemm_floor_step(decorrelation: str, sizes=SIZES, dtype=torch.float32, device="cpu"):
    """A closure doing only the matrix products of one COPI-BP step, into preallocated
    outputs (random operands of the right shapes). ``decorrelation``: "reference" (C = x^T x,
    then C_off @ R, n^3) or "neurosim" (x R, then x^T (x R): two B x n x n products)."""
    g = torch.Generator(device=device).manual_seed(1)
    r = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype, device=device)  # noqa: E731
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers.append(dict(
            y=r(BATCH, n_in), R=r(n_in, n_in), x=r(BATCH, n_in), W=r(n_out, n_in),
            a=r(BATCH, n_out), delta=r(BATCH, n_out), back=r(BATCH, n_in), down=r(BATCH, n_in),
            dW=r(n_out, n_in), C=r(n_in, n_in), dR=r(n_in, n_in)))

    def step():
        for L in layers:                                        # forward
            torch.mm(L["y"], L["R"].T, out=L["x"])              # B x n_in @ n_in x n_in
            torch.mm(L["x"], L["W"].T, out=L["a"])              # B x n_in @ n_in x n_out
        for L in layers[:0:-1]:                                 # backward, layers L..2
            torch.mm(L["delta"], L["W"], out=L["back"])         # B x n_out @ n_out x n_in
            torch.mm(L["back"], L["R"], out=L["down"])          # B x n_in @ n_in x n_in
        for L in layers:                                        # updates
            torch.mm(L["delta"].T, L["x"], out=L["dW"])         # n_out x B @ B x n_in
            if decorrelation == "reference":
                torch.mm(L["x"].T, L["x"], out=L["C"])          # n_in x B @ B x n_in
                torch.mm(L["C"], L["R"], out=L["dR"])           # n_in^3
            else:
                torch.mm(L["x"], L["R"], out=L["back"])         # B x n_in @ n_in x n_in
                torch.mm(L["x"].T, L["back"], out=L["dR"])      # n_in x B @ B x n_in
    return step


# ----------------------------------------------------------------------------- timing


def copy_weights(protocol, ref, sizes=SIZES) -> None:
    """Give the reference neurosim's current R_l and W_l."""
    net = protocol.net
    r_names, w_names = layer_names(sizes)
    with torch.no_grad():
        for r, w, r_name, w_name in zip(ref.decor, ref.fwd, r_names, w_names):
            r.weight.copy_(net.weights[r_name])
            w.weight.copy_(net.weights[w_name])


def agreement(x, labels, device="cpu", sizes=SIZES, steps=2, batch=BATCH) -> dict:
    """Largest difference between neurosim's and the reference's R and W after ``steps``
    float64 steps on the same batch from the same weights, relative to the size of the change
    the steps made (the worst projection of each kind): {"W": ..., "R": ...}."""
    protocol, trainer = neurosim_protocol("float64", device, sizes)
    net = trainer.net
    ref = ReferenceCopi(sizes, dtype=torch.float64, device=device)
    copy_weights(protocol, ref, sizes)
    r_names, w_names = layer_names(sizes)
    start = {name: net.weights[name].clone() for name in r_names + w_names}
    xb = x[:batch].to(device, torch.float64)
    tb = TF.one_hot(labels[:batch], sizes[-1]).to(device, torch.float64)
    with torch.inference_mode():
        for k in range(steps):
            protocol.train_step(xb, tb, torch.Generator(device=device).manual_seed(k), 1.0,
                                epoch=TRAIN_EPOCH, step=k)
            ref.train_step(xb, tb)
    result = {}
    for kind, names, mods in (("W", w_names, ref.fwd), ("R", r_names, ref.decor)):
        worst = 0.0
        for name, mod in zip(names, mods):
            change = float((mod.weight - start[name]).abs().max())
            diff = float((mod.weight - net.weights[name]).abs().max())
            worst = max(worst, diff / change if change else diff)
        result[kind] = worst
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200,
                        help="training steps (batches of 50) per timed repeat")
    parser.add_argument("--floor-steps", type=int, default=None,
                        help="steps of each GEMM floor per timed repeat (default: --steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the float64 agreement check")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    steps = max(1, args.steps)
    floor_steps = max(1, args.floor_steps or steps)
    n = steps * BATCH
    x_all, y_all, source = mnist_images(n)
    x_all, y_all = x_all.to(device), y_all.to(device)
    onehot = TF.one_hot(y_all, SIZES[-1]).float()
    results = {"source": source, "threads": args.threads, "device": device,
               "cpu": cpu_name(), "torch": torch.__version__, "batch": BATCH,
               "sizes": list(SIZES), "steps": steps, "floor_steps": floor_steps,
               "repeats": args.repeats}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"COPI-BP {'-'.join(map(str, SIZES))} (R in front of every layer), batch {BATCH}, "
          f"float32, lr {LR:g}, alpha {ALPHA:g}, leaky ReLU {SLOPE:g}; {args.threads} threads on "
          f"{device} ({results.get('gpu', results['cpu'])}), torch {torch.__version__}, data: "
          f"{source}", flush=True)

    if not args.skip_check:
        check = agreement(x_all.cpu() if device == "cpu" else x_all, y_all, device)
        results["agreement_max_rel_diff"] = check
        print("  float64 agreement, 2 steps on one batch from the same weights (max |neurosim - "
              "ref| / max |change|, worst layer): " + ", ".join(f"{k} {v:.2e}"
                                                                 for k, v in check.items()),
              flush=True)

    protocol, _ = neurosim_protocol("float32", device)
    ref = ReferenceCopi(device=device)
    copy_weights(protocol, ref)              # same start, same batches: the same trajectory
    gen_ns = torch.Generator(device=device).manual_seed(0)

    def run_neurosim(count=steps):
        with torch.inference_mode():
            for k in range(count):
                i = k % steps * BATCH
                protocol.train_step(x_all[i:i + BATCH], onehot[i:i + BATCH], gen_ns, 1.0,
                                    epoch=TRAIN_EPOCH, step=k)

    def run_reference(count=steps):
        for k in range(count):
            i = k % steps * BATCH
            ref.train_step(x_all[i:i + BATCH], onehot[i:i + BATCH])

    candidates = []
    warm = min(steps, 10)
    run_neurosim(warm)                                                  # warm-up
    run_reference(warm)
    candidates += [("neurosim", run_neurosim, n), ("reference", run_reference, n)]
    for which in ("reference", "neurosim"):
        floor_step = gemm_floor_step(which, device=device)

        def run_floor(count=floor_steps, floor_step=floor_step):
            for _ in range(count):
                floor_step()
        run_floor(warm)                                                 # warm-up
        candidates.append((f"GEMM floor ({which})", run_floor, floor_steps * BATCH))

    keys = {"GEMM floor (reference)": "floor_reference", "GEMM floor (neurosim)":
            "floor_neurosim"}
    for name, (best, median) in timed(candidates, args.repeats, device, width=24).items():
        key = keys.get(name, name)
        results[f"{key}_ms_per_sample"], results[f"{key}_ms_median"] = best, median

    print("  MNIST, training steps only (best ms/sample x 60,000 per epoch; every epoch W and "
          "R):")
    for who, label in (("neurosim", "neurosim"), ("reference", "reference"),
                       ("floor_reference", "floor (reference alg.)"),
                       ("floor_neurosim", "floor (neurosim's rule)")):
        seconds = EPOCH_SAMPLES * results[f"{who}_ms_per_sample"] / 1e3
        results[f"{who}_epoch_s"] = seconds
        results[f"{who}_100_epochs_s"] = seconds * EPOCHS
        print(f"    {label:24s} 1 epoch {seconds:7.1f} s;  100 epochs "
              f"{seconds * EPOCHS / 60:7.1f} min ({seconds * EPOCHS / 3600:.2f} h)")
    ns, rf = results["neurosim_ms_per_sample"], results["reference_ms_per_sample"]
    results["neurosim_over_reference"] = ns / rf
    results["floor_reference_over_neurosim"] = results["floor_reference_ms_per_sample"] / ns
    results["floor_neurosim_over_neurosim"] = results["floor_neurosim_ms_per_sample"] / ns
    results["floor_reference_over_reference"] = results["floor_reference_ms_per_sample"] / rf
    print(f"  neurosim / reference {results['neurosim_over_reference']:.3f} (below 1: neurosim "
          "faster)")
    print(f"  floor (reference algorithm: C = x^T x, C_off @ R, n^3) / neurosim "
          f"{results['floor_reference_over_neurosim']:.3f} (above 1: neurosim faster than the "
          "reference algorithm's own matrix products)")
    print(f"  floor (neurosim's rule: x R, x^T (x R)) / neurosim "
          f"{results['floor_neurosim_over_neurosim']:.3f} (1: all of neurosim's time in the "
          "matrix products it needs)")
    print(f"  floor (reference algorithm) / reference "
          f"{results['floor_reference_over_reference']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
