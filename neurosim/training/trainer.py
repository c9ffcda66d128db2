"""Training runs: epochs of a learning protocol, metrics, checkpoints and exact resume.

A run directory holds
    model.toml    the model file the run was started from (exact text)
    run.h5        checkpoint after the last finished epoch (atomic rewrite): weights, rule
                  states, RNG states, progress, per-epoch metrics (/metrics/<name>)
    metrics.csv   one row per epoch: epoch,train_accuracy,test_accuracy,train_loss,
                  test_loss,angle_<ff>_<fb>...,corrinfo_<layer>...,lr_scale,seconds
                  (corrinfo: log det(R + eps I) of each pyramidal layer's free-phase
                  correlation R = <r r^T> on the test set, spec section 7)

Resuming from run.h5 repeats exactly what an uninterrupted run computes: the data order and
nudge signs come from one torch.Generator whose state is checkpointed with every other RNG.
"""
from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..dynamics import CompiledNetwork
from ..errors import ConfigError, NeurosimError
from ..graph import PyramidalPopulation, parse_model_text
from ..solvers import get_solver, make_schedule
from .config import TrainingConfig, build_network, data_config, training_config
from .ep import EquilibriumPropagation

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
        keys = list(self.columns)
        for i in range(len(self)):
            yield {k: self.columns[k][i] for k in keys}


def reciprocal_pairs(net: CompiledNetwork) -> list[tuple[str, str]]:
    """(forward, feedback) plastic projections between the same two populations in opposite
    directions, e.g. CorInfoMax's (ff2, fb1); their angle measures weight (a)symmetry."""
    pairs = []
    projs = [p for p in net.network.projections if p.name in net.weights and p.rules]
    for a in projs:
        for b in projs:
            if a.source == b.target and a.target == b.source and a.source != a.target \
                    and a.compartment == "basal":
                pairs.append((a.name, b.name))
    return pairs


def weight_angle(a: torch.Tensor, b_transposed: torch.Tensor) -> float:
    """Angle in degrees between matrices: cos = tr(A^T B) / (|A|_F |B|_F).

    Computed as 2 atan2(|a - b|, |a + b|) on the normalised matrices, which is accurate at
    every angle (acos of the rounded cosine is not near 0 and 180 degrees): exactly 0 for
    equal matrices, 180 for opposite ones."""
    a, b = a.double(), b_transposed.double()
    a, b = a / a.norm(), b / b.norm()
    return math.degrees(2.0 * math.atan2(float((a - b).norm()), float((a + b).norm())))


