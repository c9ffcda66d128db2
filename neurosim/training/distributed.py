"""Data-parallel training across processes with torch.distributed (gloo on CPUs, NCCL on GPUs).

Every process runs the same Trainer (same seed, so the same data order and the same batches)
with its protocol wrapped in :class:`DataParallel`. For a batch of B rows, process r of W takes
the n_r = |[r B / W, (r + 1) B / W)| rows of its shard, runs the protocol's step on them, and
then every tensor the step changed (weights and biases) is set to

    p <- p_before + sum_r (n_r / B) (p_r - p_before)        (one all-reduce per tensor)

For a step whose change is a batch mean of per-sample terms, e.g. COPI's forward rule
dW = eta (<z x^T> - W diag<x^2>) and its decorrelation dR = -eta C_off R, C = <x x^T>, the
mean of the W shard means is the whole batch's mean: the step equals one process's step on
the whole batch (up to rounding). Protocols and rules say so with ``batch_linear``
(:func:`check_batch_linear`); others (Adam, running statistics, per-batch normalisations,
random draws whose shape follows the batch) are refused. The shards' predictions are
gathered in rank order, so the running training accuracy is the whole batch's.

    torch.distributed.init_process_group("gloo", rank=r, world_size=W)   # or torchrun's env
    trainer = Trainer.from_model_text(text, progress=False)
    trainer.protocol = DataParallel(trainer.protocol)
    trainer.train_epoch()           # identical weights on every process
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..protocols.base import LearningProtocol, StepOutput


def _declares_batch_linear(obj) -> bool:
    """An object's ``batch_linear`` (an attribute or a property; False when absent)."""
    linear = getattr(obj, "batch_linear", False)
    return bool(linear() if callable(linear) else linear)


def check_batch_linear(protocol) -> None:
    """ConfigError unless the protocol and every rule it runs declare that a step's change
    is a batch mean of per-sample terms (``batch_linear``), with no rule state."""
    name = getattr(protocol, "name", type(protocol).__name__)
    if not _declares_batch_linear(protocol):
        raise ConfigError(f'data-parallel training: protocol "{name}" does not declare its step '
                          "a batch mean of per-sample terms (batch_linear), so averaging the "
                          "processes' updates would not equal one step on the whole batch. "
                          'Supported: "copi" with rules that declare it.')
    for rule in getattr(protocol, "rules", ()):
        if not _declares_batch_linear(rule):
            raise ConfigError(f'data-parallel training: rule "{rule.name}" ({rule!r}) is not '
                              "batch-linear (e.g. it normalises by batch statistics or keeps "
                              "state); train it in one process.")
        if rule.state_dict():
            raise ConfigError(f'data-parallel training: rule "{rule.name}" keeps state, which '
                              "the processes would not share; train it in one process.")


class DataParallel(LearningProtocol):
    """Wraps a bound, batch-linear protocol for data-parallel training (module docstring)."""

    def __init__(self, inner: LearningProtocol, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("data-parallel training needs torch.distributed initialised "
                              "(torch.distributed.init_process_group, or run under torchrun).")
        if isinstance(inner, DataParallel):
            raise ConfigError("the protocol is already wrapped in DataParallel.")
        if inner.net is None:
            raise ConfigError("DataParallel wraps a protocol bound to a network (a Trainer's).")
        check_batch_linear(inner)
        self.inner, self.group = inner, group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        # the group's last process: it takes rows of every non-empty batch
        self.last = self.world - 1 if group is None else dist.get_global_rank(group,
                                                                              self.world - 1)
        self.name, self.phases, self.supervised = inner.name, inner.phases, inner.supervised
        self.net, self.input, self.output = inner.net, inner.input, inner.output
        self.rules = inner.rules

    def __getattr__(self, name):
        """Everything else (e.g. COPI's chain, read by metrics) from the wrapped protocol."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _tensors(self) -> list[torch.Tensor]:
        net = self.net
        return [net.weights[k] for k in sorted(net.weights)] + \
               [net.biases[k] for k in sorted(net.biases)]

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """This process's shard of the batch, then the processes' changes averaged."""
        batch = x.shape[0]
        lo, hi = self.rank * batch // self.world, (self.rank + 1) * batch // self.world
        tensors = self._tensors()
        before = [t.clone() for t in tensors]
        out = None
        if hi > lo:                 # a batch smaller than the number of processes: idle
            out = self.inner.train_step(x[lo:hi], None if target is None else target[lo:hi],
                                        generator, lr_scale, epoch=epoch, step=step)
        share = (hi - lo) / batch
        for t, b in zip(tensors, before):
            delta = (t - b).mul_(share)
            dist.all_reduce(delta, group=self.group)
            t.copy_(b.add_(delta))
        prediction = self._gather(out.prediction if out is not None else None, hi - lo, x)
        metrics = {}
        names = sorted(out.metrics) if out is not None else []
        names = self._broadcast_names(names)
        for key in names:
            value = float(out.metrics[key]) * (hi - lo) if out is not None else 0.0
            total = torch.tensor(value, dtype=torch.float64, device=self.net.device)
            dist.all_reduce(total, group=self.group)
            metrics[key] = float(total) / batch
        return StepOutput(prediction, metrics)

    def _broadcast_names(self, names: list[str]) -> list[str]:
        """The metric names of the processes that stepped (the last always does)."""
        box = [names]
        dist.broadcast_object_list(box, src=self.last, group=self.group)
        return box[0]

    def _gather(self, prediction, rows: int, x) -> torch.Tensor | None:
        """The shards' predictions in rank order (shards may differ by one row)."""
        sizes = [self.rank_rows(r, x.shape[0]) for r in range(self.world)]
        width = None if prediction is None else prediction.shape[1]
        box = [width]
        dist.broadcast_object_list(box, src=self.last, group=self.group)
        if box[0] is None:
            return None
        width, largest = box[0], max(sizes)
        padded = torch.zeros(largest, width, dtype=self.net.dtype, device=self.net.device)
        if prediction is not None:
            padded[:rows] = prediction
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    def rank_rows(self, rank: int, batch: int) -> int:
        """Rows of a batch of ``batch`` that process ``rank`` takes."""
        return (rank + 1) * batch // self.world - rank * batch // self.world

    def infer(self, x):
        """The wrapped protocol's inference (every process holds the same weights)."""
        return self.inner.infer(x)

    def predict(self, x):
        """The wrapped protocol's prediction."""
        return self.inner.predict(x)

    def loss(self, prediction, target):
        """The wrapped protocol's loss."""
        return self.inner.loss(prediction, target)

    def state_dict(self) -> dict:
        """The wrapped protocol's state."""
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        """Restore the wrapped protocol's state."""
        self.inner.load_state_dict(state)

    def config(self) -> dict:
        """The wrapped protocol's [protocol] table."""
        return self.inner.config()


def init_from_environment(device: str = "cpu") -> tuple[int, int, str]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT, LOCAL_RANK): gloo on CPUs; on GPUs NCCL, each process on cuda:LOCAL_RANK.
    Returns (rank, world size, the device this process trains on)."""
    import os
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ConfigError(f"--distributed: the environment lacks {', '.join(missing)}; start the "
                          "processes with torchrun, e.g. torchrun --nproc-per-node 2 -m "
                          "neurosim.cli train MODEL --out DIR --distributed.")
    gpu = str(device).startswith("cuda")
    if gpu:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), str(device)


__all__ = ["DataParallel", "check_batch_linear", "init_from_environment"]
