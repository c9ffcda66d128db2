"""Training runs: epochs of any learning protocol, metrics, checkpoints and exact resume.

A :class:`Trainer` is built from a network, a protocol, data and run options (Python), or
from a model file's text (:meth:`Trainer.from_model_text`). Each epoch it

1. shuffles the training rows (one torch.Generator, the run's) and calls
   ``protocol.train_step`` batch by batch (running accuracy and loss from the predictions it
   returns, when the protocol is supervised and the data labeled; its step metrics averaged);
2. evaluates the validation split (if any) and the test set with ``protocol.infer``
   (accuracy and loss for supervised runs) and the metric plug-ins
   (``[training] metrics``) on the test set (else the validation set, else the training set);
3. appends the row to the history and, in :meth:`fit`, checkpoints.

A run directory holds
    model.toml    the model file the run was started from (exact text)
    run.h5        checkpoint after the last finished epoch (atomic rewrite): weights, biases,
                  rule states, protocol state, RNG states, progress, validation indices,
                  per-epoch metrics (/metrics/<name>)
    checkpoints/  epoch_NNNN.h5: the checkpoints of the epochs before, the newest
                  ``keep_checkpoints - 1`` of them ([training] keep_checkpoints, default 3,
                  counts run.h5 too); see neurosim.io.series
    metrics.csv   one row per epoch: epoch, train_accuracy, test_accuracy (when measured),
                  then the other columns; with a test set also peak_test_accuracy and
                  peak_epoch (the best so far and the first epoch that reached it)

Resuming from run.h5 repeats exactly what an uninterrupted run computes: the data order and
every random draw of the protocol come from the one generator whose state is checkpointed.
When run.h5 is damaged (missing, truncated, not HDF5, incomplete), :meth:`Trainer.resume`
and :meth:`Trainer.restore` warn and continue from the newest intact kept checkpoint, just
as exactly; they then put that checkpoint back at run.h5 and cut metrics.csv to its epoch.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..dynamics import CompiledNetwork
from ..errors import ConfigError, NeurosimError
from ..graph import Network, parse_model_text
from ..io.atomic import write_text_atomic
from ..metrics import MetricContext, build_metrics
from ..protocols import LearningProtocol, build_protocol
from ..registry import importable_from
from .allocator import keep_freed_blocks
from .config import (TrainingConfig, build_network, check_training_config, data_config,
                     split_tables, training_config_from_table)

RUN_FILE, MODEL_FILE, METRICS_FILE = "run.h5", "model.toml", "metrics.csv"


@dataclass
class History:
    """Per-epoch metrics, one list per column."""

    columns: dict[str, list[float]] = field(default_factory=dict)

    def append(self, row: dict) -> None:
        """Add one epoch; columns missing on either side are NaN-padded."""
        n = len(self)
        for key in self.columns.keys() - row.keys():
            self.columns[key].append(math.nan)
        for key, value in row.items():
            self.columns.setdefault(key, [math.nan] * n).append(float(value))

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def rows(self):
        """Yield one ``{column: value}`` dict per epoch, in order."""
        keys = list(self.columns)
        for i in range(len(self)):
            yield {k: self.columns[k][i] for k in keys}


class Trainer:
    """Trains a network with a protocol on a dataset, epoch by epoch (see
    neurosim.training.trainer for the epoch loop, the run directory and exact resume).

    ``network``: a :class:`~neurosim.graph.Network` (compiled here with the options' dtype,
    device and seed) or a :class:`~neurosim.dynamics.CompiledNetwork`; ``protocol``: a
    :class:`~neurosim.protocols.LearningProtocol` or its ``[protocol]`` table; ``data``: a
    :class:`~neurosim.data.Dataset` or its ``[data]`` table; ``options``: a
    :class:`TrainingConfig` or its ``[training]`` table; ``validation``: a fraction or a
    count of training rows held out (seeded by the run's seed). Nothing global is changed,
    except torch's thread count while :meth:`fit` runs when ``options.threads`` is set."""

    def __init__(self, network: Network | CompiledNetwork, protocol, data,
                 options: TrainingConfig | Mapping | None = None, *, validation=None,
                 model_text: str | None = None, where: str = "trainer", progress: bool = True,
                 base_dir: str | os.PathLike | None = None):
        self.where, self.model_text, self.progress = where, model_text, progress
        keep_freed_blocks()                 # large tensors: no page faults at every step
        if not isinstance(options, TrainingConfig):
            options = training_config_from_table(dict(options or {}), where)
        self.config = cfg = check_training_config(options, where)
        if isinstance(network, CompiledNetwork):
            if network.dtype != cfg.torch_dtype or network.device != torch.device(cfg.device):
                raise ConfigError(f"{where}: the compiled network is {network.dtype} on "
                                  f"{network.device} but the options say {cfg.dtype} on "
                                  f"{cfg.device}; compile it with the same dtype and device, "
                                  "or pass the Network.")
            self.net = network
        elif isinstance(network, Network):
            self.net = CompiledNetwork(network, dtype=cfg.torch_dtype, device=cfg.device,
                                       seed=cfg.seed)
        else:
            raise ConfigError(f"{where}: network must be a Network or CompiledNetwork, got "
                              f"{type(network).__name__}.")
        self.network = self.net.network
        self.protocol: LearningProtocol = build_protocol(protocol, f"{where} [protocol]")
        try:
            self.protocol.bind(self.net, input=cfg.input, output=cfg.output, seed=cfg.seed)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        self.metrics = build_metrics(list(cfg.metrics), f"{where} [training] metrics")
        for i, metric in enumerate(self.metrics):
            try:
                metric.setup(self.net)
                if hasattr(metric, "check_protocol"):
                    metric.check_protocol(self.protocol)
            except ConfigError as err:
                raise ConfigError(f"{where} [training] metrics[{i}]: {err}") from None
        if validation is None and isinstance(data, Mapping):
            validation = data.get("validation")
        self.validation = validation
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self._data = data
        self._dataset = None
        self._digest: str | None = None
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.steps = 0
        self.history = History()
        self.overrides: dict = {}
        # the run directory whose run.h5 this trainer wrote or loaded last, and that epoch
        # (None: run.h5 there is not known to be intact); decides what save() keeps
        self._run_dir: Path | None = None
        self._run_file_epoch: int | None = None

    @classmethod
    def from_model_text(cls, model_text: str, *, where: str = "model", progress: bool = True,
                        base_dir=None, **overrides) -> "Trainer":
        """A trainer from a model file's text; ``overrides`` (not None) replace [training]
        keys (epochs, seed, batch_size, device, dtype, threads, ...) or else [protocol] keys.
        ``base_dir`` (the model file's directory) is where relative [data] paths point and
        where "module:Class" plug-ins are imported from first."""
        data = parse_model_text(model_text, where)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        training, protocol = split_tables(data, where, overrides)
        config = training_config_from_table(training, where)
        spec = data_config(data, where)
        with importable_from(base_dir):
            network = build_network(data, where)
            trainer = cls(network, protocol, spec, config, validation=spec.get("validation"),
                          model_text=model_text, where=where, progress=progress,
                          base_dir=base_dir)
        trainer.overrides = overrides
        return trainer

    @classmethod
    def from_model_file(cls, path, **kwargs) -> "Trainer":
        """A trainer from a model file; its directory is the ``base_dir`` and ``kwargs`` are
        those of :meth:`from_model_text` (overrides, progress)."""
        from ..graph import load_model_file
        model = load_model_file(path)
        return cls.from_model_text(model.text, where=str(model.path),
                                   base_dir=model.path.parent, **kwargs)

    # ------------------------------------------------------------------ data
    @property
    def dataset(self):
        """The dataset (loaded on first use, checked against the network's sizes)."""
        if self._dataset is None:
            self._dataset = self._load(self._data)
            self._split()
        return self._dataset

    def _load(self, data):
        from ..data import Dataset, dataset_from_spec
        cfg = self.config
        if isinstance(data, Dataset):
            ds = data
        elif isinstance(data, Mapping):
            ds = dataset_from_spec(data, where=f"{self.where} [data]", base_dir=self.base_dir,
                                   dtype=cfg.torch_dtype)
        else:
            raise ConfigError(f"{self.where}: data must be a Dataset or a [data] table, got "
                              f"{type(data).__name__}.")
        ds = ds.to(cfg.torch_dtype, cfg.device)
        n_in = self.net.slots[cfg.input].size
        n_out = self.net.slots[cfg.output].size
        labeled = ds.train_y is not None
        if self.protocol.supervised and not labeled:
            raise ConfigError(f'{self.where}: protocol "{self.protocol.name}" is supervised but '
                              f'dataset "{ds.name}" has no labels (train_y); give labels or use '
                              'an unsupervised protocol such as "relax".')
        wrong_out = self.protocol.supervised and ds.n_classes != n_out
        if ds.train_x.shape[1] != n_in or wrong_out:
            classes = f" and {ds.n_classes} classes" if self.protocol.supervised else ""
            outputs = f' and output "{cfg.output}" {n_out} neurons' if self.protocol.supervised \
                else " neurons"
            raise ConfigError(
                f'{self.where}: dataset "{ds.name}" has {ds.train_x.shape[1]} inputs{classes} '
                f'but the network\'s input "{cfg.input}" has {n_in}{outputs}; fix sizes in '
                "the model file.")
        return ds

    def _split(self) -> None:
        ds = self._dataset
        self.train_x, self.train_y = ds.train_x, ds.train_y
        self.val_x = self.val_y = self.validation_indices = None
        if self.validation is None:
            return
        from ..data import validation_split
        try:
            train_idx, val_idx = validation_split(len(ds.train_x), self.validation,
                                                  self.config.seed + 1)
        except NeurosimError as err:
            raise ConfigError(f"{self.where} [data] validation: {err}") from None
        self.validation_indices = val_idx
        device = ds.train_x.device
        train_idx, val_idx = train_idx.to(device), val_idx.to(device)
        self.train_x, self.val_x = ds.train_x[train_idx], ds.train_x[val_idx]
        if ds.train_y is not None:
            self.train_y, self.val_y = ds.train_y[train_idx], ds.train_y[val_idx]

    @property
    def labeled(self) -> bool:
        """Whether training and evaluation use labels: a supervised protocol on a dataset
        with ``train_y``."""
        return self.protocol.supervised and self.dataset.train_y is not None

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        n_out = self.net.slots[self.config.output].size
        return torch.nn.functional.one_hot(labels, n_out).to(self.config.torch_dtype)

    # ------------------------------------------------------------------ evaluation
    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, labels: torch.Tensor | None, prefix: str,
                 metrics=()) -> dict:
        """Columns ``<prefix>_accuracy`` and ``<prefix>_loss`` (argmax of the inferred output,
        first on ties; the protocol's loss averaged over samples) when labeled, plus the
        metrics' columns, over the rows of x in batches of eval_batch_size."""
        self.dataset                     # loaded (and split) on first use: sets train_x
        protocol, size = self.protocol, self.config.eval_batch_size
        supervised = labels is not None and protocol.supervised
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        loss = torch.zeros((), dtype=torch.float64, device=x.device)
        context = MetricContext(self.net, protocol, self.train_x)
        for metric in metrics:
            metric.reset(context)
        for start in range(0, len(x), size):
            xb = x[start:start + size]
            yb = labels[start:start + size] if labels is not None else None
            state = protocol.infer(xb)
            if supervised:
                out = self.net.r_of(state, protocol.output)
                correct += (out.argmax(dim=1) == yb).sum()
                loss += protocol.loss(out, self._one_hot(yb))
            for metric in metrics:
                metric.observe(state, xb, yb)
        row = {}
        if supervised:
            row[f"{prefix}_accuracy"] = float(correct) / len(x)
            row[f"{prefix}_loss"] = float(loss) / len(x)
        for metric in metrics:
            row.update(metric.compute())
        return row

    # ------------------------------------------------------------------ training
    @torch.inference_mode()
    def train_epoch(self) -> dict:
        """One pass over the shuffled training rows, then evaluation; returns the row."""
        self.dataset                     # loaded (and split) on first use: sets train_x
        cfg, protocol = self.config, self.protocol
        lr_scale = cfg.lr_schedule(self.epoch)
        start = time.perf_counter()
        train_x, train_y = self.train_x, self.train_y if self.labeled else None
        order = torch.randperm(len(train_x), generator=self.generator).to(train_x.device)
        correct = torch.zeros((), dtype=torch.int64, device=train_x.device)
        loss = torch.zeros((), dtype=torch.float64, device=train_x.device)
        sums: dict[str, Any] = {}
        predicted = False
        bar = _progress(range(0, len(order), cfg.batch_size), self.progress,
                        f"epoch {self.epoch + 1}/{cfg.epochs}")
        for start_idx in bar:
            idx = order[start_idx:start_idx + cfg.batch_size]
            x = train_x[idx]
            labels = train_y[idx] if train_y is not None else None
            target = self._one_hot(labels) if labels is not None else None
            result = protocol.train_step(x, target, self.generator, lr_scale,
                                         epoch=self.epoch, step=self.steps)
            self.steps += 1
            if labels is not None and result.prediction is not None:
                predicted = True
                correct += (result.prediction.argmax(dim=1) == labels).sum()
                loss += protocol.loss(result.prediction, target)
            for key, value in result.metrics.items():
                sums[key] = sums.get(key, 0.0) + value * len(x)
        train_time = time.perf_counter() - start
        running = (float(correct), float(loss)) if predicted else None
        evaluations = [self.evaluate(x, y, prefix, metrics)
                       for prefix, x, y, metrics in self.evaluation_plan()]
        return self.close_epoch(len(order), running, {k: float(v) for k, v in sums.items()},
                                evaluations, lr_scale, train_time, start)

    def evaluation_plan(self) -> list[tuple]:
        """What an epoch evaluates, in order: ``(prefix, x, labels, metrics)`` for the whole
        training set when ``train_accuracy = "full"``, the validation rows, the test set
        (the metrics with the last of these), or, with no held-out data, the metrics alone
        on the training inputs (labels None)."""
        plan = []
        labeled = self.labeled
        if labeled and self.config.train_accuracy == "full":
            plan.append(("train", self.train_x, self.train_y, ()))
        held_out = []
        if self.val_x is not None:
            held_out.append(("validation", self.val_x, self.val_y if labeled else None))
        if self.dataset.test_x is not None:
            held_out.append(("test", self.dataset.test_x,
                             self.dataset.test_y if labeled else None))
        if not held_out and self.metrics:
            held_out.append(("train", self.train_x, None))
        for i, (prefix, x, y) in enumerate(held_out):
            plan.append((prefix, x, y, self.metrics if i == len(held_out) - 1 else ()))
        return plan

    def close_epoch(self, rows: int, running: tuple | None, sums: Mapping[str, float],
                    evaluations: list[dict], lr_scale: float, train_time: float,
                    start: float) -> dict:
        """The epoch's row from its training pass over ``rows`` samples (``running``: the
        summed correct predictions and loss, or None; ``sums``: the rules' step metrics
        summed over samples) and the rows of :meth:`evaluation_plan`'s evaluations; appends
        it to the history and counts the epoch."""
        row = {"epoch": self.epoch + 1}
        full = self.labeled and self.config.train_accuracy == "full"
        if full:
            row.update(evaluations[0])
        elif running is not None and self.labeled:
            row["train_accuracy"] = running[0] / rows
            row["train_loss"] = running[1] / rows
        for key, value in sums.items():
            row[f"train_{key}"] = value / rows
        for evaluation in evaluations[1 if full else 0:]:
            row.update(evaluation)
        if "test_accuracy" in row:              # the papers report peaks (COPI)
            best, best_epoch = row["test_accuracy"], row["epoch"]
            for earlier in self.history.rows():
                value = earlier.get("test_accuracy", math.nan)
                if value == value and value >= best and not (value == best and
                                                             earlier["epoch"] > best_epoch):
                    best, best_epoch = value, int(earlier["epoch"])
            row["peak_test_accuracy"], row["peak_epoch"] = best, best_epoch
        row["lr_scale"] = lr_scale
        row["train_seconds"] = train_time
        row["seconds"] = time.perf_counter() - start
        self.epoch += 1
        self.history.append(row)
        return row

    def fit(self, run_dir, epochs: int | None = None, log=print, *,
            write: bool = True) -> History:
        """Train until ``epochs`` (default: the config's), checkpointing each epoch to run_dir
        (``write = False``: nothing is written, e.g. the other processes of a data-parallel
        run, whose first process writes)."""
        self.dataset            # load and check the data against the network before writing
        if write:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        if write and self.model_text is not None:
            # always the text this run trains (a stale model.toml from a failed or --force'd
            # earlier start in the same directory must not survive)
            write_text_atomic(run_dir / MODEL_FILE, self.model_text)
        target = self.config.epochs if epochs is None else epochs
        with _threads(self.config.threads):
            while self.epoch < target:
                row = self.train_epoch()
                if write:
                    self.save(run_dir)
                if log:
                    log(_format_row(row))
        self._leave_inference_mode()
        return self.history

    def _leave_inference_mode(self) -> None:
        """Rule and protocol state made during training are inference tensors, read-only
        outside ``torch.inference_mode``; hand them back as ordinary copies."""
        self.protocol.rules.load_state_dict(_copied(self.protocol.rules.state_dict()),
                                            self.where)
        self.protocol.load_state_dict(_copied(self.protocol.state_dict()))

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self) -> dict:
        """Everything a checkpoint holds to resume exactly: weights, biases, rule and protocol
        states, the random generator, progress, the metric history, the options, the data's
        digest and the validation split."""
        from ..io import capture_rng_state
        payload = {
            "network": dict(self.net.weights),
            "biases": dict(self.net.biases),
            "rules": self.protocol.rules.state_dict(),
            "protocol": self.protocol.state_dict(),
            "rng": capture_rng_state({"trainer": self.generator}),
            "progress": {"epoch": self.epoch, "steps": self.steps},
            "metrics": {k: torch.tensor(v, dtype=torch.float64)
                        for k, v in self.history.columns.items()},
            "options": {"overrides": repr(sorted(self.overrides.items())),
                        "training": repr(self.config.as_dict()),
                        "protocol": repr(self.protocol.config())},
        }
        if self._dataset is not None:
            payload["data"] = {"digest": self._data_digest()}
        if self.validation is not None:
            self.dataset
            payload["validation"] = {"indices": self.validation_indices}
        return payload

    def save(self, run_dir) -> Path:
        """Checkpoint to run_dir/run.h5 (atomically) and rewrite metrics.csv. The run.h5 this
        replaces, if this trainer wrote or loaded it, is kept as checkpoints/epoch_NNNN.h5;
        once the new run.h5 is complete, kept checkpoints beyond the newest
        ``keep_checkpoints - 1`` (and any of this or later epochs, or of another run) go."""
        from ..io import save_checkpoint
        from ..io.series import keep_copy, kept_path, prune
        run_dir = Path(run_dir)
        path = run_dir / RUN_FILE
        for kind, tensors in (("weights of projection", self.net.weights),
                              ("bias of population", self.net.biases)):
            for name, w in tensors.items():
                if not bool(torch.isfinite(w).all()):
                    raise NeurosimError(f'{kind} "{name}" became non-finite after epoch '
                                        f"{self.epoch}; not overwriting the last good checkpoint "
                                        f"{path}. Lower the learning rates or the step.")
        keep = self.config.keep_checkpoints
        mine = self._run_dir is not None and self._run_dir == run_dir.resolve()
        previous = self._run_file_epoch if mine else None
        if keep > 1 and previous is not None and previous < self.epoch and path.is_file():
            keep_copy(path, kept_path(run_dir, previous))
        save_checkpoint(path, self.state_payload(), kind="training",
                        config_text=self.model_text or "",
                        attrs={"overrides_json": _json(self.overrides), "epoch": self.epoch,
                               "base_dir": str(self.base_dir.resolve()) if self.base_dir else ""})
        self._run_dir, self._run_file_epoch = run_dir.resolve(), self.epoch
        write_text_atomic(run_dir / METRICS_FILE, _csv(self.history))
        prune(run_dir, keep=keep - 1 if mine else 0, before=self.epoch)
        return path

    @classmethod
    def resume(cls, run_dir, *, progress: bool = True, warn=None, **overrides) -> "Trainer":
        """Rebuild a trainer from run_dir/run.h5 exactly as it was after its last epoch (for
        a trainer built in Python, build it again and call :meth:`restore`). A damaged run.h5
        is passed over for the newest intact kept checkpoint, as in :meth:`restore`."""
        ckpt, skipped = cls._load_run(run_dir)
        path = ckpt.path
        if not ckpt.config_text:
            raise ConfigError(f"{path} was written by a Trainer built in Python, so it holds no "
                              "model text; build the same Trainer again and call "
                              "trainer.restore(run_dir).")
        saved = json.loads(ckpt.attrs.get("overrides_json", "{}"))
        saved.update({k: v for k, v in overrides.items() if v is not None})
        base_dir = ckpt.attrs.get("base_dir") or None     # where relative [data] paths point
        trainer = cls.from_model_text(ckpt.config_text, where=str(path), progress=progress,
                                      base_dir=base_dir, **saved)
        trainer._restore(ckpt.payload, path)
        trainer._adopt(run_dir, ckpt, skipped, warn)
        return trainer

    def restore(self, run_dir, *, warn=None) -> "Trainer":
        """Load run_dir/run.h5 into this trainer (same network, protocol, data, options).

        If run.h5 is damaged (missing, truncated, not HDF5, incomplete), the newest intact
        checkpoint in run_dir/checkpoints/ is loaded instead: ``warn`` (default: a line on
        stderr) is told which files were passed over and which was loaded, that checkpoint is
        put back at run.h5 and metrics.csv is cut to its epoch. With none intact, the error
        lists every file tried."""
        ckpt, skipped = self._load_run(run_dir)
        self._restore(ckpt.payload, ckpt.path)
        self._adopt(run_dir, ckpt, skipped, warn)
        return self

    @staticmethod
    def _load_run(run_dir):
        """(newest intact checkpoint of run_dir, damaged files passed over)."""
        from ..io import kept_checkpoints, load_newest
        run_dir = Path(run_dir)
        if not (run_dir / RUN_FILE).exists() and not kept_checkpoints(run_dir):
            raise NeurosimError(f"{run_dir} holds no {RUN_FILE}: it is not a training run "
                                "directory (start one with `neurosim train MODEL.toml --out "
                                f"{run_dir}`).")
        model = run_dir / MODEL_FILE
        again = (f"`neurosim train {model} --out {run_dir} --force`" if model.is_file()
                 else "Trainer.fit")
        return load_newest(run_dir, kind="training",
                           fix=f"none is intact, so the run cannot continue: start it again "
                               f"({again})")

    def _adopt(self, run_dir, ckpt, skipped, warn) -> None:
        """Note that run_dir's run.h5 holds this epoch (what save() keeps next). After a
        fallback: warn and put the loaded checkpoint back at run.h5. metrics.csv is made to
        match the checkpoint's history: cut to it after a fallback, completed when the run
        died between writing run.h5 and metrics.csv (save() writes them in that order)."""
        from ..io.series import keep_copy
        run_dir = Path(run_dir)
        if skipped:
            damaged = "; ".join(f"{path} is missing" if reason == "missing" else
                                f"{path} is damaged ({reason})" for path, reason in skipped)
            (warn or _warn)(f"{damaged}; continuing from {ckpt.path} (epoch {self.epoch}), "
                            f"which is now also {run_dir / RUN_FILE}")
            # a copy, not a link: damage to one of the two files then leaves the other
            keep_copy(ckpt.path, run_dir / RUN_FILE, link=False)
        metrics, text = run_dir / METRICS_FILE, _csv(self.history)
        try:
            current = metrics.read_text()
        except OSError:
            current = None
        if current != text:
            write_text_atomic(metrics, text)
        self._run_dir, self._run_file_epoch = run_dir.resolve(), self.epoch

    def _restore(self, payload: Mapping, path) -> None:
        """Load a checkpoint payload: everything is checked before anything is changed. Only
        the run's own generator is restored (torch's, numpy's and Python's global random
        states are left alone)."""
        from ..io import restore_rng_state
        net = self.net
        for group, tensors, what in (("network", net.weights, "projection"),
                                     ("biases", net.biases, "population")):
            saved = payload.get(group, {})
            for name, w in saved.items():
                if name not in tensors:
                    raise NeurosimError(f"{path}: checkpoint has {group} for unknown {what} "
                                        f'"{name}"; the model text and checkpoint disagree.')
                if tuple(torch.as_tensor(w).shape) != tuple(tensors[name].shape):
                    raise NeurosimError(f'{path}: {what} "{name}" has shape '
                                        f"{tuple(torch.as_tensor(w).shape)} in the checkpoint "
                                        f"but {tuple(tensors[name].shape)} in this model; the "
                                        "model and the checkpoint disagree.")
            missing = sorted(set(tensors) - set(saved)) if group == "network" else []
            if missing:
                raise NeurosimError(f"{path}: the checkpoint lacks the weights of {missing}; "
                                    "the model and the checkpoint disagree.")
        saved_protocol = payload.get("options", {}).get("protocol")
        if saved_protocol is not None and saved_protocol != repr(self.protocol.config()):
            raise NeurosimError(f"{path}: the checkpoint was trained with the protocol "
                                f"{saved_protocol}, this trainer has {self.protocol.config()!r}; "
                                "build it with the same protocol settings.")
        if "data" in payload and payload["data"]["digest"] != self._data_digest():
            raise NeurosimError(f"{path}: the training data differ from those the run was "
                                "trained on (their digest changed).")
        if "validation" in payload or self.validation is not None:
            self.dataset
            saved = payload.get("validation", {})
            if "indices" not in saved or self.validation_indices is None or \
                    not torch.equal(torch.as_tensor(saved["indices"]), self.validation_indices):
                raise NeurosimError(f"{path}: the checkpoint's validation split (or its absence) "
                                    "differs from the one this model and data give; the data or "
                                    "the [data] validation setting changed since the run "
                                    "started.")
        self.protocol.rules.load_state_dict(payload.get("rules", {}), str(path))
        self.protocol.load_state_dict(payload.get("protocol", {}))
        for group, tensors in (("network", net.weights), ("biases", net.biases)):
            for name, w in payload.get(group, {}).items():
                tensors[name].copy_(torch.as_tensor(w))
        restore_rng_state(payload["rng"], {"trainer": self.generator}, global_state=False)
        self.epoch = int(payload["progress"]["epoch"])
        self.steps = int(payload["progress"].get("steps", 0))
        self.history = History()
        for key, values in payload.get("metrics", {}).items():
            self.history.columns[key] = [float(v) for v in torch.as_tensor(values).tolist()]

    def _data_digest(self) -> str:
        """A fingerprint of the training rows (BLAKE2 of their bytes, computed once), stored
        with the validation split and checked on resume."""
        if self._digest is None:
            import hashlib
            digest = hashlib.blake2b(digest_size=16)
            for tensor in (self.dataset.train_x, self.dataset.train_y):
                if tensor is not None:
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._digest = digest.hexdigest()
        return self._digest


