"""Infomorphic neurons: time and peak memory of the PID goal plus its gradient, neurosim's
evaluation at the sample points next to the dense-grid form of the authors' code.

    python benchmarks/infomorphic_speed.py [--sizes 400 1000] [--memory-sizes 400 2000]
        [--batch 1024] [--repeats 5] [--threads 2] [--device cpu] [--goal optimised_mnist]
        [--skip-check] [--skip-memory] [--no-profiler] [--malloc-mmap-threshold BYTES]
        [--json PATH]

One call = the goal of N trivariate neurons on a batch of B = 1024 samples and its backward
pass, float32:

- inputs (synthetic but shaped like a hidden layer's): F = 6 randn (N, B); C = a random
  weight (N, 10) read at a random one-hot label per sample (10 classes) plus 0.3 randn, so
  about ten distinct values per neuron; L = 3 randn; each binned once with
  ``neurosim.pid.bin_fixed`` (20 bins on [-20, 20]) into bins (3, N, B) before timing (the
  binning is the same for both; its time is printed on its own row). theta (N, B) =
  sigmoid(g_n A + b_n) with A = F [0.8 + 0.1 sigmoid(2 F C) + 0.1 sigmoid(2 F L)] (the
  spec's activation) and the leaf parameter (g, b) (N, 2), so the backward runs through theta
  into a real leaf. Goal: "optimised_mnist" (all 19 weights non-zero); loss = -sum_n G_n.
- neurosim: ``neurosim.pid.pid_goal(bins, theta, goal)`` (the distinct bin tuples of each
  neuron, marginals scatter-added and gathered at the sample points: O(N B) memory).
- dense: :func:`dense_goal`, written here in the style of the authors' code
  (Priesemann-Group/Infomorphic_Networks, im_net/im_model.py and im_net/prob_estim.py): theta
  scatter-added into a dense joint histogram of shape (20, 20, 20, 2, N) for the layer;
  every marginal a keepdim sum of that tensor; for each of the 18 antichains the union
  probabilities by inclusion-exclusion accumulated on a tensor of the full grid's shape (the
  sources' union under torch.no_grad), frac = P(y, U) / (P(U) P(y) + 1e-10), entries < 1e-7
  set to 1, I_sx = sum of P log2 frac over the grid; then Moebius inversion (neurosim's
  lattice and matrix), H_res and G = gamma . [Pi; H_res]. About 4 grid-sized tensors per
  antichain are kept for the backward, ~6 MiB per neuron in float32: ~12 GiB at N = 2000.

First a float64 agreement check (N = 50): both give the same goal per neuron and the same
gradient with respect to theta (max abs differences printed; the script exits non-zero if
either exceeds 1e-8). Timing: interleaved rounds (each round runs each candidate once, so
other load on a shared machine hits them alike), best and median of --repeats, ms per call,
and the ratio dense / neurosim per N. Peak memory: one goal + backward per (implementation,
N) in a fresh child process each: peak RSS minus the RSS right before the call (after
imports and input creation). The peak is the process's RSS high-water mark, reset through
/proc/self/clear_refs just before the call and read as VmHWM from /proc/self/status
(ru_maxrss, the fallback where /proc is missing, also keeps the high-water mark of the parent
the child was forked from). glibc keeps freed heap memory for reuse, so the RSS of neurosim's
many medium-sized tensors (a few MiB to ~12 MiB each) can exceed their live bytes;
--malloc-mmap-threshold 65536 gives every large allocation its own mapping. Also reported:
the peak of live tensor bytes from torch's memory profiler (a second call) and, on a GPU,
torch.cuda.max_memory_allocated. Targets of the issue: dense / neurosim >= 2.5 at N = 400,
neurosim's peak at N = 2000 under 1 GiB (both are checked and printed at the end).
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import cpu_name, synchronize, timed  # noqa: E402

from neurosim.pid import bin_fixed, get_lattice, goal_vector, pid_goal  # noqa: E402
from neurosim.pid.redundancy import moebius_tensor  # noqa: E402

BATCH, N_BINS, LOW, HIGH, CLASSES = 1024, 20, -20.0, 20.0, 10
GOAL = "optimised_mnist"
CHECK_N, CHECK_TOLERANCE = 50, 1e-8
TARGET_RATIO, TARGET_RATIO_N, TARGET_MEMORY_N, TARGET_MEMORY_GIB = 2.5, 400, 2000, 1.0
MIB = 2 ** 20


# ----------------------------------------------------------------------------- inputs
def make_inputs(n: int, batch: int = BATCH, seed: int = 0, dtype=torch.float32,
                device="cpu"):
    """Synthetic sources of n neurons on a batch: bins (3, n, batch) int64 from F, C, L (see
    the module docstring), the activation A (n, batch) and the leaf parameter (n, 2) (gain,
    bias; requires grad). theta = :func:`theta_of` (A, leaf)."""
    g = torch.Generator().manual_seed(seed)
    f = 6 * torch.randn(n, batch, generator=g, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    w_c = 4 * torch.randn(n, CLASSES, generator=g, dtype=torch.float64)
    c = w_c[:, labels] + 0.3 * torch.randn(n, batch, generator=g, dtype=torch.float64)
    l_ = 3 * torch.randn(n, batch, generator=g, dtype=torch.float64)
    a = f * (0.8 + 0.1 * torch.sigmoid(2 * f * c) + 0.1 * torch.sigmoid(2 * f * l_))
    bins = torch.stack([bin_fixed(x, N_BINS, LOW, HIGH) for x in (f, c, l_)])
    leaf = torch.stack([0.3 + 0.05 * torch.randn(n, generator=g, dtype=torch.float64),
                        0.1 * torch.randn(n, generator=g, dtype=torch.float64)], dim=1)
    leaf = leaf.to(device, dtype).requires_grad_(True)
    return (bins.to(device), a.to(device, dtype), leaf,
            [x.to(device, dtype) for x in (f, c, l_)])


def theta_of(a: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """theta = sigmoid(gain_n A + bias_n), (n, batch)."""
    return torch.sigmoid(leaf[:, :1] * a + leaf[:, 1:])


# ----------------------------------------------------------------------------- dense form
def powerset(items):
    """Non-empty subsets of ``items`` as sorted tuples, smallest first."""
    items = list(items)
    return itertools.chain.from_iterable(itertools.combinations(items, r)
                                         for r in range(1, len(items) + 1))


def dense_histogram(bins: torch.Tensor, theta: torch.Tensor, n_bins: int = N_BINS):
    """Joint pmf of each neuron on the dense grid, P(s_1..s_k, y) with y = (+1, -1) and the
    neuron last: shape (K,)*k + (2, N). The bin tuple of a sample becomes one flat cell index,
    q_b = (theta_b, 1 - theta_b) is scatter-added into a (K^k, N, 2) table (a histogram with
    differentiable weights), reshaped to (N, 2, K..K), divided by B and viewed in the order
    (K..K, 2, N)."""
    k, n, batch = bins.shape
    with torch.no_grad():
        cell = bins[0].clone()
        for i in range(1, k):
            cell = cell * n_bins + bins[i]
        index = cell.T.unsqueeze(-1).expand(batch, n, 2)
    q = torch.stack([theta, 1 - theta], dim=-1).transpose(0, 1)          # (B, N, 2)
    table = torch.zeros(n_bins ** k, n, 2, dtype=q.dtype, device=q.device)
    table.scatter_add_(0, index, q)
    grid = table.view(*(n_bins,) * k, n, 2).movedim((-2, -1), (0, 1)).contiguous() / batch
    return grid.permute(*range(2, k + 2), 1, 0)                           # (K.., 2, N)


def dense_marginals(pmf: torch.Tensor, k: int) -> dict:
    """{a: the marginal on the axes a} for every non-empty subset a of the k source axes and
    the target axis k: sums of the dense pmf over the other grid axes, kept as size-1 axes
    (so every marginal broadcasts against the grid)."""
    axes = set(range(k + 1))
    out = {}
    for subset in powerset(range(k + 1)):
        drop = tuple(sorted(axes - set(subset)))
        out[subset] = pmf.sum(drop, keepdim=True) if drop else pmf
    return out


def dense_union(marginals: dict, alpha, k: int) -> torch.Tensor:
    """P(union_j {S_{a_j} = s_{a_j}}) on the whole grid by inclusion-exclusion over the
    groups of the sets in ``alpha``, each group's intersection being the marginal on the union
    of its index sets; accumulated in place on a tensor of the full grid's shape."""
    total = torch.zeros_like(marginals[tuple(range(k + 1))])
    for size in range(1, len(alpha) + 1):
        for group in itertools.combinations(alpha, size):
            joint = tuple(sorted(set().union(*group)))
            total += (-1) ** (size - 1) * marginals[joint]
    return total


