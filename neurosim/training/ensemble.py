"""Seed ensembles: M copies of one model, trained as one batched network in one process.

Every member is an ordinary :class:`~neurosim.training.Trainer` built from the same model text
with its own seed, so it keeps its own initial weights, random generator (data order, nudge
signs), history, metrics and run directory. :meth:`CompiledNetwork.stacked` stacks the
members' weights, masks and biases along a leading member axis and makes each member's own
tensors views of the stacked ones; one protocol bound to the stacked network then steps every
member at once with batched matrix products (states M x batch x n, inputs M x batch x n_in,
each member's own mini-batch). Per step, for member m with generator g_m:

    batch_m = rows of its own permutation (drawn from g_m at the start of each epoch)
    W_m <- W_m + dW_m(batch_m, sign drawn from g_m)           (every member at once)

which is exactly member m's separate run (float64: equal up to rounding; tests check
1e-12). Evaluation runs every member on the same held-out rows in one batched pass (or,
when the stacked states would not fit in half the last-level cache, member by member);
metrics see each member's part of the state. ``Ensemble.fit(out)`` writes one ordinary run directory
per member, ``out/seed_<s>/`` (model.toml, metrics.csv, run.h5: ``neurosim resume``,
``inspect``, ``plot`` and ``table`` read them as any run); a member's ``seconds`` and
``train_seconds`` are the ensemble's time for the epoch, shared by all members.

Protocols (``ensemble_ready``: today "ep" with a fixed-step solver, "copi", "pepita" (fixed
or mirrored feedback, time-local or not), "backprop" and "feedback_alignment", "infomorphic",
"relax" without steady_tol; dense and convolutional layers) and rules (``ensemble_ready``:
"ep_contrastive", "corinfomax_lateral", "copi_forward", "decorrelation", "pepita",
"infomorphic_goal", and rules of your own such as examples/oja.py) declare that their
arithmetic broadcasts over the member axis; others are refused, and so are random activities
unless the protocol draws them per member (``ensemble_random_activities``). A rule's
state (PEPITA's momentum) is stacked from the members' by its ``stack_state`` and handed
back after every epoch by ``member_states``; a protocol's own state (fixed feedback
matrices drawn from each member's seed, optimiser buffers) is stacked by its
``stack_members`` and its counters handed back by ``share_members``. ``group_size`` splits
the members into groups of stacked networks stepped one after another (default,
:func:`auto_group_size`: on a CPU as many members per group as keep a group's weights within
half the last-level cache, on a GPU all).
"""
from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..dynamics import CompiledNetwork, NeuralState
from ..dynamics.fused import cache_bytes
from ..errors import ConfigError, NeurosimError
from ..graph import parse_model_text
from ..io.atomic import write_text_atomic
from ..metrics import MetricContext
from ..protocols import PROTOCOLS, LearningProtocol, build_protocol
from .allocator import keep_freed_blocks
from ..solvers import FixedStepSolver
from .trainer import MODEL_FILE, RUN_FILE, Trainer, _progress, _threads

MEMBER_DIR = re.compile(r"^seed_(-?\d+)$")
#: overrides members may differ in: the seed and settings that do not change the numbers
RUN_ONLY = ("seed", "threads", "device", "keep_checkpoints", "epochs")


def member_dir(out, seed: int) -> Path:
    """The run directory of the member with ``seed``: ``out/seed_<seed>``."""
    return Path(out) / f"seed_{int(seed)}"


