"""A readable summary of a training run directory (``neurosim inspect RUN_DIR``).

It reads what :class:`~neurosim.training.Trainer` leaves in the directory: ``run.h5`` (the
checkpoint: model text, run options as trained, progress, per-epoch metrics), ``model.toml``
and ``metrics.csv``. A directory with only ``metrics.csv`` and ``model.toml`` (a committed
reference summary) is summarised from those two. A damaged (or missing) ``run.h5`` is
summarised from ``metrics.csv``, ``model.toml`` and the newest intact checkpoint kept in
``checkpoints/``, the one ``neurosim resume`` would fall back to; the summary names the
damaged file and that checkpoint (or says that none is intact). Accuracy lines appear only
for the accuracy columns the run measured; a run without any (an unsupervised protocol)
shows its metrics instead.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import NeurosimError
from .trainer import METRICS_FILE, MODEL_FILE, RUN_FILE

_TIMING = ("seconds", "train_seconds")
_ACCURACY_SETS = ("train", "validation", "test")
_WIDTH = 19                  # "validation accuracy"


def describe_run(run_dir: str | os.PathLike) -> str:
    """The summary of ``run_dir`` as text, one ``label  value`` line per item."""
    run_dir = Path(run_dir)
    run_file, model_file = run_dir / RUN_FILE, run_dir / MODEL_FILE
    metrics_file = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        raise NeurosimError(f"{run_dir} is not a directory; give a training run directory (or "
                            "an .h5 file to list its contents).")
    if not run_file.exists() and not metrics_file.exists():
        raise NeurosimError(f"{run_dir} is not a training run directory: it holds neither "
                            f"{RUN_FILE} nor {METRICS_FILE} (start one with `neurosim train "
                            f"MODEL.toml --out {run_dir}`; `neurosim inspect FILE.h5` lists what "
                            "an HDF5 file holds).")
    ckpt, damaged = _newest_checkpoint(run_dir, run_file)
    text = ckpt.config_text if ckpt is not None and ckpt.config_text else None
    if text is None and model_file.exists():
        text = model_file.read_text(encoding="utf-8")
    attrs = ckpt.attrs if ckpt is not None else {}
    overrides = _overrides(attrs)
    data = _parse(text, str(model_file if ckpt is None else run_file))
    training, protocol = _options(ckpt, data, overrides)
    # after damage, metrics.csv is the record of every epoch run (the checkpoint's ends earlier)
    columns = _columns(None if damaged and metrics_file.exists() else ckpt, metrics_file)
    epochs = [int(e) for e in columns.get("epoch", []) if _finite(e)]
    saved = int(ckpt.payload.get("progress", {}).get("epoch", len(epochs))) if ckpt is not None \
        else None
    done = saved if saved is not None and not damaged else (epochs[-1] if epochs else
                                                            saved or 0)

    lines: list[tuple[str, str]] = [("run", str(run_dir))]
    lines.append(("model", _model_name(data, text, attrs.get("base_dir") or None)))
    lines.append(("model file", _model_file(run_dir, model_file, text, attrs)))
    lines.append(("protocol", _protocol(protocol)))
    lines.append(("dataset", _dataset(data)))
    lines.append(("epochs", _epochs(done, training, ckpt, run_dir, saved if damaged else None)))
    seed = training.get("seed")
    lines.append(("seed", "?" if seed is None else str(seed)))
    if overrides:
        lines.append(("overrides", ", ".join(f"{k}={v}" for k, v in overrides.items())
                      + " (given on the command line)"))
    measured = False
    for prefix in _ACCURACY_SETS:
        line = _accuracy(columns, epochs, prefix, training)
        if line:
            lines.append((f"{prefix} accuracy", line))
            measured = True
    metrics = _last_metrics(columns, epochs)
    if not measured:            # an unsupervised protocol, or unlabeled data: no accuracy
        metrics = "no accuracy measured" + (f"; {metrics}" if metrics else "")
    if metrics:
        lines.append(("metrics", metrics))
    lines.append(("training time", _time(columns)))
    lines.append(("checkpoint", _checkpoint(run_dir, run_file, ckpt, done, damaged)))
    others = sorted(p for p in run_dir.rglob("*.h5") if p != run_file)
    if others:
        shown = ", ".join(str(p.relative_to(run_dir)) for p in others[:8])
        more = f", ... ({len(others)} in all)" if len(others) > 8 else ""
        lines.append(("other .h5 files", shown + more))
    if metrics_file.exists():
        lines.append(("per epoch", f"{metrics_file} (`neurosim plot {run_dir}` draws it)"))
    return "\n".join(f"{label:<{_WIDTH}}  {value}" for label, value in lines)


# ----------------------------------------------------------------------------- reading
def _newest_checkpoint(run_dir: Path, run_file: Path):
    """(the checkpoint ``neurosim resume`` would continue from, or None; the damaged or
    missing files passed over, as (path, reason)): run.h5, else the newest intact kept
    checkpoint (neurosim.io.series), as :meth:`Trainer.resume` picks it."""
    from ..io import kept_checkpoints, load_checkpoint
    from ..io.errors import DamagedCheckpointError
    kept = [path for _, path in kept_checkpoints(run_dir)]
    if not run_file.exists() and not kept:
        return None, []
    damaged: list[tuple[Path, str]] = []
    for path in [run_file, *kept]:
        try:
            return load_checkpoint(path, kind="training"), damaged
        except DamagedCheckpointError as err:
            damaged.append((path, err.reason))
    return None, damaged


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _overrides(attrs: dict) -> dict:
    try:
        saved = json.loads(attrs.get("overrides_json", "{}") or "{}")
    except ValueError:
        return {}
    return saved if isinstance(saved, dict) else {}


def _parse(text: str | None, where: str) -> dict:
    if text is None:
        return {}
    from ..graph import parse_model_text
    try:
        return parse_model_text(text, where)
    except NeurosimError:
        return {}


def _literal(text: Any) -> dict | None:
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _options(ckpt, data: dict, overrides: dict) -> tuple[dict, dict]:
    """([training] options, [protocol] settings) as the run used them: the checkpoint's
    record, else the model text with the saved overrides (defaults filled in if possible)."""
    options = ckpt.payload.get("options", {}) if ckpt is not None else {}
    training, protocol = _literal(options.get("training")), _literal(options.get("protocol"))
    if training is not None and protocol is not None:
        return training, protocol
    from .config import split_tables, training_config_from_table
    try:
        table, proto = split_tables(data, "model", overrides)
    except NeurosimError:
        table, proto = dict(data.get("training", {})), dict(data.get("protocol", {}))
    try:
        table = training_config_from_table(table, "model").as_dict()
    except NeurosimError:
        pass
    return training or table, protocol or proto


def _columns(ckpt, metrics_file: Path) -> dict[str, list[float]]:
    if ckpt is not None and ckpt.payload.get("metrics"):
        import torch
        return {k: [float(v) for v in torch.as_tensor(values).reshape(-1).tolist()]
                for k, values in ckpt.payload["metrics"].items()}
    if not metrics_file.exists():
        return {}
    with open(metrics_file, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            columns.setdefault(key, []).append(number)
    return columns


# ----------------------------------------------------------------------------- lines
def _model_name(data: dict, text: str | None, base_dir: str | None) -> str:
    if text is None:
        return "? (no model text: neither run.h5 nor model.toml)"
    table = data.get("model") if isinstance(data.get("model"), dict) else {}
    template = f' (template "{table["template"]}")' if "template" in table else ""
    try:
        from ..registry import importable_from
        from .config import build_network
        with importable_from(base_dir if base_dir and Path(base_dir).is_dir() else None):
            return build_network(data, "model").name + template
    except Exception:          # a plug-in that cannot be imported here: name from the text
        network = data.get("network") if isinstance(data.get("network"), dict) else {}
        name = network.get("name") or table.get("name")
        return (str(name) if name else "(unnamed)") + template


def _model_file(run_dir: Path, model_file: Path, text: str | None, attrs: dict) -> str:
    if not model_file.exists():
        return (f"none in {run_dir} (the model text is in {RUN_FILE})" if text else
                f"none in {run_dir}")
    base = attrs.get("base_dir")
    origin = f"; the model file was in {base}" if base else ""
    same = "" if text is None or model_file.read_text(encoding="utf-8") == text else \
        f" (differs from the text in {RUN_FILE}, which the run trains)"
    return f"{model_file}{same}{origin}"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _protocol(protocol: dict) -> str:
    if not protocol:
        return "?"
    settings = ", ".join(f"{k}={_short(v)}" for k, v in protocol.items() if k != "type")
    return f"{protocol.get('type', '?')}" + (f" ({settings})" if settings else "")


def _dataset(data: dict) -> str:
    table = data.get("data") if isinstance(data.get("data"), dict) else None
    if not table:
        return "?"
    name = table.get("dataset") or table.get("path") or "?"
    rest = ", ".join(f"{k}={_short(v)}" for k, v in table.items() if k not in ("dataset",
                                                                                 "path"))
    return f"{name}" + (f" ({rest})" if rest else "")


def _epochs(done: int, training: dict, ckpt, run_dir: Path, fallback: int | None = None) -> str:
    """``fallback``: the epoch of the checkpoint resume falls back to (run.h5 damaged)."""
    planned = training.get("epochs")
    text = f"{done} done" + (f" of {planned} planned" if planned is not None else "")
    if fallback is not None:
        again = (f"; epochs {fallback + 1}..{done} are trained again" if done > fallback + 1
                 else f"; epoch {done} is trained again" if done == fallback + 1 else "")
        text += (f" (run.h5 is damaged: `neurosim resume {run_dir}` continues from epoch "
                 f"{fallback}{again})")
    elif planned is not None and done > planned:
        text += " (extended with `neurosim resume --epochs N`)"
    elif planned is not None and done < planned and ckpt is not None:
        text += f" (continue with `neurosim resume {run_dir}`)"
    details = []
    if ckpt is not None and fallback is None and "steps" in ckpt.payload.get("progress", {}):
        details.append(f"{int(ckpt.payload['progress']['steps'])} training steps")
    if training.get("batch_size") is not None:
        details.append(f"batch size {training['batch_size']}")
    return text + (f"; {', '.join(details)}" if details else "")


def _accuracy(columns: dict, epochs: list[int], prefix: str, training: dict) -> str | None:
    values = columns.get(f"{prefix}_accuracy")
    if not values:
        return None
    points = [(e, v) for e, v in zip(epochs, values) if _finite(v)]
    if not points:
        return None
    best_epoch, best = max(points, key=lambda p: (p[1], -p[0]))      # first epoch on ties
    last_epoch, last = points[-1]
    text = (f"best {100 * best:.2f} % (epoch {best_epoch}), last {100 * last:.2f} % "
            f"(epoch {last_epoch})")
    if prefix == "train" and training.get("train_accuracy", "running") == "running":
        text += " (running: the predictions of the training steps themselves)"
    return text


def _last_metrics(columns: dict, epochs: list[int]) -> str:
    skip = {"epoch", *_TIMING, *(f"{p}_accuracy" for p in _ACCURACY_SETS)}
    parts, last_epoch = [], None
    for key, values in columns.items():
        if key in skip:
            continue
        points = [(e, v) for e, v in zip(epochs, values) if _finite(v)]
        if points:
            last_epoch = max(last_epoch or 0, points[-1][0])
            parts.append(f"{key}={points[-1][1]:.4g}")
    return f"at epoch {last_epoch}: " + ", ".join(parts) if parts else ""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s") + \
        f" ({seconds:.0f} s)"


def _time(columns: dict) -> str:
    total = [v for v in columns.get("seconds", []) if _finite(v)]
    if not total:
        return "not recorded"
    train = [v for v in columns.get("train_seconds", []) if _finite(v)]
    text = f"{_duration(sum(total))} over {len(total)} epoch{'s' if len(total) != 1 else ''}"
    if train:
        text += f" ({_duration(sum(train))} in training steps, the rest evaluating)"
    return text


def _checkpoint(run_dir: Path, run_file: Path, ckpt, done: int, damaged=()) -> str:
    listed = "; ".join(f"{path} is missing" if reason == "missing" else
                       f"{path} is damaged ({reason})" for path, reason in damaged)
    if ckpt is None and damaged:
        model = run_dir / MODEL_FILE
        again = f"`neurosim train {model} --out {run_dir} --force`" if model.is_file() else \
            "`neurosim train MODEL.toml --out RUN_DIR --force`"
        return (f"{listed}; no intact checkpoint is left, so the run cannot be resumed (start "
                f"it again with {again})")
    if ckpt is None:
        return (f"none ({RUN_FILE} is absent: this directory keeps the summary only, so it "
                "cannot be resumed)")
    created = ckpt.attrs.get("created")
    when = f", written {created}" if created else ""
    epoch = int(ckpt.payload.get("progress", {}).get("epoch", done))
    if damaged:
        return (f"{listed}; `neurosim resume {run_dir}` falls back to {ckpt.path} (after epoch "
                f"{epoch}{when}), the newest intact kept checkpoint")
    return (f"{run_file} (after epoch {done}{when}); continue or extend with "
            f"`neurosim resume {run_dir} [--epochs N]`")
