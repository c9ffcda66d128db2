"""Results over seeds: ``neurosim table RUNS...`` (run directories, or folders holding them,
such as a sweep directory: ``neurosim sweep`` names each trial by its key and values).

Each run directory (``neurosim train --out DIR``: model.toml and metrics.csv) is one seed of
one configuration; its settings are the model file's with the command line's overrides
(``--seed``, ``--epochs``, ...) read from its run.h5 when present. Runs whose settings are
equal once ``[training] seed`` (and the keys that do not change results: ``threads``,
``device``, ``keep_checkpoints``) are left out form one configuration. Per configuration,
over its n seeds (mean +- sample standard deviation, ddof = 1):

    final test accuracy (last epoch), peak test accuracy and its epoch, epochs, wall time,
    and how many runs stopped before their configured epochs ("unfinished")

with the published number beside it when the model file names one:

    [reference]
    source = "Schneider et al., ICLR 2025, Fig. 3"
    test_accuracy = 95.1          # percent

Written as Markdown (printed, or ``--markdown FILE``) and CSV (``--csv FILE``), both
atomically; ``--plot FILE`` draws each configuration's test accuracy per epoch, the mean over
seeds as a line and the range over seeds as a band.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, NeurosimError
from .graph import parse_model_text
from .io.atomic import write_text_atomic

#: [training] keys that do not change what is computed (seed makes the seeds of one config)
IGNORED_TRAINING_KEYS = ("seed", "threads", "device", "keep_checkpoints")
REFERENCE_KEYS = ("source", "test_accuracy", "note")


def check_reference(table, where: str) -> dict:
    """The [reference] table: ``source`` (text), ``test_accuracy`` (percent, 0-100),
    optional ``note``; ConfigError otherwise."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} [reference]: expected a table with source and "
                          "test_accuracy (percent).")
    unknown = sorted(set(table) - set(REFERENCE_KEYS))
    if unknown:
        raise ConfigError(f"{where} [reference]: unknown key {unknown[0]!r}; valid: "
                          f"{', '.join(REFERENCE_KEYS)}.")
    accuracy = table.get("test_accuracy")
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or \
            not 0 <= accuracy <= 100:
        raise ConfigError(f"{where} [reference]: test_accuracy is the published test accuracy "
                          f"in percent (0-100), got {accuracy!r}.")
    for key in ("source", "note"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{where} [reference]: {key} is text, got {table[key]!r}.")
    if "source" not in table:
        raise ConfigError(f'{where} [reference]: name the source, e.g. source = "Author et al., '
                          'venue year, Table 1".')
    return dict(table)


@dataclass
class Run:
    """One run directory's summary."""

    path: Path
    seed: int | None
    epochs: int
    planned: int | None          # [training] epochs (with overrides)
    final: float | None          # test accuracy of the last epoch (fraction)
    peak: float | None
    peak_epoch: int | None
    seconds: float
    curve: list[tuple[int, float]]


@dataclass
class Configuration:
    """The runs of one configuration (equal model files up to the seed)."""

    name: str
    key: str
    reference: dict | None
    runs: list[Run] = field(default_factory=list)


def find_runs(paths) -> list[Path]:
    """Run directories (holding metrics.csv and model.toml) among ``paths`` and below them
    (in the order given, sorted within a folder, each once); NeurosimError when a path does
    not exist or holds none."""
    found = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise NeurosimError(f"{path} does not exist; give run directories (neurosim train "
                                "--out DIR) or folders holding them.")
        if (path / "metrics.csv").is_file():
            found.append(path.resolve())
            continue
        below = sorted(p.parent.resolve() for p in path.rglob("metrics.csv")
                       if (p.parent / "model.toml").is_file())
        if not below:
            raise NeurosimError(f"{path} holds no run directory (a folder with metrics.csv and "
                                "model.toml, as `neurosim train --out DIR` writes).")
        found += below
    return list(dict.fromkeys(found))


def _number(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _overrides(path: Path) -> dict:
    """The command line's overrides of a run (run.h5's ``overrides_json``; {} without it)."""
    checkpoint = path / "run.h5"
    if not checkpoint.is_file():
        return {}
    try:
        import h5py
        with h5py.File(checkpoint, "r") as fh:
            raw = fh.attrs.get("overrides_json", "{}")
        return dict(json.loads(raw if isinstance(raw, str) else raw.decode()))
    except (OSError, ValueError) as err:
        raise NeurosimError(f"{checkpoint}: cannot read the run's overrides ({err}); is the "
                            "checkpoint damaged? `neurosim inspect` it.") from None


def read_run(path: Path) -> tuple[Run, dict]:
    """(the run's summary, its parsed model file with the run's overrides in [training])."""
    model = path / "model.toml"
    if not model.is_file():
        raise NeurosimError(f"{path} has metrics.csv but no model.toml; is it a run directory "
                            "written by `neurosim train`?")
    data = parse_model_text(model.read_text(encoding="utf-8"), str(model))
    training = dict(data.get("training", {}))
    training.update(_overrides(path))
    data["training"] = training
    with open(path / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise NeurosimError(f"{path / 'metrics.csv'} has no epochs yet.")
    if "test_accuracy" not in rows[0]:
        raise NeurosimError(f"{path / 'metrics.csv'} has no test_accuracy column (a run without "
                            "a labelled test set); neurosim table compares test accuracies.")
    curve = []
    for line, r in enumerate(rows, 2):
        try:
            epoch = int(r["epoch"])
        except (TypeError, ValueError):
            raise NeurosimError(f"{path / 'metrics.csv'} line {line}: epoch {r.get('epoch')!r} "
                                "is not a number; is the file damaged?") from None
        curve.append((epoch, _number(r.get("test_accuracy"))))
    final = curve[-1][1]                      # the last epoch's, even when it is not finite
    curve = [(e, a) for e, a in curve if a is not None]
    peak_epoch, peak = max(curve, key=lambda ea: (ea[1], -ea[0])) if curve else (None, None)
    seed, planned = training.get("seed"), training.get("epochs")
    run = Run(path, seed if isinstance(seed, int) else None, len(rows),
              planned if isinstance(planned, int) else None, final, peak, peak_epoch,
              sum(_number(r.get("seconds")) or 0.0 for r in rows), curve)
    return run, data


def configuration_key(data: dict) -> str:
    """The model file's content without the seed and machine-only keys (canonical JSON)."""
    data = json.loads(json.dumps(data, default=str))
    training = data.get("training", {})
    for key in IGNORED_TRAINING_KEYS:
        training.pop(key, None)
    data.pop("reference", None)
    return json.dumps(data, sort_keys=True)


def group(paths) -> list[Configuration]:
    """The configurations of the runs found under ``paths``, in order of first appearance."""
    configs: dict[str, Configuration] = {}
    for path in find_runs(paths):
        run, data = read_run(path)
        key = configuration_key(data)
        if key not in configs:
            name = _sweep_label(path) or data.get("network", {}).get("name") or \
                _template_name(data) or path.parent.name or path.name
            reference = data.get("reference")           # checked when the file was parsed
            configs[key] = Configuration(name, key, reference)
        configs[key].runs.append(run)
    names: dict[str, int] = {}
    for config in configs.values():     # equal network names, different settings
        names[config.name] = names.get(config.name, 0) + 1
    seen: dict[str, int] = {}
    for config in configs.values():
        if names[config.name] > 1:
            seen[config.name] = seen.get(config.name, 0) + 1
            config.name = f"{config.name} ({chr(96 + seen[config.name])})"
    return list(configs.values())


def _sweep_label(path: Path) -> str | None:
    """A sweep trial's label ("0003: protocol.beta = 0.7, ..."), from the trial.json that
    ``neurosim sweep`` writes beside the trial's seed directories."""
    info = path.parent / "trial.json"
    if not info.is_file():
        return None
    try:
        label = json.loads(info.read_text(encoding="utf-8")).get("label")
    except (OSError, ValueError, AttributeError):
        return None
    return label if isinstance(label, str) else None


def _template_name(data: dict) -> str | None:
    """"<template>-<variant> <dataset>" for a model written as a template expansion."""
    model = data.get("model", {})
    if not isinstance(model, dict) or "template" not in model:
        return None
    name = str(model["template"]) + (f"-{model['variant']}" if "variant" in model else "")
    if isinstance(model.get("sizes"), list):
        name += " " + "-".join(map(str, model["sizes"]))
    dataset = data.get("data", {}).get("dataset") if isinstance(data.get("data"), dict) else None
    return f"{name} {dataset}" if dataset else name


def _stats(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def rows(configs: list[Configuration]) -> list[dict]:
    """One dict per configuration: n, seeds, the means and standard deviations."""
    out = []
    for c in configs:
        row = {"configuration": c.name, "n": len(c.runs),
               "seeds": " ".join(str(r.seed) for r in c.runs),
               "unfinished": sum(1 for r in c.runs
                                 if r.planned is not None and r.epochs < r.planned)}
        for key, values, scale in (
                ("final_test", [r.final for r in c.runs], 100.0),
                ("peak_test", [r.peak for r in c.runs], 100.0),
                ("peak_epoch", [r.peak_epoch for r in c.runs], 1.0),
                ("epochs", [r.epochs for r in c.runs], 1.0),
                ("minutes", [r.seconds / 60 for r in c.runs], 1.0)):
            mean, std = _stats(values)
            row[f"{key}_mean"] = None if mean is None else mean * scale
            row[f"{key}_std"] = None if std is None else std * scale
        row["published"] = c.reference["test_accuracy"] if c.reference else None
        row["source"] = c.reference["source"] if c.reference else ""
        out.append(row)
    return out


def _escape(text: str) -> str:
    """Text safe in a Markdown table cell."""
    return str(text).replace("|", "\\|")


def _cell(mean, std, digits: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def markdown(table: list[dict]) -> str:
    """The table as Markdown (accuracies in percent)."""
    head = ("| configuration | seeds | final test (%) | peak test (%) | epoch of peak | epochs | "
            "minutes | published (%) |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in table:
        published = "-" if r["published"] is None else f"{r['published']:g} ({r['source']})"
        seeds = f"{r['n']}" + (f" ({r['unfinished']} unfinished)" if r["unfinished"] else "")
        lines.append(
            f"| {_escape(r['configuration'])} | {seeds} "
            f"| {_cell(r['final_test_mean'], r['final_test_std'], 2)} "
            f"| {_cell(r['peak_test_mean'], r['peak_test_std'], 2)} "
            f"| {_cell(r['peak_epoch_mean'], r['peak_epoch_std'], 1)} "
            f"| {_cell(r['epochs_mean'], r['epochs_std'], 0)} "
            f"| {_cell(r['minutes_mean'], r['minutes_std'], 1)} | {_escape(published)} |")
    return "\n".join(lines) + "\n"


def csv_text(table: list[dict]) -> str:
    """The table as CSV (every column, numbers unrounded; empty where undefined)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    for r in table:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buffer.getvalue()


def plot_curves(configs: list[Configuration], out) -> Path:
    """Test accuracy per epoch: the mean over seeds per configuration, the range as a band."""
    from .plotting import _check_format, _pyplot, _save
    out = _check_format(out)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, c in enumerate(configs):
        epochs = sorted({e for r in c.runs for e, _ in r.curve})
        by_epoch = {e: [a for r in c.runs for ee, a in r.curve if ee == e] for e in epochs}
        mean = [100 * statistics.fmean(by_epoch[e]) for e in epochs]
        color = f"C{i % 10}"
        ax.plot(epochs, mean, color=color, label=f"{c.name} (n = {len(c.runs)})")
        if len(c.runs) > 1:
            ax.fill_between(epochs, [100 * min(by_epoch[e]) for e in epochs],
                            [100 * max(by_epoch[e]) for e in epochs], color=color, alpha=0.2)
        if c.reference:
            ax.axhline(c.reference["test_accuracy"], color=color, ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%): mean over seeds, band = range")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, out)
    return Path(out)


def make_table(paths, *, csv_out=None, markdown_out=None, plot_out=None) -> str:
    """Group the runs under ``paths``, write the requested files; returns the Markdown.
    The output paths are checked before any run is read."""
    for flag, out in (("--csv", csv_out), ("--markdown", markdown_out), ("--plot", plot_out)):
        if out and not Path(out).resolve().parent.is_dir():
            raise NeurosimError(f"{flag} {out}: the directory {Path(out).resolve().parent} does "
                                "not exist; create it or write elsewhere.")
    if plot_out:
        from .plotting import _check_format
        try:
            _check_format(plot_out)
        except ConfigError as err:
            raise ConfigError(str(err).replace("--out", "--plot")) from None
    configs = group(paths)
    table = rows(configs)
    text = markdown(table)
    if csv_out:
        write_text_atomic(csv_out, csv_text(table))
    if markdown_out:
        write_text_atomic(markdown_out, text)
    if plot_out:
        plot_curves(configs, plot_out)
    return text


__all__ = ["make_table", "group", "rows", "markdown", "csv_text", "plot_curves", "find_runs",
           "read_run", "configuration_key", "check_reference", "Run", "Configuration"]