def dense_isx(marginals: dict, alpha, k: int) -> torch.Tensor:
    """I_sx(Y : alpha) per neuron (N,) on the dense grid:
    sum_{s,y} P(s,y) log2 [P(y, U) / (P(U) P(y) + 1e-10)], ratios below 1e-7 counted as 1."""
    with torch.no_grad():
        p_union = dense_union(marginals, alpha, k)
    with_target = tuple(a + (k,) for a in alpha)
    p_union_y = dense_union(marginals, with_target, k)
    frac = p_union_y / (p_union * marginals[(k,)] + 1e-10)
    frac[frac < 1e-7] = 1
    return (marginals[tuple(range(k + 1))] * torch.log2(frac)).sum(tuple(range(k + 1)))


def dense_goal(bins, theta: torch.Tensor, gamma=GOAL, n_bins: int = N_BINS) -> torch.Tensor:
    """The goal per neuron (N,), G = gamma . [Pi; H_res], evaluated on the dense
    (K,)*k x 2 x N grid in the authors' style (see the module docstring): I_sx of every
    antichain (18 for three sources, 4 for two) on the grid, Pi = M I_sx (neurosim's Moebius
    matrix), H_res = H(Y) - I_sx(top). ``bins``: (k, N, B) integer bin indices (k = 2 or 3)
    or a list of k (N, B) tensors; ``theta`` (N, B) = P(Y = +1); ``gamma``: a goal name or
    vector."""
    if not isinstance(bins, torch.Tensor):
        bins = torch.stack(list(bins))
    k = bins.shape[0]
    lattice = get_lattice(k)
    pmf = dense_histogram(bins.long(), theta, n_bins)
    marginals = dense_marginals(pmf, k)
    isx = torch.stack([dense_isx(marginals, alpha, k) for alpha in lattice.antichains])
    atoms = moebius_tensor(k, isx.dtype, isx.device) @ isx                # (n_atoms, N)
    p_y = marginals[(k,)]
    entropy = -(p_y * torch.log2(p_y + 1e-10)).sum(tuple(range(k + 1)))
    h_res = entropy - isx[lattice.top]
    terms = torch.cat([atoms, h_res.unsqueeze(0)])                        # (n_atoms + 1, N)
    return goal_vector(gamma, k).to(terms.dtype).to(terms.device) @ terms


