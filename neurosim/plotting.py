"""Plots to PNG (matplotlib, an optional extra: ``pip install neurosim[plot]``).

- a recording: every recorded variable against time, one panel per
  population/compartment/variable (first sample of the batch, up to 10 neurons);
- a training run directory: train/validation/test accuracy per epoch (when measured), the
  angle between forward and feedback weights and each layer's correlative information (when
  recorded), and every other metric column (e.g. pc_alignment_*, train_rate_*).
"""
from __future__ import annotations

import csv
from pathlib import Path

from .errors import NeurosimError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise NeurosimError("plotting needs matplotlib: `pip install 'neurosim[plot]'` "
                            "(or `pip install matplotlib`).") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_recording(path, out, max_neurons: int = 10) -> Path:
    from .io import open_recording
    plt = _pyplot()
    with open_recording(path) as rec:
        keys = rec.variables()
        if not keys:
            raise NeurosimError(f"{path} holds no recorded variables to plot.")
        fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.2 * len(keys) + 0.6), sharex=True,
                                 squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            var = rec.read(key)
            values = var.values[:, 0, :max_neurons]
            ax.plot(var.time, values, lw=1)
            units = var.attrs.get("units", "")
            ax.set_ylabel(f"{key}\n[{units}]" if units else key, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("time")
        title = rec.attrs.get("model", Path(path).stem)
        fig.suptitle(f"{title} - solver {rec.attrs.get('solver', '?')} (sample 0, "
                     f"first {max_neurons} neurons)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_run(run_dir, out) -> Path:
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
    angles = [k for k in columns if k.startswith("angle_")]
    infos = [k for k in columns if k.startswith("corrinfo_")]
    skip = {"epoch", "lr_scale", "seconds", "train_seconds", *accuracies, *angles, *infos}
    others = [k for k in columns if k not in skip and not k.endswith("_loss")]
    if not (accuracies or angles or infos or others):
        raise NeurosimError(f"{metrics} has no metric columns to plot.")
    panels = [p for p in (accuracies, angles, infos, others) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, keys in zip(axes[0], panels):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if keys is accuracies:
            for key in keys:
                ax.plot(epochs, [100 * float(r[key]) for r in rows], marker="o", ms=3,
                        label=key[:-len("_accuracy")])
            ax.set_ylabel("accuracy (%)")
            final = keys[-1]
            ax.set_title(f"{Path(run_dir).name}: final {final[:-len('_accuracy')]} "
                         f"{100 * float(rows[-1][final]):.2f}%")
        elif keys is angles:
            for key in keys:
                ax.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=key[6:])
            ax.set_ylabel("angle between W_ff and W_fb^T (degrees)")
        elif keys is infos:
            for key in keys:        # layers differ by orders of magnitude: plot the change
                values = [float(r[key]) for r in rows]
                ax.plot(epochs, [v - values[0] for v in values], marker="o", ms=3,
                        label=f"{key[9:]} (epoch 1: {values[0]:.4g})")
            ax.set_ylabel("correlative information log det(R + eps I),\nchange since epoch 1")
        else:
            for key in keys:
                ax.plot(epochs, [float(r[key]) for r in rows], marker="o", ms=3, label=key)
            ax.set_ylabel("metric")
            if not accuracies:
                ax.set_title(Path(run_dir).name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def plot_path(path, out=None) -> Path:
    """Plot a run directory or a recording file; returns the PNG path."""
    path = Path(path)
    if path.is_dir():
        return plot_run(path, out or path / "training.png")
    if not path.exists():
        raise NeurosimError(f"{path} does not exist; give a recording .h5 or a run directory.")
    return plot_recording(path, out or path.with_suffix(".png"))