def _copied(tree):
    """A nested dict/list of tensors with every tensor cloned (outside inference mode)."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, Mapping):
        return {k: _copied(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_copied(v) for v in tree)
    return tree


@contextmanager
def _threads(count: int | None):
    """torch's intra-op thread count set to ``count`` for the block (restored after)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _warn(message: str) -> None:
    print(f"neurosim: warning: {message}", file=sys.stderr)


def _json(value) -> str:
    return json.dumps(value, sort_keys=True)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    # disable=None: no bar when stderr is not a terminal (CI logs, `> log 2>&1`); the epoch
    # lines that fit() prints stay
    return tqdm(iterable, desc=desc, leave=False, mininterval=0.5, unit="batch", disable=None)


def _csv(history: History) -> str:
    buffer = io.StringIO()
    keys = list(history.columns)
    front = [k for k in ("epoch", "train_accuracy", "test_accuracy") if k in keys]
    keys = front + [k for k in keys if k not in front]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys)
    for row in history.rows():
        writer.writerow([int(row["epoch"]) if k == "epoch" else f"{row[k]:.6g}" for k in keys])
    return buffer.getvalue()


def _format_row(row: dict) -> str:
    parts = [f"epoch {int(row['epoch'])}:"]
    for prefix in ("train", "validation", "test"):
        if f"{prefix}_accuracy" in row:
            parts.append(f"{prefix} {100 * row[f'{prefix}_accuracy']:.2f}%")
    if "test_loss" in row:
        parts.append(f"loss {row['test_loss']:.4f}")
    parts += [f"{k[6:]}={v:.1f}deg" for k, v in row.items() if k.startswith("angle_")]
    parts += [f"{k}={v:.4g}" for k, v in row.items()
              if k.startswith(("pc_alignment_", "train_rate_"))]
    return " ".join(parts) + f" ({row['seconds']:.1f}s)"