# ----------------------------------------------------------------------------- one call
def goal_and_backward(which: str, bins, a, leaf, gamma=GOAL) -> None:
    """One goal + backward: theta from the leaf, G per neuron, loss = -sum G, backward into
    the leaf (its grad is reset first)."""
    leaf.grad = None
    theta = theta_of(a, leaf)
    goal = pid_goal(bins, theta, gamma) if which == "neurosim" else dense_goal(bins, theta,
                                                                                gamma)
    (-goal.sum()).backward()


def agreement(n: int = CHECK_N, batch: int = BATCH, seed: int = 1, gamma=GOAL,
              n_sources: int = 3, device="cpu") -> dict:
    """Float64: max |neurosim - dense| of the goal per neuron and of dG/dtheta (the gradient
    of sum_n G_n), with the largest magnitudes of each for scale."""
    bins, a, leaf, _ = make_inputs(n, batch, seed, torch.float64, device)
    bins = bins[:n_sources]
    theta = theta_of(a, leaf).detach().requires_grad_(True)
    ours = pid_goal(bins, theta, gamma)
    (grad_ours,) = torch.autograd.grad(ours.sum(), theta)
    dense = dense_goal(bins, theta, gamma)
    (grad_dense,) = torch.autograd.grad(dense.sum(), theta)
    ours, dense = ours.detach(), dense.detach()
    return {"n": n, "batch": batch, "goal_max_abs_diff": float((ours - dense).abs().max()),
            "grad_max_abs_diff": float((grad_ours - grad_dense).abs().max()),
            "goal_max_abs": float(ours.abs().max()),
            "grad_max_abs": float(grad_ours.abs().max())}


# ----------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0, writing 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _profiled_peak_bytes(fn) -> int | None:
    """Peak of live tensor bytes during fn() from torch's memory profiler (tensors that
    existed before the call not counted); None where the profiler's API is unavailable."""
    try:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                     record_shapes=True, with_stack=True) as prof:
            fn()
        live = peak = 0
        for _, action, _, size in prof._memory_profile().timeline:
            name = getattr(action, "name", str(action))
            if name == "CREATE":
                live += size
            elif name == "DESTROY":
                live -= size
            peak = max(peak, live)
        return peak
    except Exception:  # noqa: BLE001 - a private profiler API: report n/a
        return None


