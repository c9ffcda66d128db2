"""One trial of a sweep: one configuration, trained once per seed, each seed an ordinary run
directory ``SWEEP_DIR/trials/<key>/seed_<s>/`` (model.toml with the configuration's values
and the seed, metrics.csv, run.h5 and kept checkpoints), exactly as ``neurosim train --out``
writes it, so ``neurosim resume``, ``inspect``, ``plot`` and ``table`` work on it.

A seed whose directory holds a checkpoint continues from it (:meth:`Trainer.resume`); a
finished one is only read. With ``[sweep] ensemble = true`` the seeds train as one batched
ensemble (neurosim.training.ensemble: the same run directories), continued as one when every
seed has a checkpoint at the same epoch and seed by seed otherwise. The trial's value is the
mean of the seeds' objectives. With a pruner the seeds are trained epoch by epoch in lockstep
and the mean after each epoch is reported, so that a hopeless trial can be stopped early.

A :class:`RetryableError` is an error that is not the configuration's own (a run directory
of another configuration in the way, an objective column the runs do not write): the trial
is not recorded as failed but left to be retried, and the worker stops.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, NeurosimError
from ..io.atomic import write_text_atomic

TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"


class RetryableError(NeurosimError):
    """The trial could not run for a reason that is not its configuration's: it is left to
    be retried (not recorded as failed) and the worker stops with this message."""


def trial_key(slot: int) -> str:
    """The directory name of the trial in plan position ``slot`` (0000, 0001, ...)."""
    return f"{slot:04d}"


def objective_value(columns: dict, objective: str, where: str = "") -> float:
    """The objective of one run from its metrics (``{column: [value per epoch]}``):
    ``final_test_accuracy`` (the last epoch's test accuracy), ``max:COL`` / ``min:COL`` (the
    best epoch's), or ``COL`` (the last epoch's; peak_test_accuracy is the best so far)."""
    how, column = objective_column(objective)
    values = columns.get(column)
    if not values:
        known = ", ".join(sorted(columns)) or "(no epochs yet)"
        raise RetryableError(f"{where}objective {objective!r}: the run has no {column} "
                             f"column; its metrics.csv columns are {known}. Set [sweep] "
                             "objective to one of them (in a new --out directory: the sweep "
                             "file is part of the sweep's fingerprint).")
    if how:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return math.nan
        return max(finite) if how == "max" else min(finite)
    return float(values[-1])


def objective_column(objective: str) -> tuple[str, str]:
    """(``"max"``, ``"min"`` or ``""``, the metrics.csv column) of an objective."""
    how, _, column = objective.rpartition(":")
    return how, "test_accuracy" if column == "final_test_accuracy" else column


def same_model_text(a: str, b: str) -> bool:
    """Whether two trial model files are the same but for their header comment (which
    names the sweep's model file: it may have been renamed or moved since)."""
    def body(text):
        return text.split("\n", 1)[1] if text.startswith("#") else text
    return body(a) == body(b)


def _truncated(columns: dict, epochs: int) -> dict:
    return {k: v[:epochs] for k, v in columns.items()}


@contextmanager
def _locked(directory: Path):
    """An exclusive lock on the trial directory (released when the process dies, SIGKILL
    included): two workers never write the same run directories at once."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                  # not POSIX: the study alone keeps trials apart
        yield
        return
    with open(directory / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class TrialRunner:
    """Trains the seeds of configurations of ``spec`` into ``out_dir/trials``; ``threads``
    torch threads per run; ``log`` gets the lines for the user (resumes; with ``verbose``
    every epoch)."""

    def __init__(self, spec, out_dir, *, threads: int | None = None, log=print,
                 verbose: bool = False):
        self.spec, self.out_dir, self.threads = spec, Path(out_dir), threads
        self.log, self.verbose = log, verbose

    def trial_dir(self, slot: int) -> Path:
        """``out_dir/trials/<key>``."""
        return self.out_dir / TRIALS_DIR / trial_key(slot)

    def locked(self, slot: int):
        """Context manager: hold the trial directory's lock."""
        return _locked(self.trial_dir(slot))

    def model_text(self, slot: int, values: dict, seed: int) -> str:
        """The model file of one seed of a trial (what its model.toml holds)."""
        spec = self.spec
        header = (f"neurosim sweep {spec.name}, trial {trial_key(slot)}, seed {seed}: "
                  f"{spec.model_path.name} with {spec.describe(values)}")
        return spec.model_text_for(values, seed, header=" ".join(header.split()))

    def write_info(self, slot: int, values: dict, numbers) -> None:
        """trial.json: the trial's key, values and Optuna trial numbers (for people and for
        ``neurosim table``, which names the configuration by it)."""
        info = {"sweep": self.spec.name, "trial": trial_key(slot), "slot": slot,
                "params": values, "label": f"{trial_key(slot)}: {self.spec.describe(values)}",
                "seeds": list(self.spec.seeds), "optuna_trials": list(numbers)}
        write_text_atomic(self.trial_dir(slot) / TRIAL_FILE, json.dumps(info, indent=1) + "\n")

    def open_run(self, slot: int, values: dict, seed: int, retry: str | None = None):
        """The Trainer of one seed: resumed from its checkpoint when the directory has one.
        ``retry`` (a retried trial: "retry of #N[, which ran on HOST]") makes a start from
        epoch 1 say why."""
        from ..io import kept_checkpoints
        from ..training import Trainer
        run_dir = self.trial_dir(slot) / f"seed_{seed}"
        text = self.model_text(slot, values, seed)
        key = trial_key(slot)
        if (run_dir / "run.h5").exists() or (run_dir.is_dir() and kept_checkpoints(run_dir)):
            trainer = Trainer.resume(run_dir, progress=False, threads=self.threads,
                                     warn=lambda m: self.log(f"trial {key}: warning: {m}"))
            if not same_model_text(trainer.model_text, text):
                raise RetryableError(f"{run_dir} holds a run of another configuration (its "
                                     "model.toml differs from this trial's); move it away and "
                                     "run the same command again, or start the sweep in a new "
                                     "--out directory.")
            target = trainer.config.epochs
            if 0 < trainer.epoch < target:
                self.log(f"trial {key}: seed_{seed} continues from its checkpoint at epoch "
                         f"{trainer.epoch} of {target}")
            return trainer, run_dir
        if retry is not None and (run_dir / "model.toml").is_file():
            self.log(f"trial {key}: seed_{seed} starts again at epoch 1: the earlier attempt "
                     f"({retry}) died in its first epoch, before any checkpoint")
        elif retry is not None and "ran on" in retry:
            self.log(f"trial {key}: seed_{seed} starts at epoch 1 here: the earlier attempt "
                     f"({retry}) left no checkpoint in {run_dir} (give the machines one shared "
                     "--out directory to continue their trials)")
        trainer = Trainer.from_model_text(text, where=str(run_dir / "model.toml"),
                                          base_dir=self.spec.model_path.parent,
                                          progress=False, threads=self.threads)
        return trainer, run_dir

    def open_ensemble(self, slot: int, values: dict):
        """The trial's seeds as one Ensemble: new when no seed has started, resumed when all
        have checkpoints at one epoch; None otherwise (then each seed runs on its own)."""
        from ..io import kept_checkpoints
        from ..training import Ensemble, Trainer
        from ..training.ensemble import member_dir
        trial_dir, key = self.trial_dir(slot), trial_key(slot)
        started = [(member_dir(trial_dir, s) / "run.h5").exists() or
                   (member_dir(trial_dir, s).is_dir() and
                    bool(kept_checkpoints(member_dir(trial_dir, s))))
                   for s in self.spec.seeds]
        try:
            if not any(started):
                return Ensemble([Trainer.from_model_text(
                    self.model_text(slot, values, seed),
                    where=str(member_dir(trial_dir, seed) / "model.toml"),
                    base_dir=self.spec.model_path.parent, progress=False,
                    threads=self.threads) for seed in self.spec.seeds], progress=False)
            if not all(started):
                return None
            ensemble = Ensemble.resume(trial_dir, progress=False, threads=self.threads,
                                       warn=lambda m: self.log(f"trial {key}: warning: {m}"))
        except ConfigError as err:       # this configuration cannot run as an ensemble
            self.log(f"trial {key}: its seeds train one by one ({err})")
            return None
        except NeurosimError:            # killed between two members' checkpoints
            return None
        texts = {m.config.seed: m.model_text for m in ensemble.members}
        if sorted(texts) != sorted(self.spec.seeds) or not all(
                same_model_text(texts[seed], self.model_text(slot, values, seed))
                for seed in self.spec.seeds):
            return None                  # open_run names the stray directory
        if 0 < ensemble.epoch < ensemble.members[0].config.epochs:
            self.log(f"trial {trial_key(slot)}: the ensemble of seeds continues from its "
                     f"checkpoints at epoch {ensemble.epoch}")
        return ensemble

    def _epoch_log(self, slot: int, seed: int):
        if not self.verbose:
            return None
        return lambda line: self.log(f"trial {trial_key(slot)} seed {seed}: {line}")

    def run(self, slot: int, values: dict, *, report=None, retry: str | None = None) -> dict:
        """Train (or continue) every seed; returns {"value": mean objective, "seeds":
        {seed: objective}, "epochs": {seed: epochs}, "seconds": wall time}. ``report(value,
        epoch)`` (pruning) is called with the mean over seeds after each epoch and may raise
        to stop the trial. The caller holds the trial's lock."""
        spec, start = self.spec, time.perf_counter()
        where = f"trial {trial_key(slot)}: "
        results, epochs = {}, {}
        ensemble = self.open_ensemble(slot, values) if spec.ensemble else None
        if ensemble is not None:
            log = self._epoch_log(slot, "all") if self.verbose else None
            target = ensemble.members[0].config.epochs
            for epoch in range(1, target + 1) if report is not None else (target,):
                ensemble.fit(self.trial_dir(slot), epochs=epoch, log=log)
                if report is not None:
                    report(_mean([objective_value(_truncated(m.history.columns, epoch),
                                                  spec.objective, where)
                                  for m in ensemble.members]), epoch)
            for member in ensemble.members:
                seed = member.config.seed
                results[seed] = objective_value(member.history.columns, spec.objective, where)
                epochs[seed] = member.epoch
        elif report is None:
            for seed in spec.seeds:
                trainer, run_dir = self.open_run(slot, values, seed, retry)
                trainer.fit(run_dir, log=self._epoch_log(slot, seed))
                results[seed] = objective_value(trainer.history.columns, spec.objective, where)
                epochs[seed] = trainer.epoch
        else:
            runs = {seed: self.open_run(slot, values, seed, retry) for seed in spec.seeds}
            target = max(trainer.config.epochs for trainer, _ in runs.values())
            for epoch in range(1, target + 1):
                for seed, (trainer, run_dir) in runs.items():
                    if trainer.epoch < min(epoch, trainer.config.epochs):
                        trainer.fit(run_dir, epochs=epoch, log=self._epoch_log(slot, seed))
                now = [objective_value(_truncated(t.history.columns, epoch), spec.objective,
                                       where) for t, _ in runs.values()]
                report(_mean(now), epoch)
            for seed, (trainer, _) in runs.items():
                results[seed] = objective_value(trainer.history.columns, spec.objective, where)
                epochs[seed] = trainer.epoch
        return {"value": _mean(list(results.values())), "seeds": results, "epochs": epochs,
                "seconds": time.perf_counter() - start}


def _mean(values) -> float:
    if any(not math.isfinite(v) for v in values):
        return math.nan
    return statistics.fmean(values)


def check_first(spec) -> None:
    """Build the sweep's first configuration (model text, network, protocol, options, data)
    and check that its runs write the objective's column, so that a bad key or value, or a
    missing data file, is reported before anything runs."""
    from ..graph import parse_model_text
    from ..training import Trainer
    values = {}
    for p in spec.space:
        if p.kind == "choice":
            values[p.key] = p.choices[0]
        else:
            values[p.key] = p.low
    where = f"{spec.path} [space] (first configuration: {spec.describe(values)})"
    text = spec.model_text_for(values, spec.seeds[0])
    data = parse_model_text(text, where)
    if isinstance(data.get("data"), dict):      # [data] keys are otherwise checked at load
        from ..data.loading import SPEC_KEYS
        from ..graph import check_keys
        check_keys(data["data"], SPEC_KEYS, f"{where} [data]")
    trainer = Trainer.from_model_text(text, where=where, base_dir=spec.model_path.parent,
                                      progress=False, threads=1)
    trainer.dataset                            # loaded and checked against the network
    if trainer.config.epochs < 1:
        raise ConfigError(f"{where}: [training] epochs is 0; nothing to train.")
    if spec.ensemble:
        from ..training.ensemble import check_ensemble_ready
        check_ensemble_ready(trainer, f"{spec.path} [sweep] ensemble = true (set it to false "
                                      "to train each trial's seeds one by one)")
    _, column = objective_column(spec.objective)
    if column in _planned_columns(trainer):
        return
    columns = _epoch_columns(trainer)
    if columns is not None and column not in columns:
        raise ConfigError(f"{spec.path} [sweep] objective {spec.objective!r}: the runs write no "
                          f"{column} column (the first configuration's metrics.csv columns are "
                          f"{', '.join(sorted(columns))}); set objective to one of them.")


def _planned_columns(trainer) -> set:
    """The metrics.csv columns every epoch of ``trainer`` writes, known from its evaluation
    plan without training (step metrics and metric plug-ins name theirs when computed)."""
    columns = {"epoch", "lr_scale", "train_seconds", "seconds"}
    for prefix, _, labels, _ in trainer.evaluation_plan():
        if labels is not None:
            columns |= {f"{prefix}_accuracy", f"{prefix}_loss"}
    if "test_accuracy" in columns:
        columns |= {"peak_test_accuracy", "peak_epoch"}
    return columns


def _epoch_columns(trainer) -> set | None:
    """The columns of one epoch of ``trainer`` (thrown away after) on one training batch and
    one evaluation batch of each held-out set: the cheapest run that writes every column;
    None when so small an epoch fails (the trials then tell)."""
    from dataclasses import replace

    def cut(rows, n):
        return None if rows is None else rows[:n]

    train, held = trainer.config.batch_size, trainer.config.eval_batch_size
    data = trainer.dataset
    trainer.train_x, trainer.train_y = cut(trainer.train_x, train), cut(trainer.train_y, train)
    trainer.val_x, trainer.val_y = cut(trainer.val_x, held), cut(trainer.val_y, held)
    trainer._dataset = replace(data, test_x=cut(data.test_x, held),
                               test_y=cut(data.test_y, held))
    try:
        return set(trainer.train_epoch())
    except Exception:                    # e.g. a metric that needs more rows than these
        return None


__all__ = ["TrialRunner", "RetryableError", "objective_value", "objective_column", "trial_key",
           "check_first", "same_model_text"]
