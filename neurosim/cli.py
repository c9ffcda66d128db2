"""The ``neurosim`` command line: a thin layer over the library.

    neurosim simulate MODEL.toml --solver NAME --duration T --out FILE.h5
    neurosim train MODEL.toml --out RUN_DIR [--epochs N] [--seed S]
    neurosim resume RUN_DIR [--epochs N]
    neurosim inspect FILE.h5
    neurosim plot FILE.h5|RUN_DIR [--out PNG]
    neurosim data list | neurosim data fetch NAME [--from PATH]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import NeurosimError


def _plasticity(text: str):
    """--plasticity: "off", "continuous" or a positive number of steps."""
    if text in ("off", "continuous"):
        return text
    if text.isdigit() and int(text) > 0:
        return {"every": int(text)}
    raise argparse.ArgumentTypeError(f'use "off", "continuous" or a positive number of steps, '
                                     f"got {text!r}")


def _simulate(args) -> None:
    from .graph import load_model_file, parse_model_text
    from .io import MonitorSpec, Recorder
    from .simulation import UNITS, Simulation, monitors_from
    overrides = dict(solver=args.solver, duration=args.duration, n_steps=args.steps, dt=args.dt,
                     batch=args.batch, seed=args.seed, device=args.device, dtype=args.dtype,
                     rtol=args.rtol, atol=args.atol, steady_tol=args.steady_tol,
                     plasticity=args.plasticity)
    if args.resume:
        sim = Simulation.load_checkpoint(args.resume, **overrides)
        text, where = sim.model_text, args.resume
    else:
        model = load_model_file(args.model)
        sim = Simulation.from_model_text(model.text, where=str(model.path),
                                         base_dir=model.path.parent, **overrides)
        text, where = model.text, str(model.path)
    monitors = monitors_from(parse_model_text(text, where), sim.network, where)
    if not monitors:
        monitors = [MonitorSpec(p.name, "soma", "u", units=UNITS["u"]) for p in sim.network.dynamic]
    attrs = {"model": sim.network.name, "solver": sim.solver.name,
             "schedule": repr(sim.schedule.config()), "batch": sim.options.batch,
             "dt": float(getattr(sim.schedule, "dt", 0.0))}
    with Recorder(args.out, chunk_size=args.chunk_size, attrs=attrs, time_units="1 (model time)",
                  config_text=text, overwrite=args.force) as recorder:
        stats = sim.run(monitors=monitors, recorder=recorder, checkpoint=args.checkpoint,
                        checkpoint_every=args.checkpoint_every or sim.options.checkpoint_every,
                        progress=not args.quiet)
    if args.checkpoint:
        sim.save_checkpoint(args.checkpoint)
    msg = (f"{stats.steps} steps to t={stats.t:g} with {sim.solver.name} "
           f"({stats.rhs_evals} right-hand-side evaluations)")
    if stats.converged is not None:
        msg += (f"; steady state {'reached' if stats.converged else 'NOT reached'} "
                f"(max |du/dt| = {stats.residual:.3g})")
    print(f"{msg}; recording written to {args.out}")


def _train(args) -> None:
    from .training import Trainer
    run_dir = Path(args.out)
    if (run_dir / "run.h5").exists() and not args.force:
        raise NeurosimError(f"{run_dir} already holds a run; continue it with `neurosim resume "
                            f"{run_dir}`, or pass --force to start over.")
    trainer = Trainer.from_model_file(args.model, progress=not args.quiet, epochs=args.epochs,
                                      seed=args.seed, batch_size=args.batch_size,
                                      device=args.device, dtype=args.dtype, threads=args.threads)
    trainer.fit(run_dir)
    print(f"run saved in {run_dir} (metrics.csv, run.h5)")


def _resume(args) -> None:
    from .training import Trainer
    trainer = Trainer.resume(args.run_dir, progress=not args.quiet, device=args.device,
                             threads=args.threads)
    target = args.epochs if args.epochs is not None else trainer.config.epochs
    if trainer.epoch >= target:
        print(f"{args.run_dir} already has {trainer.epoch} epochs (target {target}); "
              "pass --epochs N to extend it.")
        return
    trainer.fit(args.run_dir, epochs=target)


def _inspect(args) -> None:
    from .io import describe_h5
    print(describe_h5(args.file))


def _plot(args) -> None:
    from .plotting import plot_path
    out = plot_path(args.path, args.out)
    print(f"wrote {out}")


def _data(args) -> None:
    from .data.cli import cli_fetch, cli_list
    if args.data_command == "list":
        print(cli_list(args.root))
    else:
        print(cli_fetch(args.name, getattr(args, "from"), args.root))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="neurosim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"neurosim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="integrate a model's dynamics and record them")
    sim.add_argument("model", nargs="?", help="model file (TOML)")
    sim.add_argument("--out", required=True, help="recording file to write (HDF5)")
    sim.add_argument("--solver", help="euler, gs-euler, heun, rk4, dopri5, bdf, lsoda, ...")
    sim.add_argument("--duration", type=float, help="simulated time")
    sim.add_argument("--steps", type=int, help="number of steps (instead of --duration)")
    sim.add_argument("--dt", type=float, help="step size (output interval of adaptive solvers)")
    sim.add_argument("--batch", type=int, help="samples integrated side by side")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--rtol", type=float)
    sim.add_argument("--atol", type=float)
    sim.add_argument("--steady-tol", type=float, help="stop once max |du/dt| < this")
    sim.add_argument("--plasticity", type=_plasticity,
                     help='rules: "off", "continuous", or N (run every N steps)')
    sim.add_argument("--chunk-size", type=int, default=256, help="records per HDF5 write")
    sim.add_argument("--checkpoint", help="checkpoint file written during/after the run")
    sim.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    sim.add_argument("--resume", help="continue from this simulation checkpoint")
    sim.add_argument("--device", help="cpu or cuda")
    sim.add_argument("--dtype", choices=["float32", "float64"])
    sim.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    train = sub.add_parser("train", help="train a model (e.g. CorInfoMax by EP)")
    train.add_argument("model")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--device")
    train.add_argument("--dtype", choices=["float32", "float64"])
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    train.add_argument("--force", action="store_true", help="overwrite an existing run")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    resume = sub.add_parser("resume", help="continue (or extend) a training run")
    resume.add_argument("run_dir")
    resume.add_argument("--epochs", type=int, help="train until this many epochs")
    resume.add_argument("--device")
    resume.add_argument("--threads", type=int, help="CPU threads for torch")
    resume.add_argument("--quiet", action="store_true")
    resume.set_defaults(func=_resume)

    inspect = sub.add_parser("inspect", help="show what a recording or checkpoint holds")
    inspect.add_argument("file")
    inspect.set_defaults(func=_inspect)

    plot = sub.add_parser("plot", help="plot a recording (voltages) or a run (accuracy)")
    plot.add_argument("path", help="recording .h5 or run directory")
    plot.add_argument("--out", help="PNG to write (default next to the input)")
    plot.set_defaults(func=_plot)

    data = sub.add_parser("data", help="datasets: list what is present, fetch")
    data.add_argument("--root", help="data directory (default $NEUROSIM_DATA or ~/.cache/neurosim/data)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="show datasets and where they are")
    fetch = dsub.add_parser("fetch", help="fetch and verify a dataset")
    fetch.add_argument("name", help="mnist, fashion-mnist, cifar10")
    fetch.add_argument("--from", help="files or directory you already have")
    data.set_defaults(func=_data)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "simulate" and not (args.model or args.resume):
        parser.error("simulate needs a MODEL.toml (or --resume CHECKPOINT)")
    try:
        args.func(args)
    except NeurosimError as err:
        print(f"neurosim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurosim: interrupted; the last checkpoint written is intact.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
