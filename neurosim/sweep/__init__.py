"""Hyperparameter sweeps on Optuna: ``neurosim sweep SWEEP.toml --out DIR``.

A sweep file names a model file, a search space over its keys (grid, random, TPE or
CMA-ES), the seeds each configuration runs with, and the objective (mean over seeds). Each
trial is a set of ordinary run directories; the study lives in SQLite inside the sweep
directory, or in PostgreSQL shared by several machines; trials run in local worker
processes or as Ray tasks. A killed sweep resumes, continuing interrupted trials from their
checkpoints. See docs/sweeps.md.

Optuna (and Ray) are optional: ``pip install 'neurosim[sweep]'`` / ``'neurosim[ray]'``.
"""
from .spec import Param, SweepSpec, load_sweep, parse_sweep

__all__ = ["Param", "SweepSpec", "load_sweep", "parse_sweep", "run_sweep"]


def run_sweep(spec, out, **kwargs):
    """Run or resume a sweep (see neurosim.sweep.run.run_sweep)."""
    from .run import run_sweep as _run
    return _run(spec, out, **kwargs)