class Ensemble:
    """M trainers of one model (different seeds) trained as one batched network (see
    neurosim.training.ensemble). ``members``: trainers built from the same model text and
    overrides up to ``seed``, at the same epoch."""

    def __init__(self, members: Sequence[Trainer], *, progress: bool = True,
                 group_size: int | None = None):
        self.members = list(members)
        self.progress = progress
        keep_freed_blocks()                 # stacked tensors: no page faults per step
        if not self.members:
            raise ConfigError("an ensemble needs at least one member (seeds = [0, 1, ...]).")
        first = self.members[0]
        self.where = first.where
        for i, member in enumerate(self.members[1:], 1):
            self._check_member(i, member)
        self._check_protocol(first)
        first.dataset                               # one copy of the data for all members
        for member in self.members[1:]:
            if member._dataset is None and first._data == member._data:
                member._dataset = first._dataset
                member._split()
        size = auto_group_size([m.net for m in self.members]) if group_size is None \
            else group_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"ensemble group_size must be a positive integer, got "
                              f"{group_size!r}.")
        cfg = first.config
        self.groups: list[tuple[slice, LearningProtocol]] = []
        for begin in range(0, len(self.members), size):
            part = slice(begin, min(begin + size, len(self.members)))
            net = CompiledNetwork.stacked([m.net for m in self.members[part]])
            protocol = build_protocol(first.protocol.config(), f"{self.where} [protocol]")
            protocol.bind(net, input=cfg.input, output=cfg.output, seed=cfg.seed)
            protocol.stack_members([m.protocol for m in self.members[part]])
            own = {key: rule for key, _, rule in protocol.rules.entries}
            for key, rule in own.items():
                rule.stack_state([self._rule(m, key).state_dict()
                                  for m in self.members[part]])
            self.groups.append((part, protocol))

    # ------------------------------------------------------------------ building
    @classmethod
    def from_model_text(cls, model_text: str, seeds: Sequence[int], *, where: str = "model",
                        progress: bool = True, base_dir=None, group_size: int | None = None,
                        **overrides) -> "Ensemble":
        """One member per seed from a model file's text (``overrides`` as in
        :meth:`Trainer.from_model_text`, the same for every member)."""
        seeds = check_seeds(seeds, where)
        overrides.pop("seed", None)
        members = [Trainer.from_model_text(model_text, where=where, progress=False,
                                           base_dir=base_dir, seed=seed, **overrides)
                   for seed in seeds]
        return cls(members, progress=progress, group_size=group_size)

    @classmethod
    def from_model_file(cls, path, seeds: Sequence[int], **kwargs) -> "Ensemble":
        """One member per seed from a model file (its directory is the ``base_dir``)."""
        from ..graph import load_model_file
        model = load_model_file(path)
        return cls.from_model_text(model.text, seeds, where=str(model.path),
                                   base_dir=model.path.parent, **kwargs)

    @classmethod
    def resume(cls, out, *, progress: bool = True, warn=None, group_size: int | None = None,
               **overrides) -> "Ensemble":
        """Continue an ensemble from its member run directories ``out/seed_<s>`` (each
        restored as :meth:`Trainer.resume` does; all must be at the same epoch)."""
        dirs = member_dirs(out)
        members = [Trainer.resume(d, progress=False, warn=warn, **overrides) for d in dirs]
        epochs = {d.name: m.epoch for d, m in zip(dirs, members)}
        if len(set(epochs.values())) > 1:
            raise NeurosimError(f"{out}: the members stopped at different epochs ({epochs}); "
                                "resume the ones behind one by one (`neurosim resume DIR "
                                "--epochs N`) until they agree, then resume the ensemble.")
        return cls(members, progress=progress, group_size=group_size)

    def _check_member(self, i: int, member: Trainer) -> None:
        first = self.members[0]

        def same(trainer):              # what decides the numbers; not run-only settings
            settings = {k: v for k, v in trainer.overrides.items() if k not in RUN_ONLY}
            if trainer.model_text is not None:       # the model's tables, [training] seed aside
                tables = parse_model_text(trainer.model_text, trainer.where)
                if isinstance(tables.get("training"), dict):
                    tables["training"].pop("seed", None)
                return tables, sorted(settings.items())
            config = trainer.config.as_dict()
            config.pop("seed", None)
            return repr(config), repr(trainer.protocol.config())
        if same(member) != same(first):
            raise ConfigError(f"ensemble member {i} is not the model of member 0: members "
                              "differ only in their seeds ([training] seed or the seed "
                              "override); train other settings as separate runs or in a "
                              "sweep.")
        if member.epoch != first.epoch:
            raise ConfigError(f"ensemble member {i} is at epoch {member.epoch}, member 0 at "
                              f"{first.epoch}; members train in step.")

    def _check_protocol(self, first: Trainer) -> None:
        check_ensemble_ready(first, self.where)

    @staticmethod
    def _rule(member: Trainer, key: str):
        return next(rule for k, _, rule in member.protocol.rules.entries if k == key)

    def _check_finite(self) -> None:
        """Before any member is saved: every member's weights and biases finite (else no
        member's checkpoint moves on, so the folder stays at one epoch)."""
        bad = [m.config.seed for m in self.members
               if not all(bool(torch.isfinite(t).all()) for table in (m.net.weights,
                                                                      m.net.biases)
                          for t in table.values())]
        if bad:
            raise NeurosimError(f"ensemble members with seeds {bad} became non-finite after "
                                f"epoch {self.epoch}; no member's checkpoint was overwritten. "
                                "Lower the learning rates or the step, or leave those seeds "
                                "out.")

    def _share_rule_states(self) -> None:
        """Give each member's own rules their part of the ensemble's rule states (what a
        checkpoint of the member saves)."""
        for part, protocol in self.groups:
            members = self.members[part]
            protocol.share_members([m.protocol for m in members])
            for key, _, rule in protocol.rules.entries:
                for member, state in zip(members, rule.member_states(len(members))):
                    self._rule(member, key).load_state_dict(state)

    # ------------------------------------------------------------------ training
    @property
    def seeds(self) -> list[int]:
        """The members' seeds."""
        return [m.config.seed for m in self.members]

    @property
    def epoch(self) -> int:
        """Epochs trained (the same for every member)."""
        return self.members[0].epoch

    @torch.inference_mode()
    def train_epoch(self) -> list[dict]:
        """One epoch for every member (each through its own shuffled rows), then one batched
        evaluation; returns the members' rows (each also appended to its history)."""
        members = self.members
        first = members[0]
        cfg = first.config
        lr_scale = cfg.lr_schedule(first.epoch)
        start = time.perf_counter()
        labeled = first.labeled
        orders = [torch.randperm(len(m.train_x), generator=m.generator).to(m.train_x.device)
                  for m in members]
        rows = len(orders[0])
        generators = [m.generator for m in members]
        count = len(members)
        correct = torch.zeros(count, dtype=torch.int64)
        loss = torch.zeros(count, dtype=torch.float64)
        sums: list[dict] = [{} for _ in members]
        predicted = False
        bar = _progress(range(0, rows, cfg.batch_size), self.progress,
                        f"epoch {first.epoch + 1}/{cfg.epochs} ({count} members)")
        for begin in bar:
            index = [order[begin:begin + cfg.batch_size] for order in orders]
            x = torch.stack([m.train_x[i] for m, i in zip(members, index)])
            labels = torch.stack([m.train_y[i] for m, i in zip(members, index)]) \
                if labeled else None
            target = first._one_hot(labels) if labels is not None else None
            for part, protocol in self.groups:
                result = protocol.train_step(x[part], target[part] if labels is not None
                                             else None, generators[part], lr_scale,
                                             epoch=first.epoch, step=first.steps)
                if labels is not None and result.prediction is not None:
                    predicted = True
                    correct[part] += (result.prediction.argmax(dim=-1) ==
                                      labels[part]).sum(dim=-1).cpu()
                    for j, k in enumerate(range(part.start, part.stop)):
                        loss[k] += float(protocol.loss(result.prediction[j], target[k]))
                for key, value in result.metrics.items():
                    for j, k in enumerate(range(part.start, part.stop)):
                        share = value[j] if torch.is_tensor(value) and value.dim() > 0 \
                            else value
                        sums[k][key] = sums[k].get(key, 0.0) + float(share) * x.shape[-2]
            for m in members:
                m.steps += 1
        train_time = time.perf_counter() - start
        self._share_rule_states()
        plans = [m.evaluation_plan() for m in members]
        evaluations = [[] for _ in members]
        for j, (prefix, _, _, _) in enumerate(plans[0]):
            xs = [plan[j][1] for plan in plans]
            ys = [plan[j][2] for plan in plans]
            for k, row in enumerate(self.evaluate(xs, ys, prefix,
                                                  [plan[j][3] for plan in plans])):
                evaluations[k].append(row)
        return [m.close_epoch(rows, (float(correct[k]), float(loss[k])) if predicted else None,
                              sums[k], evaluations[k], lr_scale, train_time, start)
                for k, m in enumerate(members)]

    @torch.inference_mode()
    def evaluate(self, xs: Sequence[torch.Tensor], labels: Sequence[torch.Tensor | None],
                 prefix: str, metrics: Sequence = ()) -> list[dict]:
        """Each member's ``<prefix>_accuracy`` / ``_loss`` and metric columns (as
        :meth:`Trainer.evaluate`) on its rows ``xs[m]`` (one tensor shared by every member
        when they are the same rows): one batched pass per evaluation batch, or, when the
        members' stacked states would exceed half the last-level cache, each member's own
        :meth:`Trainer.evaluate`."""
        members = self.members
        first = members[0]
        size, count = first.config.eval_batch_size, len(members)
        metrics = list(metrics) if metrics else [() for _ in members]
        net = first.net
        itemsize = torch.empty((), dtype=net.dtype).element_size()
        stacked = count * min(size, len(xs[0])) * (net.n_all + net.n_dyn) * itemsize
        if stacked > cache_bytes() // 2:
            # stacked states beyond half the last-level cache: each member's own evaluation
            # (its protocol reads views of the stacked weights), exactly its separate run's;
            # batched passes over such states ran at 0.45x the members' own (PEPITA conv
            # MNIST, 5 members, 477 MB) and 0.88x (infomorphic MNIST, 5 members, 20 MB)
            return [m.evaluate(x, y, prefix, own)
                    for m, x, y, own in zip(members, xs, labels, metrics)]
        shared = all(x is xs[0] for x in xs) and all(y is labels[0] for y in labels)
        x_all = xs[0] if shared else torch.stack(list(xs))
        y_all = labels[0] if shared or labels[0] is None else torch.stack(list(labels))
        supervised = labels[0] is not None and first.protocol.supervised
        correct = torch.zeros(count, dtype=torch.int64)
        loss = torch.zeros(count, dtype=torch.float64)
        for m, own in zip(members, metrics):
            for metric in own:
                metric.reset(MetricContext(m.net, m.protocol, m.train_x))
        n = x_all.shape[-2]
        for begin in range(0, n, size):
            xb = x_all[..., begin:begin + size, :]
            yb = y_all[..., begin:begin + size] if y_all is not None else None
            for part, protocol in self.groups:
                state = protocol.infer(xb if shared else xb[part])
                for j, k in enumerate(range(part.start, part.stop)):
                    x_k = xb if shared else xb[k]
                    y_k = None if yb is None else (yb if shared else yb[k])
                    if supervised:
                        out = protocol.net.r_of(state, protocol.output)[j]
                        correct[k] += int((out.argmax(dim=-1) == y_k).sum())
                        loss[k] += float(protocol.loss(out, first._one_hot(y_k)))
                    if metrics[k]:
                        view = NeuralState(state.u[j], state.r[j], members[k].net)
                        for metric in metrics[k]:
                            metric.observe(view, x_k, y_k)
        rows = []
        for k, own in enumerate(metrics):
            row = {}
            if supervised:
                row[f"{prefix}_accuracy"] = float(correct[k]) / n
                row[f"{prefix}_loss"] = float(loss[k]) / n
            for metric in own:
                row.update(metric.compute())
            rows.append(row)
        return rows

    def fit(self, out, epochs: int | None = None, log=print) -> list:
        """Train every member until ``epochs`` (default: the config's), writing member m's
        run directory ``out/seed_<s_m>`` after each epoch; returns the members' histories."""
        first = self.members[0]
        first.dataset
        out = Path(out)
        dirs = [member_dir(out, s) for s in self.seeds]
        if len(set(dirs)) != len(dirs):
            raise ConfigError(f"ensemble seeds {self.seeds} repeat a seed; each member needs "
                              "its own seed (and run directory).")
        for m, d in zip(self.members, dirs):
            d.mkdir(parents=True, exist_ok=True)
            if m.model_text is not None:
                write_text_atomic(d / MODEL_FILE, m.model_text)
        target = first.config.epochs if epochs is None else epochs
        with _threads(first.config.threads):
            while self.epoch < target:
                rows = self.train_epoch()
                self._check_finite()
                for m, d in zip(self.members, dirs):
                    m.save(d)
                if log:
                    log(summary_line(rows))
        for m in self.members:
            m._leave_inference_mode()
        return [m.history for m in self.members]


