"""Compare two training run directories bit for bit: every per-epoch metric except timings
and every final weight (run.h5). Used to show that a refactoring leaves a run unchanged:

    python benchmarks/compare_runs.py runs/before runs/after

Exit status 0 when identical, 1 otherwise (the differences are printed)."""
from __future__ import annotations

import sys

import h5py
import numpy as np

TIMINGS = {"seconds", "train_seconds"}


def _read(path: str) -> tuple[dict, dict]:
    with h5py.File(f"{path}/run.h5", "r") as fh:
        metrics = {k: fh["metrics"][k][()] for k in fh["metrics"] if k not in TIMINGS}
        weights = {}
        fh["network"].visititems(lambda name, obj: weights.__setitem__(name, obj[()])
                                 if isinstance(obj, h5py.Dataset) else None)
    return metrics, weights


def compare(a: str, b: str) -> list[str]:
    (ma, wa), (mb, wb) = _read(a), _read(b)
    problems = []
    for what, left, right in (("metric", ma, mb), ("weight", wa, wb)):
        for key in sorted(left.keys() | right.keys()):
            if key not in left or key not in right:
                problems.append(f"{what} {key}: only in {'the first' if key in left else 'the second'} run")
            elif left[key].shape != right[key].shape or not np.array_equal(left[key], right[key]):
                diff = np.abs(np.asarray(left[key], float) - np.asarray(right[key], float)).max() \
                    if left[key].shape == right[key].shape else "shape"
                problems.append(f"{what} {key}: differs (max |diff| {diff})")
    return problems


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = compare(sys.argv[1], sys.argv[2])
    print("\n".join(found) if found else "identical: every metric (timings aside) and every weight")
    sys.exit(1 if found else 0)
