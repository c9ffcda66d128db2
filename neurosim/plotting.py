"""Plots to PNG (matplotlib, an optional extra: ``pip install neurosim[plot]``).

- a recording: one panel per recorded variable (``population/compartment/variable``, or a
  projection's weights ``projection/synapses/w``) against time. What is drawn is chosen with
  ``plot_path(path, out, **selection)`` or the same flags of ``neurosim plot``:

  ``populations``, ``compartments``, ``variables``  which neuron recordings (default: all);
  ``samples``      batch rows (default: sample 0);
  ``neurons``      neuron ids within the population (default: the first 10 recorded); a
                   monitor with ``indices`` recorded only those ids. Without ``populations``,
                   each of several panels draws the ids it recorded (a note names those it
                   lacks) and only ids recorded in no panel are an error; with
                   ``populations``, or when one panel is chosen, an id that panel did not
                   record is an error that lists those it did;
  ``projections``  which weight recordings (``/recordings/<projection>/synapses/w``, time x
                   post x pre; default: all);
  ``synapses``     ``"post:pre"`` entries of the weight matrices (default: every synapse of a
                   matrix with at most 16 of them; a larger matrix is left out with a note
                   naming ``--synapses``, since a few arbitrary synapses of a big matrix say
                   little; a projection named in ``projections`` is drawn in full up to 100
                   synapses, and a larger one is an error naming ``--synapses``);
  ``t_start``, ``t_stop``  the time window (default: the whole recording).

  Naming only neuron selections (the first five) draws neuron recordings only, naming only
  weight selections (``projections``, ``synapses``) draws weights only, naming none or both
  draws both. Every bad choice is one :class:`~neurosim.errors.ConfigError` that names the
  flag, the valid choices and the closest one. The image format follows the extension of
  ``out`` (png, pdf, svg, ...: what matplotlib's Agg canvas writes); another one is an
  error naming ``--out`` and the supported formats.
- a training run directory: train/validation/test accuracy and loss per epoch (when
  measured; the loss on a log axis when it spans more than a decade), the angles in degrees
  (``angle_*``: forward vs feedback weights, and ``angle_F``, (W_L ... W_1)^T vs a fixed
  feedback matrix F, drawn with a 90 degree reference line), each layer's correlative
  information (when recorded), COPI's decorrelation (offdiag_*: each lateral R's output and,
  dashed, its input), the PID atoms of infomorphic populations (``train_<population>_pi_*``:
  each atom's mean over the population's neurons, one panel per population), and every other
  metric column (e.g. pc_alignment_*, train_rate_*); at most three panels a row.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, NeurosimError, unknown

#: The selection keywords of :func:`plot_path` and the ``neurosim plot`` flag of each.
SELECTION = {"populations": "--populations", "compartments": "--compartments",
             "variables": "--variables", "samples": "--samples", "neurons": "--neurons",
             "projections": "--projections", "synapses": "--synapses",
             "t_start": "--t-start", "t_stop": "--t-stop"}
_NEURON_KEYS = ("populations", "compartments", "variables", "samples", "neurons")
_WEIGHT_KEYS = ("projections", "synapses")
MAX_NEURONS = 10     # neurons drawn per panel unless --neurons says which
MAX_SYNAPSES = 16    # weight matrices up to this many synapses are drawn in full by default
MAX_NAMED_SYNAPSES = 100   # ... and up to this many when --projections names the projection
_SYNAPSES = "synapses"   # the "compartment" of weight recordings (neurosim.simulation.SYNAPSES)
_STYLES = ("-", "--", ":", "-.")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NeurosimError("plotting needs matplotlib: `pip install 'neurosim[plot]'` "
                            "(or `pip install matplotlib`).") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _check_format(out) -> Path:
    """``out`` as a Path whose extension names a format matplotlib's Agg canvas writes, or a
    ConfigError naming --out and the supported formats (checked before anything is read)."""
    _pyplot()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    formats = sorted(FigureCanvasAgg.get_supported_filetypes())
    out = Path(out)
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in formats:
        what = f'"{out.suffix}" is not an image format' if suffix else "has no file extension"
        raise ConfigError(f"--out {out}: {what}; end the file name with .png (or .pdf, .svg; "
                          f"supported: {', '.join(formats)}).")
    return out


def _save(plt, fig, out) -> None:
    try:
        fig.tight_layout()
        fig.savefig(out, dpi=110)
    except OSError as err:
        raise NeurosimError(f"cannot write the plot {out}: {err.strerror or err}; give --out a "
                            "path in an existing, writable directory.") from None
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- selections
def _names(value: Any, key: str, where: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    try:
        items = list(items)
    except TypeError:
        items = []
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where}: {SELECTION[key]} takes one or more names, got {value!r}.")
    return list(dict.fromkeys(items))


def _ints(value: Any, key: str, where: str) -> list[int] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (int, np.integer)) else value
    try:
        items = list(items)
    except TypeError:
        items = []
    if not items or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                            for v in items):
        raise ConfigError(f"{where}: {SELECTION[key]} takes one or more integer indices, got "
                          f"{value!r}.")
    return list(dict.fromkeys(int(v) for v in items))


def _pair(item: Any) -> tuple[int, int] | None:
    if isinstance(item, str):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
        return None
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in item):
        return int(item[0]), int(item[1])
    return None


def _synapse_pairs(value: Any, where: str) -> list[tuple[int, int]] | None:
    if value is None:
        return None
    single = isinstance(value, str) or (isinstance(value, tuple) and _pair(value) is not None)
    items = [value] if single else value
    try:
        items = list(items)
    except TypeError:
        items = [value]
    if not items:
        items = [value]
    pairs = []
    for item in items:
        pair = _pair(item)
        if pair is None:
            raise ConfigError(f'{where}: --synapses takes POST:PRE pairs of neuron indices (e.g. '
                              f'"0:3" is the synapse from pre neuron 3 onto post neuron 0), got '
                              f"{item!r}.")
        pairs.append(pair)
    return list(dict.fromkeys(pairs))


def _time_value(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)):
        raise ConfigError(f"{where}: {SELECTION[key]} takes a finite time, got {value!r}.")
    return float(value)


def _positive(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_selection(selection: dict, where: str) -> dict:
    """The selection with every value checked and normalised (None: not chosen)."""
    sel = {key: None for key in SELECTION}
    for key, value in selection.items():
        if key not in SELECTION:
            raise unknown("plot selection", key, SELECTION, where)
        sel[key] = value
    for key in ("populations", "compartments", "variables", "projections"):
        sel[key] = _names(sel[key], key, where)
    for key in ("samples", "neurons"):
        sel[key] = _ints(sel[key], key, where)
    sel["synapses"] = _synapse_pairs(sel["synapses"], where)
    for key in ("t_start", "t_stop"):
        sel[key] = _time_value(sel[key], key, where)
    if sel["t_start"] is not None and sel["t_stop"] is not None and \
            sel["t_start"] > sel["t_stop"]:
        raise ConfigError(f"{where}: --t-start ({sel['t_start']:g}) must not be after --t-stop "
                          f"({sel['t_stop']:g}).")
    return sel


def _listed(items) -> str:
    items = [str(i) for i in items]
    return ", ".join(items) if items else "(none)"


def _ids(ids: list[int]) -> str:
    """0, 1, 2, 3 -> "0..3"; other lists written out (at most 20 shown)."""
    if len(ids) > 2 and ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    shown = ", ".join(map(str, ids[:20]))
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")


def _choose(keys: list[str], sel: dict, where: str, weights: bool,
            others: list[str] = ()) -> list[str]:
    """The recordings (of one kind) that the selection's names pick; ``others``: the
    recordings of the other kind (for a hint when a name belongs there)."""
    tables = ((("projections", 0, "projection"),) if weights else
              (("populations", 0, "population"), ("compartments", 1, "compartment"),
               ("variables", 2, "variable")))
    parts = {k: k.split("/") for k in keys}
    for key, index, kind in tables:
        if sel[key] is None:
            continue
        valid = list(dict.fromkeys(parts[k][index] for k in keys))
        owners = {k.split("/")[0] for k in others}
        for name in sel[key]:
            if name not in valid and index == 0 and name in owners:
                what, flag = (("a population", "--populations") if weights
                              else ("a projection (recorded weights)", "--projections"))
                raise ConfigError(f'{where}: {SELECTION[key]}: "{name}" is {what}; choose it '
                                  f"with {flag}.")
            if name not in valid:
                raise unknown(kind, name, valid, f"{where}: {SELECTION[key]}")
    chosen = [k for k in keys
              if all(sel[key] is None or parts[k][index] in sel[key]
                     for key, index, _ in tables)]
    if not chosen:
        flags = " ".join(f"{SELECTION[key]} {' '.join(sel[key])}" for key, _, _ in tables
                         if sel[key] is not None)
        raise ConfigError(f"{where}: no recording matches {flags}; recorded: {_listed(keys)}.")
    return chosen


def _window(time: np.ndarray, sel: dict, where: str, key: str) -> np.ndarray:
    mask = np.ones(len(time), dtype=bool)
    t0, t1 = sel["t_start"], sel["t_stop"]
    # times are sums of steps (0.1 + 0.2 + ...): a bound within rounding of a record keeps it
    if t0 is not None:
        mask &= time >= t0 - 1e-9 * max(1.0, abs(t0))
    if t1 is not None:
        mask &= time <= t1 + 1e-9 * max(1.0, abs(t1))
    if (t0 is not None or t1 is not None) and len(time) and not mask.any():
        flags = " ".join(f"{SELECTION[k]} {sel[k]:g}" for k in ("t_start", "t_stop")
                         if sel[k] is not None)
        raise ConfigError(f"{where}: {flags}: {key} has no records in that window; it holds "
                          f"t = {time[0]:g} .. {time[-1]:g}.")
    return mask


@dataclass
class _Panel:
    key: str
    ylabel: str
    lines: list[tuple[str, np.ndarray, np.ndarray, str, str]] = field(default_factory=list)


def _matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A record's shape read as (samples or post neurons, neurons or pre neurons)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], int(np.prod(shape[1:]))


def _series(rec, key: str, shape: tuple[int, ...], rows: np.ndarray, lead: int,
            columns: list[int]) -> np.ndarray:
    """values[rows, lead, columns] (records x columns) of a recording read as matrices (see
    _matrix_shape), loading only the records in the window and those columns."""
    where = np.flatnonzero(rows)
    span = slice(int(where[0]), int(where[-1]) + 1) if where.size else slice(0, 0)
    order = sorted(set(columns))
    if len(shape) == 0:
        data = np.asarray(rec.read(key, rows=span).values).reshape(-1, 1)
    elif len(shape) == 1:
        data = rec.read(key, rows=span, index=(order,)).values
    elif len(shape) == 2:
        data = rec.read(key, rows=span, index=(lead, order)).values
    else:                                   # records of 3 or more axes: flattened after the first
        data = np.asarray(rec.read(key, rows=span, index=(lead,)).values)
        data = data.reshape(len(data), -1)[:, order]
    data = np.asarray(data)[rows[span]]
    position = {c: k for k, c in enumerate(order)}
    return data[:, [position[c] for c in columns]]


def _layout(rec, key: str) -> tuple[tuple[int, ...], np.ndarray, dict]:
    """(record shape, times, attrs) of a recorded variable, without loading its values."""
    meta = rec.read(key, rows=slice(0, 0))
    shape = tuple(meta.values.shape[1:])
    time = np.asarray(rec.read(key, index=(0,) * len(shape)).time)
    return shape, time, meta.attrs


def _neuron_panel(rec, key: str, sel: dict, where: str, max_neurons: int, lenient: bool,
                  notes: list[str], absent: dict) -> _Panel | None:
    """The panel of one neuron recording. ``lenient`` (several panels, no --populations):
    draw the requested neurons the recording has, note those it lacks, and return None when
    it has none of them (their ids go to ``absent[key]``); else a missing one is an error."""
    shape, time, attrs = _layout(rec, key)
    batch, n = _matrix_shape(shape)
    population = key.split("/")[0]
    samples = sel["samples"] if sel["samples"] is not None else [0]
    for s in samples:
        if not 0 <= s < batch:
            raise ConfigError(f"{where}: --samples: sample {s} is not recorded in {key}, which "
                              f"holds {batch} sample{'' if batch == 1 else 's'} (valid: "
                              f"{_ids(list(range(batch)))}).")
    recorded = attrs.get("indices")
    ids = list(range(n)) if recorded is None or len(recorded) != n else list(recorded)
    if sel["neurons"] is None:
        columns = list(range(min(n, max_neurons)))
    else:
        columns = []
        what = (f"its monitor recorded only neurons {_ids(ids)}" if recorded is not None
                else f'population "{population}" has {n} neuron{"" if n == 1 else "s"} '
                     f"(valid: {_ids(ids)})")
        missing = [i for i in sel["neurons"] if i not in ids]
        if missing and not lenient:
            raise ConfigError(f'{where}: --neurons: neuron {missing[0]} of population '
                              f'"{population}" is not recorded in {key}: {what}.')
        if missing:
            absent[key] = ids
            if len(missing) == len(sel["neurons"]):
                notes.append(f"{key}: none of --neurons {_ids(missing)} recorded ({what}); "
                             "not plotted.")
                return None
            notes.append(f"{key}: --neurons {_ids(missing)} not recorded ({what}); drawn: "
                         f"{_ids([i for i in sel['neurons'] if i in ids])}.")
        columns = [ids.index(i) for i in sel["neurons"] if i in ids]
    rows = _window(time, sel, where, key)
    units = attrs.get("units", "")
    panel = _Panel(key, f"{key}\n[{units}]" if units else key)
    for si, s in enumerate(samples):
        values = _series(rec, key, shape, rows, s, columns)
        for ci, c in enumerate(columns):
            label = f"neuron {ids[c]}" + (f", sample {s}" if len(samples) > 1 else "")
            panel.lines.append((label, time[rows], values[:, ci], f"C{ci % 10}",
                                _STYLES[si % len(_STYLES)]))
    return panel


def _weight_panel(rec, key: str, sel: dict, where: str, max_synapses: int, several: bool,
                  notes: list[str]) -> _Panel | None:
    shape, time, attrs = _layout(rec, key)
    posts, pres = _matrix_shape(shape)
    if sel["synapses"] is None:
        named = sel["projections"] is not None and key.split("/")[0] in sel["projections"]
        cap = max(MAX_NAMED_SYNAPSES, max_synapses)
        if named and posts * pres > cap:
            raise ConfigError(f"{where}: --projections {key.split('/')[0]}: {key} has {posts} x "
                              f"{pres} = {posts * pres} synapses, more than the {cap} drawn at "
                              "once; choose some with --synapses POST:PRE (e.g. --synapses 0:0 "
                              "0:1).")
        if not named and posts * pres > max_synapses:
            notes.append(f"{key}: {posts} x {pres} = {posts * pres} synapses, more than "
                         f"{max_synapses}: not plotted; choose some with --synapses POST:PRE "
                         "(e.g. --synapses 0:0 0:1).")
            return None
        pairs = [(i, j) for i in range(posts) for j in range(pres)]
    else:
        pairs = sel["synapses"]
        hint = (" (choose the projection with --projections)"
                if several and sel["projections"] is None else "")
        for i, j in pairs:
            if not (0 <= i < posts and 0 <= j < pres):
                raise ConfigError(f"{where}: --synapses: synapse {i}:{j} is not in {key}, a "
                                  f"{posts} x {pres} matrix (post 0..{posts - 1}, pre "
                                  f"0..{pres - 1}){hint}.")
    rows = _window(time, sel, where, key)
    by_post = {i: _series(rec, key, shape, rows, i, [j for p, j in pairs if p == i])
               for i in dict.fromkeys(i for i, _ in pairs)}
    units = attrs.get("units", "")
    panel = _Panel(key, f"{key} (post:pre)" + (f"\n[{units}]" if units else ""))
    for k, (i, j) in enumerate(pairs):
        column = [p for p in pairs if p[0] == i].index((i, j))
        panel.lines.append((f"{i}:{j}", time[rows], by_post[i][:, column], f"C{k % 10}",
                            _STYLES[(k // 10) % len(_STYLES)]))
    return panel


def _panels(rec, sel: dict, where: str, max_neurons: int,
            max_synapses: int) -> tuple[list[_Panel], list[str]]:
    keys = rec.variables()
    if not keys:
        raise NeurosimError(f"{where} holds no recorded variables to plot.")
    weight_keys = [k for k in keys if k.split("/")[1:2] == [_SYNAPSES]]
    neuron_keys = [k for k in keys if k not in weight_keys]
    named_neurons = [SELECTION[k] for k in _NEURON_KEYS if sel[k] is not None]
    named_weights = [SELECTION[k] for k in _WEIGHT_KEYS if sel[k] is not None]
    if named_neurons and not neuron_keys:
        raise ConfigError(f"{where}: {named_neurons[0]}: the recording holds no neuron "
                          f"variables, only weights ({_listed(weight_keys)}); choose those with "
                          "--projections and --synapses.")
    if named_weights and not weight_keys:
        raise ConfigError(f"{where}: {named_weights[0]}: the recording holds no weights (record "
                          'them with a [[monitor]] table `projection = "NAME"`); it records '
                          f"{_listed(neuron_keys)}.")
    panels, notes = [], []
    if named_neurons or not named_weights:
        chosen = (_choose(neuron_keys, sel, where, weights=False, others=weight_keys)
                  if neuron_keys else [])
        # --neurons without --populations over several panels: each draws those it recorded
        lenient = sel["neurons"] is not None and sel["populations"] is None and len(chosen) > 1
        absent: dict[str, list[int]] = {}
        drawn = [panel for key in chosen if (panel := _neuron_panel(
            rec, key, sel, where, max_neurons, lenient, notes, absent)) is not None]
        panels += drawn
        if chosen and not drawn:
            recorded = "; ".join(f"{key}: {_ids(ids)}" for key, ids in absent.items())
            raise ConfigError(f"{where}: --neurons: none of neurons {_ids(sel['neurons'])} is "
                              f"recorded in any chosen recording ({recorded}); choose recorded "
                              "neurons, or a population with --populations.")
    if named_weights or not named_neurons:
        chosen = (_choose(weight_keys, sel, where, weights=True, others=neuron_keys)
                  if weight_keys else [])
        for key in chosen:
            panel = _weight_panel(rec, key, sel, where, max_synapses, len(chosen) > 1, notes)
            if panel is not None:
                panels.append(panel)
    if not panels:
        raise ConfigError(f"{where}: nothing to plot: {' '.join(notes)}")
    return panels, notes


def _subtitle(sel: dict, max_neurons: int, panels: list[_Panel]) -> str:
    parts = []
    if any(p.key.split("/")[1:2] != [_SYNAPSES] for p in panels):
        samples = sel["samples"] or [0]
        parts += [f"sample{'s' if len(samples) > 1 else ''} {', '.join(map(str, samples))}",
                  f"neurons {', '.join(map(str, sel['neurons']))}" if sel["neurons"] is not None
                  else f"first {max_neurons} recorded neurons"]
    if sel["synapses"] is not None:
        parts.append("synapses " + ", ".join(f"{i}:{j}" for i, j in sel["synapses"]))
    if sel["t_start"] is not None or sel["t_stop"] is not None:
        lo = "" if sel["t_start"] is None else f"{sel['t_start']:g}"
        hi = "" if sel["t_stop"] is None else f"{sel['t_stop']:g}"
        parts.append(f"t in [{lo or 'start'}, {hi or 'end'}]")
    return ", ".join(parts)


def plot_recording(path, out, *, max_neurons: int = MAX_NEURONS,
                   max_synapses: int = MAX_SYNAPSES, log: Callable[[str], Any] | None = None,
                   **selection) -> Path:
    """Draw the chosen recorded variables of ``path`` into the PNG ``out`` (selection keys:
    see the module docstring); notes on what was left out go to ``log``."""
    from .io import open_recording
    where = str(path)
    out = _check_format(out)
    sel = _check_selection(selection, where)
    max_neurons = _positive(max_neurons, "max_neurons", where)
    max_synapses = _positive(max_synapses, "max_synapses", where)
    with open_recording(path) as rec:
        panels, notes = _panels(rec, sel, where, max_neurons, max_synapses)
        title = rec.attrs.get("model", Path(path).stem)
        solver = rec.attrs.get("solver", "?")
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9.5, 2.2 * len(panels) + 0.8),
                             sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        for label, t, y, color, style in panel.lines:
            ax.plot(t, y, lw=1, color=color, linestyle=style, label=label)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if 0 < len(panel.lines) <= 20:
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      ncol=1 if len(panel.lines) <= 10 else 2, frameon=False)
    axes[-1, 0].set_xlabel("time")
    subtitle = _subtitle(sel, max_neurons, panels)
    fig.suptitle(f"{title} - solver {solver}" + (f" ({subtitle})" if subtitle else ""),
                 fontsize=10)
    _save(plt, fig, out)
    if log is not None:
        for note in notes:
            log(f"note: {note}")
    return Path(out)


def plot_run(run_dir, out) -> Path:
    """Draw the metrics per epoch of the training run ``run_dir`` into the image ``out``."""
    out = _check_format(out)
    plt = _pyplot()
    metrics = Path(run_dir) / "metrics.csv"
    if not metrics.exists():
        raise NeurosimError(f"{run_dir} has no metrics.csv; is it a run directory written by "
                            "`neurosim train`?")
    with open(metrics, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise NeurosimError(f"{metrics} has no epochs yet.")
    epochs = [int(r["epoch"]) for r in rows]
    columns = list(rows[0])
    accuracies = [k for k in ("train_accuracy", "validation_accuracy", "test_accuracy")
                  if k in columns]
    losses = [k for k in ("train_loss", "validation_loss", "test_loss") if k in columns]
    losses += [k for k in columns if k.endswith("_loss") and k not in losses]
    angles = [k for k in columns if k.startswith("angle_")]
    infos = [k for k in columns if k.startswith("corrinfo_")]
    offdiag = [k for k in columns if k.startswith("offdiag_") and not k.startswith("offdiag_in_")]
    atoms: dict[str, list[str]] = {}         # population -> its PID atom columns
    for k in columns:
        if k.startswith("train_") and "_pi_" in k:
            atoms.setdefault(k[len("train_"):k.rindex("_pi_")], []).append(k)
    pid_panels = list(atoms.values())
    skip = {"epoch", "lr_scale", "seconds", "train_seconds", "peak_test_accuracy", "peak_epoch",
            *accuracies, *losses, *angles, *infos, *offdiag,
            *(k for k in columns if k.startswith("offdiag_in_")),
            *(k for keys in pid_panels for k in keys)}
    others = [k for k in columns if k not in skip]
    if not (accuracies or losses or angles or infos or offdiag or pid_panels or others):
        raise NeurosimError(f"{metrics} has no metric columns to plot.")
    panels = [p for p in (accuracies, losses, angles, infos, offdiag, *pid_panels, others) if p]
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    from matplotlib.ticker import MaxNLocator
    for ax, keys in zip(axes.flat, panels):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if keys is accuracies:
            for key in keys:
                ax.plot(epochs, [100 * float(r[key]) for r in rows], marker="o", ms=3,
                        label=key[:-len("_accuracy")])
            ax.set_ylabel("accuracy (%)")
            final = keys[-1]
            ax.set_title(f"{Path(run_dir).name}: final {final[:-len('_accuracy')]} "
                         f"{100 * float(rows[-1][final]):.2f}%")
        elif keys is losses:
            values = []
            for key in keys:
                series = [float(r[key]) for r in rows]
                values += [v for v in series if math.isfinite(v)]
                ax.plot(epochs, series, marker="o", ms=3, label=key[:-len("_loss")])
            if values and min(values) > 0 and max(values) > 10 * min(values):
                ax.set_yscale("log")
            ax.set_ylabel("loss (per sample)")
        elif keys is angles:
            for key in keys:
                label = "(W_L...W_1)^T vs F" if key == "angle_F" else key[6:]
                ax.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=label)
            if "angle_F" in keys:
                ax.axhline(90.0, color="0.5", lw=0.8, ls="--", zorder=0)
            ax.set_ylabel("angle (degrees)" if "angle_F" in keys and len(keys) > 1 else
                          "angle between (W_L...W_1)^T and F (degrees)" if "angle_F" in keys
                          else "angle between W_ff and W_fb^T (degrees)")
        elif keys is infos:
            for key in keys:        # layers differ by orders of magnitude: plot the change
                values = [float(r[key]) for r in rows]
                ax.plot(epochs, [v - values[0] for v in values], marker="o", ms=3,
                        label=f"{key[9:]} (epoch 1: {values[0]:.4g})")
            ax.set_ylabel("correlative information log det(R + eps I),\nchange since epoch 1")
        elif keys is offdiag:        # each lateral R's output (solid) and input (dashed)
            for i, key in enumerate(keys):
                color = f"C{i % 10}"
                name = key[len("offdiag_"):]
                ax.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, color=color,
                        label=name)
                if f"offdiag_in_{name}" in columns:
                    ax.plot(epochs, [float(r[f"offdiag_in_{name}"]) for r in rows], ls="--",
                            color=color, lw=1)
            ax.set_yscale("log")
            ax.set_ylabel("mean |off-diagonal correlation|\n(solid: R's output, dashed: input)")
        elif any(keys is atom_keys for atom_keys in pid_panels):
            population = keys[0][len("train_"):keys[0].rindex("_pi_")]
            for i, key in enumerate(keys):
                ax.plot(epochs, [float(r[key]) for r in rows], ms=2, marker="o",
                        color=f"C{i % 10}", ls="-" if i < 10 else "--",
                        label=key[key.rindex("_pi_") + 4:])
            ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)
            ax.set_ylabel(f'PID atoms of "{population}" (bits,\nmean over neurons, training)')
            ax.legend(fontsize=6, ncol=2)
            continue
        else:
            for key in keys:
                ax.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=key)
            ax.set_ylabel("metric")
            if not accuracies:
                ax.set_title(Path(run_dir).name)
        ax.legend()
    _save(plt, fig, out)
    return Path(out)


def plot_path(path, out=None, *, log: Callable[[str], Any] | None = None,
              **selection) -> Path:
    """Plot a run directory or a recording file; returns the PNG path (default: next to the
    input). ``selection`` (recordings only): populations, compartments, variables, samples,
    neurons, projections, synapses, t_start, t_stop, max_neurons, max_synapses (see the
    module docstring); ``log`` receives notes on what was left out."""
    path = Path(path)
    allowed = [*SELECTION, "max_neurons", "max_synapses"]
    for key in selection:
        if key not in allowed:
            raise unknown("plot selection", key, allowed, f"plot_path({path})")
    given = {k: v for k, v in selection.items() if v is not None}
    if path.is_dir():
        if given:
            flags = ", ".join(SELECTION.get(k, k) for k in given)
            raise ConfigError(f"{path} is a training run directory: its plot shows metrics.csv "
                              f"per epoch; {flags} choose what to draw from a recording "
                              "(FILE.h5 written by `neurosim simulate`).")
        if not (path / "metrics.csv").exists() and any(path.glob("seed_*/metrics.csv")):
            from .table import make_table          # an ensemble (train --seeds): seed bands
            target = Path(out or path / "training.png")
            make_table([path], plot_out=target)
            return target
        return plot_run(path, out or path / "training.png")
    if not path.exists():
        raise NeurosimError(f"{path} does not exist; give a recording .h5 or a run directory.")
    return plot_recording(path, out or path.with_suffix(".png"), log=log, **given)