def auto_group_size(nets: Sequence[CompiledNetwork]) -> int:
    """Members per stacked network: all of them on a GPU; on a CPU as many as keep the
    group's weights within half the last-level cache (one member's weights are read
    whole at every step, so a group that fits stays cached: measured 1.25x -> 1.58x
    for 10 CorInfoMax MNIST members on a 32 MiB cache), in groups of equal size."""
    count = len(nets)
    if nets[0].device.type != "cpu":
        return count
    member = sum(t.numel() * t.element_size() for table in (nets[0].weights, nets[0].biases)
                 for t in table.values())
    per_group = max(1, (cache_bytes() // 2) // max(member, 1))
    groups = math.ceil(count / per_group)
    return math.ceil(count / groups)


def check_ensemble_ready(trainer: Trainer, where: str) -> None:
    """ConfigError unless ``trainer``'s model can train as an ensemble: an ensemble-ready
    protocol with a fixed-step solver, ensemble-ready rules, and deterministic activities
    unless the protocol draws random ones per member."""
    protocol = trainer.protocol
    if not protocol.ensemble_ready:
        ready = ", ".join(sorted(n for n, c in PROTOCOLS.items() if c.ensemble_ready))
        raise ConfigError(f'{where}: protocol "{protocol.name}" does not run as an '
                          f"ensemble yet (ensembles: {ready}); train its seeds as separate "
                          "runs (neurosim train --seed S) or in a sweep.")
    solver = getattr(protocol, "solver", None)
    if solver is not None and not isinstance(solver, FixedStepSolver):
        raise ConfigError(f'{where}: solver "{solver.name}" adapts its steps to each '
                          "network, so an ensemble cannot step its members together; use a "
                          "fixed-step solver (gs-euler, euler, heun, rk4).")
    for key, _, rule in protocol.rules.entries:
        if not rule.ensemble_ready:
            raise ConfigError(f'{where}: rule "{rule.name}" on {key.split(".")[0]} '
                              "does not run in an ensemble (it must handle a leading "
                              "member axis and stack its state: ensemble_ready = True); "
                              "train the seeds as separate runs.")
    stochastic = [] if protocol.ensemble_random_activities else \
        [s.name for s in trainer.net.slots.values() if s.stochastic]
    if stochastic:
        raise ConfigError(f'{where}: protocol "{protocol.name}" is not known to draw random '
                          "activities from each member's own generator "
                          "(ensemble_random_activities), and this network has populations "
                          f"with random activities ({', '.join(stochastic)}). Train its seeds "
                          "as separate runs or in a sweep.")


def check_seeds(seeds, where: str = "ensemble") -> list[int]:
    """Distinct integer seeds, at least one; ConfigError otherwise."""
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds {seeds} repeat a seed; give each member its own.")
    return seeds


def member_dirs(out) -> list[Path]:
    """The member run directories ``out/seed_<s>`` of an ensemble, by seed."""
    out = Path(out)
    if not out.is_dir():
        raise NeurosimError(f"{out} does not exist: no ensemble to resume there.")
    found = sorted((int(MEMBER_DIR.match(d.name).group(1)), d) for d in out.iterdir()
                   if d.is_dir() and MEMBER_DIR.match(d.name) and (d / RUN_FILE).exists())
    if not found:
        raise NeurosimError(f"{out} holds no member run directories (seed_<s>/run.h5); start "
                            "an ensemble with `neurosim train MODEL --seeds 0-9 --out DIR`.")
    return [d for _, d in found]


def summary_line(rows: Sequence[Mapping]) -> str:
    """One log line for an ensemble's epoch: the members' test (else validation, else
    training) accuracy as mean +- std, min and max, and the epoch's time."""
    for key in ("test_accuracy", "validation_accuracy", "train_accuracy"):
        values = [100 * r[key] for r in rows if key in r and not math.isnan(r[key])]
        if values:
            break
    line = f"epoch {int(rows[0]['epoch'])} ({len(rows)} members)"
    if values:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        line += (f"  {key} {statistics.fmean(values):.2f} +- {spread:.2f} % "
                 f"(min {min(values):.2f}, max {max(values):.2f})")
    return line + f"  {rows[0]['seconds']:.1f} s"