class Trainer:
    """Builds network, protocol and data from a model file's text and trains epoch by epoch."""

    def __init__(self, model_text: str, *, where: str = "model", progress: bool = True,
                 **overrides):
        self.model_text, self.where = model_text, where
        data = parse_model_text(model_text, where)
        self.config: TrainingConfig = training_config(data, where, **overrides)
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.network = build_network(data, where)
        self.net = CompiledNetwork(self.network, dtype=cfg.torch_dtype, device=cfg.device,
                                   seed=cfg.seed)
        self.protocol = EquilibriumPropagation(
            self.net, input=cfg.input, output=cfg.output, solver=get_solver(cfg.solver),
            schedule=make_schedule(cfg.step, f"{where} [training] step"), T_free=cfg.T_free,
            T_nudged=cfg.T_nudged, beta=cfg.beta, random_sign=cfg.random_sign)
        self.data_spec = data_config(data, where)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history = History()
        self.progress = progress
        self._dataset = None

    # ------------------------------------------------------------------ data
    @property
    def dataset(self):
        if self._dataset is None:
            from ..data import load_dataset
            spec = self.data_spec
            kwargs = {k: spec[k] for k in ("root", "normalization") if k in spec}
            ds = load_dataset(spec["dataset"], dtype=self.config.torch_dtype, **kwargs)
            self._dataset = ds.to(self.config.torch_dtype, self.config.device)
            n_in = self.net.slots[self.config.input].size
            n_out = self.net.slots[self.config.output].size
            if ds.train_x.shape[1] != n_in or ds.n_classes != n_out:
                raise ConfigError(
                    f'{self.where}: dataset "{spec["dataset"]}" has {ds.train_x.shape[1]} '
                    f"inputs and {ds.n_classes} classes but the network's input "
                    f'"{self.config.input}" has {n_in} and output "{self.config.output}" '
                    f"{n_out} neurons; fix sizes in the model file.")
        return self._dataset

    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        n_out = self.net.slots[self.config.output].size
        return torch.nn.functional.one_hot(labels, n_out).to(self.config.torch_dtype)

    # ------------------------------------------------------------------ training
    @property
    def layers(self) -> list[str]:
        """Pyramidal populations (the layers whose correlative information is recorded)."""
        return [p.name for p in self.network.populations if isinstance(p, PyramidalPopulation)]

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor,
                 correlations: bool = False) -> tuple[float, float, dict]:
        """(accuracy, loss, info) of free-phase predictions, argmax of the output (first on
        ties); loss = 0.5 |r_out - onehot(y)|^2 averaged over samples. With ``correlations``,
        info maps "corrinfo_<layer>" to the layer's correlative information
        log det(R + eps I), R = <r r^T> over the samples of x (float64)."""
        net, protocol, size = self.net, self.protocol, self.config.eval_batch_size
        correct = torch.zeros((), dtype=torch.int64, device=x.device)
        loss = torch.zeros((), dtype=torch.float64, device=x.device)
        moments = {}
        for start in range(0, len(x), size):
            xb, yb = x[start:start + size], y[start:start + size]
            state = protocol.relax(xb)
            out = net.r_of(state, protocol.output)
            correct += (out.argmax(dim=1) == yb).sum()
            loss += 0.5 * ((out - self._one_hot(yb)) ** 2).sum(dtype=torch.float64)
            for layer in self.layers if correlations else ():
                r = net.r_of(state, layer).to(torch.float64)
                moments[layer] = moments[layer].addmm_(r.T, r) if layer in moments else r.T @ r
        info = {}
        for layer, moment in moments.items():
            eye = torch.eye(moment.shape[0], dtype=torch.float64, device=moment.device)
            value = torch.linalg.slogdet(moment / len(x) + self.config.correlative_information_eps * eye)
            info[f"corrinfo_{layer}"] = float(value.logabsdet)
        return float(correct) / len(x), float(loss) / len(x), info

    @torch.inference_mode()
    def train_epoch(self) -> dict:
        """One pass over the shuffled training set, then evaluation; returns the metrics row."""
        cfg, ds = self.config, self.dataset
        lr_scale = cfg.lr_schedule(self.epoch)
        start = time.perf_counter()
        order = torch.randperm(len(ds.train_x), generator=self.generator).to(ds.train_x.device)
        correct = torch.zeros((), dtype=torch.int64, device=ds.train_x.device)
        loss = torch.zeros((), dtype=torch.float64, device=ds.train_x.device)
        batches = range(0, len(order), cfg.batch_size)
        bar = _progress(batches, self.progress, f"epoch {self.epoch + 1}/{cfg.epochs}")
        for start_idx in bar:
            idx = order[start_idx:start_idx + cfg.batch_size]
            x, labels = ds.train_x[idx], ds.train_y[idx]
            target = self._one_hot(labels)
            result = self.protocol.train_step(x, target, self.generator, lr_scale)
            correct += (result.free_output.argmax(dim=1) == labels).sum()
            loss += 0.5 * ((result.free_output - target) ** 2).sum(dtype=torch.float64)
        train_time = time.perf_counter() - start
        row = {"epoch": self.epoch + 1}
        if cfg.train_accuracy == "full":
            row["train_accuracy"], row["train_loss"], _ = self.evaluate(ds.train_x, ds.train_y)
        else:
            row["train_accuracy"] = float(correct) / len(order)
            row["train_loss"] = float(loss) / len(order)
        row["test_accuracy"], row["test_loss"], info = self.evaluate(
            ds.test_x, ds.test_y, correlations=cfg.correlative_information)
        for fwd, fb in reciprocal_pairs(self.net):
            row[f"angle_{fwd}_{fb}"] = weight_angle(self.net.weights[fwd],
                                                    self.net.weights[fb].T)
        row.update(info)
        row["lr_scale"] = lr_scale
        row["train_seconds"] = train_time
        row["seconds"] = time.perf_counter() - start
        self.epoch += 1
        self.history.append(row)
        return row

    def fit(self, run_dir, epochs: int | None = None, log=print) -> History:
        """Train until ``epochs`` (default: the config's), checkpointing each epoch to run_dir."""
        run_dir = Path(run_dir)
        self.dataset            # load and check the data against the network before writing
        run_dir.mkdir(parents=True, exist_ok=True)
        # always the text this run trains (a stale model.toml from a failed or --force'd
        # earlier start in the same directory must not survive)
        _atomic_text(run_dir / MODEL_FILE, self.model_text)
        target = self.config.epochs if epochs is None else epochs
        while self.epoch < target:
            row = self.train_epoch()
            self.save(run_dir)
            if log:
                log(_format_row(row))
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state_payload(self) -> dict:
        from ..io import capture_rng_state
        rules = {}
        for proj in self.network.projections:
            for i, rule in enumerate(proj.rules):
                state = rule.state_dict()
                if state:
                    rules[f"{proj.name}.{i}"] = state
        return {
            "network": {name: w for name, w in self.net.weights.items()},
            "rules": rules,
            "rng": capture_rng_state({"trainer": self.generator}),
            "progress": {"epoch": self.epoch},
            "metrics": {k: torch.tensor(v, dtype=torch.float64)
                        for k, v in self.history.columns.items()},
            "options": {"overrides": repr(sorted(self.overrides.items())),
                        "training": repr(self.config.as_dict())},
        }

    def save(self, run_dir) -> Path:
        from ..io import save_checkpoint
        path = Path(run_dir) / RUN_FILE
        for name, w in self.net.weights.items():
            if not bool(torch.isfinite(w).all()):
                raise NeurosimError(f'weights of projection "{name}" became non-finite after '
                                    f"epoch {self.epoch}; not overwriting the last good "
                                    f"checkpoint {path}. Lower the learning rates or the step.")
        save_checkpoint(path, self.state_payload(), kind="training", config_text=self.model_text,
                        attrs={"overrides_json": _json(self.overrides), "epoch": self.epoch})
        _atomic_text(Path(run_dir) / METRICS_FILE, _csv(self.history))
        return path

    @classmethod
    def resume(cls, run_dir, *, progress: bool = True, **overrides) -> "Trainer":
        """Rebuild a trainer from run_dir/run.h5 exactly as it was after its last epoch."""
        import json
        from ..io import load_checkpoint, restore_rng_state
        path = Path(run_dir) / RUN_FILE
        if not path.exists():
            raise NeurosimError(f"{run_dir} holds no {RUN_FILE}: it is not a training run "
                                "directory (start one with `neurosim train MODEL.toml --out "
                                f"{run_dir}`).")
        ckpt = load_checkpoint(path, kind="training")
        saved = json.loads(ckpt.attrs.get("overrides_json", "{}"))
        saved.update({k: v for k, v in overrides.items() if v is not None})
        trainer = cls(ckpt.config_text, where=str(path), progress=progress, **saved)
        payload = ckpt.payload
        for name, w in payload["network"].items():
            if name not in trainer.net.weights:
                raise NeurosimError(f"{path}: checkpoint has weights for unknown projection "
                                    f'"{name}"; the model text and checkpoint disagree.')
            trainer.net.weights[name].copy_(torch.as_tensor(w))
        for proj in trainer.network.projections:
            for i, rule in enumerate(proj.rules):
                rule.load_state_dict(payload.get("rules", {}).get(f"{proj.name}.{i}", {}))
        restore_rng_state(payload["rng"], {"trainer": trainer.generator})
        trainer.epoch = int(payload["progress"]["epoch"])
        for key, values in payload.get("metrics", {}).items():
            trainer.history.columns[key] = [float(v) for v in torch.as_tensor(values).tolist()]
        return trainer


def _json(value) -> str:
    import json
    return json.dumps(value, sort_keys=True)


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, leave=False, mininterval=0.5, unit="batch")


def _csv(history: History) -> str:
    buffer = io.StringIO()
    keys = list(history.columns)
    front = ["epoch", "train_accuracy", "test_accuracy"]
    keys = front + [k for k in keys if k not in front]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys)
    for row in history.rows():
        writer.writerow([int(row["epoch"]) if k == "epoch" else f"{row[k]:.6g}" for k in keys])
    return buffer.getvalue()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _format_row(row: dict) -> str:
    angles = " ".join(f"{k[6:]}={v:.1f}deg" for k, v in row.items() if k.startswith("angle_"))
    return (f"epoch {int(row['epoch'])}: train {100 * row['train_accuracy']:.2f}% "
            f"test {100 * row['test_accuracy']:.2f}% loss {row['test_loss']:.4f} {angles} "
            f"({row['seconds']:.1f}s)")