def child(which: str, n: int, batch: int, device: str, gamma, profiler: bool) -> dict:
    """Peak memory of one goal + backward in this (fresh) process."""
    out = {"impl": which, "n": n, "batch": batch, "device": device}
    bins, a, leaf, _ = make_inputs(n, batch, 0, torch.float32, device)
    gc.collect()
    synchronize(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    before = _status_kib("VmHWM")
    out["peak_rss_before_mib"] = before / 1024 if before is not None else None
    base_kib = _status_kib("VmRSS")
    out["hwm_reset"] = _reset_peak_rss()
    start = time.perf_counter()
    try:
        goal_and_backward(which, bins, a, leaf, gamma)
        synchronize(device)
    except (RuntimeError, MemoryError) as error:
        out["error"] = f"{type(error).__name__}: {error}"[:300]
        return out
    out["seconds"] = time.perf_counter() - start
    # ru_maxrss also holds the high-water mark of the parent's address space that this process
    # was forked from (kept through exec in the signal struct, which clear_refs leaves alone);
    # VmHWM is this process's own, reset just before the call.
    out["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm_kib = _status_kib("VmHWM") if out["hwm_reset"] else None
    peak_kib = hwm_kib if hwm_kib is not None else out["ru_maxrss_mib"] * 1024
    out["peak_source"] = "VmHWM" if hwm_kib is not None else "ru_maxrss"
    out["baseline_rss_mib"] = base_kib / 1024 if base_kib is not None else None
    out["peak_rss_mib"] = peak_kib / 1024
    if base_kib is not None:
        out["peak_rss_delta_mib"] = (peak_kib - base_kib) / 1024
    if cuda:
        out["cuda_peak_delta_mib"] = (torch.cuda.max_memory_allocated(device) - cuda_base) / MIB
    if profiler and not cuda:
        peak = _profiled_peak_bytes(lambda: goal_and_backward(which, bins, a, leaf, gamma))
        out["profiler_peak_tensor_mib"] = None if peak is None else peak / MIB
    return out


def measure_memory(which: str, n: int, args) -> dict:
    """Run :func:`child` in a fresh process; its JSON, or the failure."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", which, str(n),
           "--batch", str(args.batch), "--threads", str(args.threads), "--device",
           args.device, "--goal", args.goal] + (["--no-profiler"] if args.no_profiler else [])
    env = dict(os.environ)
    if args.malloc_mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"impl": which, "n": n, "error": f"child exited with {proc.returncode}"
                + (" (killed: out of memory?)" if proc.returncode < 0 else "")
                + (": " + " | ".join(tail) if tail else "")}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_mib(value) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1024:.2f} GiB" if value >= 1024 else f"{value:.0f} MiB"


# ----------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 1000],
                        help="numbers of neurons N to time")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[400, 2000],
                        help="N for the peak-memory children (each implementation)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--goal", default=GOAL)
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the float64 agreement check")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--no-profiler", action="store_true",
                        help="no torch memory-profiler pass in the memory children")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the memory children with glibc's MALLOC_MMAP_THRESHOLD_ "
                        "(e.g. 65536: every large tensor its own mapping, returned on free)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.batch, device,
                               args.goal, not args.no_profiler)))
        return

    results = {"cpu": cpu_name(), "torch": torch.__version__, "threads": args.threads,
               "device": device, "batch": args.batch, "goal": args.goal,
               "repeats": args.repeats, "sizes": args.sizes, "timing": {}, "memory": []}
    if device.startswith("cuda"):
        results["gpu"] = torch.cuda.get_device_name(device)
    print(f"Infomorphic PID goal + backward, trivariate (F, C, L; {N_BINS} bins each), batch "
          f"{args.batch}, float32, goal {args.goal}; {args.threads} threads on {device} "
          f"({results.get('gpu', results['cpu'])}), torch {torch.__version__}", flush=True)

    if not args.skip_check:
        check = agreement(CHECK_N, args.batch, device=device, gamma=args.goal)
        results["agreement"] = check
        print(f"  float64 agreement, N = {CHECK_N}, B = {args.batch}: max |neurosim - dense| "
              f"goal {check['goal_max_abs_diff']:.2e} (max |G| {check['goal_max_abs']:.3f}), "
              f"dG/dtheta {check['grad_max_abs_diff']:.2e} (max {check['grad_max_abs']:.3e})",
              flush=True)
        if max(check["goal_max_abs_diff"], check["grad_max_abs_diff"]) > CHECK_TOLERANCE:
            raise SystemExit(f"FAILED: neurosim and the dense form differ by more than "
                             f"{CHECK_TOLERANCE:g}; the timings would not compare equal work.")

    print("  times: ms per call (one goal + backward of N neurons on one batch; timed() "
          "labels them 'ms/sample', one sample = one call); binning: bin_fixed of F, C, L "
          "(shared by both, not in their times)", flush=True)
    for n in args.sizes:
        bins, a, leaf, sources = make_inputs(n, args.batch, 0, torch.float32, device)
        print(f"  N = {n}:", flush=True)
        entry = {}
        candidates = [("neurosim", lambda: goal_and_backward("neurosim", bins, a, leaf,
                                                             args.goal), 1)]
        try:
            goal_and_backward("neurosim", bins, a, leaf, args.goal)              # warm-up
        except (RuntimeError, MemoryError) as error:
            entry["neurosim_error"] = str(error)[:300]
            print(f"    neurosim failed: {error}", flush=True)
            candidates = []
        try:
            goal_and_backward("dense", bins, a, leaf, args.goal)                 # warm-up
            candidates.append(("dense", lambda: goal_and_backward("dense", bins, a, leaf,
                                                                  args.goal), 1))
        except (RuntimeError, MemoryError) as error:
            entry["dense_error"] = str(error)[:300]
            print(f"    dense form failed (too big for this machine?): {error}", flush=True)
        gc.collect()
        candidates.append(("binning", lambda: [bin_fixed(x, N_BINS, LOW, HIGH)
                                               for x in sources], 1))
        for name, (best, median) in timed(candidates, args.repeats, device, width=9).items():
            entry[f"{name}_ms"], entry[f"{name}_ms_median"] = best, median
        if "neurosim_ms" in entry and "dense_ms" in entry:
            entry["dense_over_neurosim"] = entry["dense_ms"] / entry["neurosim_ms"]
            entry["dense_over_neurosim_median"] = (entry["dense_ms_median"]
                                                   / entry["neurosim_ms_median"])
            print(f"    dense / neurosim {entry['dense_over_neurosim']:.2f} (best), "
                  f"{entry['dense_over_neurosim_median']:.2f} (median)", flush=True)
        results["timing"][str(n)] = entry
        del bins, a, leaf, sources, candidates
        gc.collect()

    if not args.skip_memory and args.memory_sizes:
        print("  peak memory of one goal + backward, fresh process each (peak RSS - RSS before "
              "the call; torch profiler: peak live tensor bytes):", flush=True)
        for n in args.memory_sizes:
            for which in ("neurosim", "dense"):
                m = measure_memory(which, n, args)
                results["memory"].append(m)
                if "error" in m:
                    print(f"    {which:9s} N = {n:5d}: {m['error']}", flush=True)
                    continue
                extra = f", CUDA {_fmt_mib(m['cuda_peak_delta_mib'])}" \
                    if "cuda_peak_delta_mib" in m else ""
                reset = "" if m["hwm_reset"] else ", high-water mark not reset"
                print(f"    {which:9s} N = {n:5d}: peak RSS "
                      f"+{_fmt_mib(m.get('peak_rss_delta_mib'))} (baseline "
                      f"{_fmt_mib(m['baseline_rss_mib'])}, peak {_fmt_mib(m['peak_rss_mib'])}"
                      f"{reset}), torch profiler "
                      f"{_fmt_mib(m.get('profiler_peak_tensor_mib'))}{extra}; first call "
                      f"{m['seconds']:.2f} s", flush=True)

    verdict = []
    ratio = results["timing"].get(str(TARGET_RATIO_N), {}).get("dense_over_neurosim")
    if ratio is not None:
        met = "met" if ratio >= TARGET_RATIO else "NOT met"
        verdict.append(f"speed at N = {TARGET_RATIO_N}: dense / neurosim {ratio:.2f} "
                       f"(target >= {TARGET_RATIO}: {met})")
    mem = next((m for m in results["memory"] if m.get("impl") == "neurosim"
                and m.get("n") == TARGET_MEMORY_N and "error" not in m), None)
    for key, label in (("peak_rss_delta_mib", "peak RSS"),
                       ("profiler_peak_tensor_mib", "peak live tensors")):
        if mem is not None and mem.get(key) is not None:
            ok = "met" if mem[key] < TARGET_MEMORY_GIB * 1024 else "NOT met"
            verdict.append(f"neurosim's {label} at N = {TARGET_MEMORY_N}: {_fmt_mib(mem[key])} "
                           f"(target < {TARGET_MEMORY_GIB:g} GiB: {ok})")
    for line in verdict:
        print("  " + line)
    results["verdict"] = verdict
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
