"""The ``neurosim`` command line: a thin layer over the library.

    neurosim simulate MODEL.toml --solver NAME --duration T --out FILE.h5
    neurosim train MODEL.toml --out RUN_DIR [--epochs N] [--seed S]
    neurosim resume RUN_DIR [--epochs N]
    neurosim inspect FILE.h5|RUN_DIR
    neurosim plot FILE.h5|RUN_DIR [--out PNG] [--populations P..] [--variables V..] [--samples I..]
                  [--neurons I..] [--projections W..] [--synapses POST:PRE..] [--t-start T] ...
    neurosim data list | neurosim data fetch NAME [--from PATH]
    neurosim sweep SWEEP.toml --out DIR [--workers N] [--storage URL] [--executor ray]
"""
from __future__ import annotations

import argparse
import math
import os
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


# ---------------------------------------------------------------------------- argument checks
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors on stderr, exit status 2: "neurosim: error: argument
    --steps: must be a whole number >= 1, got '0' (see `neurosim simulate --help`)."."""

    def error(self, message):
        self.exit(2, f"neurosim: error: {message} (see `{self.prog} --help`).\n")


def _checked(convert, text: str, test, what: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not test(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (durations, step sizes, tolerances)."""
    return _checked(float, text, lambda v: v > 0, "a finite number > 0")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, batch sizes, epochs, threads)."""
    return _checked(int, text, lambda v: v >= 1, "a whole number >= 1")


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (seeds)."""
    return _checked(int, text, lambda v: v >= 0, "a whole number >= 0")


def seed_list(text: str) -> list[int]:
    """argparse type: seeds as "0-9", "0,1,2" or "0-4,7" (whole numbers >= 0, no repeats)."""
    seeds = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            first = last = -1
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers >= 0 written as "
                                             '"0-9", "0,1,2" or "0-4,7"')
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed; each member needs its own")
    return seeds


def device_name(text: str) -> str:
    """argparse type: "cpu", "cuda" or "cuda:N" (whether CUDA is there is checked later)."""
    import torch
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f'"{text}" is not a device; use cpu, cuda or cuda:N')
    return text


def _same_file(a, b) -> bool:
    return a is not None and b is not None and \
        Path(a).expanduser().absolute().resolve() == Path(b).expanduser().absolute().resolve()


def _check_output_file(path, flag: str, what: str, force: bool) -> Path:
    """Refuse, before any work starts, an output file that cannot be written (missing or
    read-only directory, a directory in its place) or that exists, unless --force."""
    path = Path(path)
    if path.is_dir():
        example = path / ("run.h5" if what == "recording" else "checkpoint.h5")
        raise NeurosimError(f"{flag} {path} is a directory; give a file path, e.g. "
                            f"{flag} {example}.")
    parent = path.parent
    if not parent.exists():
        raise NeurosimError(f"{flag} {path}: directory {parent} does not exist; create it "
                            "first or choose another path.")
    _check_writable_dir(parent, flag, path)
    if path.exists() or path.is_symlink():
        if not force:
            raise NeurosimError(f"{what} {path} already exists; choose another {flag} or pass "
                                "--force to replace it.")
        if not os.access(path, os.W_OK):
            raise NeurosimError(f"{flag} {path} is read-only; make it writable or choose "
                                "another path.")
    return path


def _check_simulate_outputs(args) -> None:
    """simulate: --out and --checkpoint writable, not clobbered without --force, distinct
    from each other, from --resume and from the model file; checked before anything is read
    or written."""
    for path, flag in ((args.out, "--out"), (args.checkpoint, "--checkpoint")):
        if _same_file(path, args.model):
            raise NeurosimError(f"{flag} {path} is the model file; write the "
                                f"{'recording' if flag == '--out' else 'checkpoint'} to another "
                                "file (an .h5 path).")
    # with --resume an existing --out is continued (the recording of the run resumed)
    _check_output_file(args.out, "--out", "recording", args.force or bool(args.resume))
    if _same_file(args.out, args.resume):
        raise NeurosimError(f"--out {args.out} is the checkpoint given to --resume; write the "
                            "recording to another file.")
    if args.checkpoint:
        if _same_file(args.checkpoint, args.out):
            raise NeurosimError(f"--checkpoint and --out both name {args.out}; give the "
                                "checkpoint another path.")
        # continuing a checkpoint into itself replaces it by its own later state
        _check_output_file(args.checkpoint, "--checkpoint", "checkpoint",
                           args.force or _same_file(args.checkpoint, args.resume))


def _check_run_dir(run_dir: Path, force: bool, model=None) -> None:
    """train --out: a directory (new or existing) that can be written and holds no run,
    unless --force, and is not the ``model`` file."""
    if _same_file(run_dir, model):
        raise NeurosimError(f"--out {run_dir} is the model file; a training run is a directory: "
                            "give a new or empty directory path.")
    if run_dir.exists() and not run_dir.is_dir():
        raise NeurosimError(f"--out {run_dir} is a file; a training run is a directory: give a "
                            "new or empty directory path.")
    if (run_dir / "run.h5").exists() and not force:
        raise NeurosimError(f"{run_dir} already holds a run; continue it with `neurosim resume "
                            f"{run_dir}`, or pass --force to start over.")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    _check_writable_dir(existing, "--out", run_dir)


def _check_writable_dir(directory: Path, flag: str, path) -> None:
    """The existing ``directory`` that will hold ``path`` is a directory we may write to."""
    if not directory.is_dir():
        raise NeurosimError(f"{flag} {path}: {directory} is a file, not a directory; choose "
                            "another path.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise NeurosimError(f"{flag} {path}: directory {directory} is not writable; choose a "
                            "directory you can write to.")


# ---------------------------------------------------------------------------- size checks
SIZE_HINT = ("make the populations, --batch or the monitors smaller (fewer neurons: "
             "[[monitor]] indices; a smaller --chunk-size for weight monitors)")
DISK_HINT = "record fewer steps or neurons ([[monitor]] every, indices) or write --out elsewhere"


def _simulation_size_check(args, model, overrides) -> None:
    """Before the network is compiled: its weights, state, solver and recorder buffers must
    fit in the available memory (skipped with --no-size-check)."""
    from . import sizing
    from .graph import parse_model_text
    from .io import MonitorSpec
    from .registry import importable_from
    from .simulation import UNITS, monitors_from, simulation_options
    from .training.config import build_network
    where = str(model.path)
    data = parse_model_text(model.text, where)
    with importable_from(model.path.parent):
        network = build_network(data, where)
    options = simulation_options(data, where, **overrides)
    monitors = monitors_from(data, network, where) or \
        [MonitorSpec(p.name, "soma", "u", units=UNITS["u"]) for p in network.dynamic]
    args.size_estimate = sizing.estimate_simulation(network, options, monitors,
                                                    chunk_size=args.chunk_size)
    if not args.no_size_check:
        sizing.check_size(args.size_estimate, disk=False, hint=SIZE_HINT)


def _recording_size_check(args, sim, monitors) -> None:
    """Before the recording is created: it (stimuli included) must fit on the disk of --out
    (skipped with --no-size-check)."""
    from . import sizing
    stimuli = getattr(sim, "stimulus_monitors", None)
    extra = [m for m, _ in stimuli(monitors)] if stimuli is not None else []
    estimate = sizing.estimate_simulation(sim, monitors=[*monitors, *extra],
                                          chunk_size=args.chunk_size, out=args.out,
                                          checkpoint=args.checkpoint)
    args.size_estimate = estimate
    if not args.no_size_check:
        sizing.check_size(estimate, memory=False, disk_hint=DISK_HINT)


def _training_checks(args, run_dir: Path) -> None:
    """train, before anything is built or written: the run directory, a model with epochs to
    train, and (unless --no-size-check) memory and disk for the network and checkpoints."""
    from . import sizing
    from .graph import load_model_file, parse_model_text
    from .registry import importable_from
    from .training.config import build_network, split_tables, training_config_from_table
    _check_run_dir(run_dir, args.force, args.model)
    for seed in args.seeds or ():
        if (run_dir / f"seed_{seed}" / "run.h5").exists() and not args.force:
            raise NeurosimError(f"{run_dir / f'seed_{seed}'} already holds a run; continue the "
                                f"ensemble with `neurosim resume {run_dir}`, or pass --force "
                                "to start over.")
    model = load_model_file(args.model)
    where = str(model.path)
    data = parse_model_text(model.text, where)
    overrides = {k: v for k, v in dict(epochs=args.epochs, seed=args.seed,
                                       batch_size=args.batch_size, device=args.device,
                                       dtype=args.dtype, threads=args.threads,
                                       keep_checkpoints=args.keep_checkpoints).items()
                 if v is not None}
    training, _ = split_tables(data, where, overrides)
    config = training_config_from_table(training, where)
    if config.epochs < 1:
        raise NeurosimError(f"{where} [training] epochs is {config.epochs}: nothing to train; set "
                            "epochs >= 1 in the model file or pass --epochs N.")
    with importable_from(model.path.parent):
        network = build_network(data, where)
    args.size_estimate = sizing.estimate_training(network, config, run_dir=run_dir,
                                                  members=len(args.seeds or [None]))
    if not args.no_size_check:
        sizing.check_size(args.size_estimate,
                          hint="use a smaller --batch-size, [training] eval_batch_size or "
                               "network",
                          disk_hint="write the run (--out) to a disk with more room")


def _simulate(args) -> None:
    from .graph import load_model_file, parse_model_text
    from .io import MonitorSpec, Recorder
    from .simulation import UNITS, Simulation, monitors_from
    _check_simulate_outputs(args)
    overrides = dict(solver=args.solver, duration=args.duration, n_steps=args.steps, dt=args.dt,
                     batch=args.batch, seed=args.seed, device=args.device, dtype=args.dtype,
                     rtol=args.rtol, atol=args.atol, steady_tol=args.steady_tol,
                     plasticity=args.plasticity)
    overrides["max_rhs_evals"] = args.max_rhs_evals
    if args.resume:
        sim = Simulation.load_checkpoint(args.resume, **overrides)
        text, where = sim.model_text, args.resume
        if sim.options.total_steps() <= sim.step:
            raise NeurosimError(f"checkpoint {args.resume} is already at step {sim.step} "
                                f"(t={sim.t:g}), the end of its run; give a larger --steps or "
                                "--duration to continue it.")
    else:
        model = load_model_file(args.model)
        _simulation_size_check(args, model, overrides)
        sim = Simulation.from_model_text(model.text, where=str(model.path),
                                         base_dir=model.path.parent, **overrides)
        text, where = model.text, str(model.path)
    monitors = monitors_from(parse_model_text(text, where), sim.network, where)
    if not monitors:
        monitors = [MonitorSpec(p.name, "soma", "u", units=UNITS["u"]) for p in sim.network.dynamic]
    _recording_size_check(args, sim, monitors)
    attrs = sim.run_attrs()
    # resuming into the recording of the run that wrote the checkpoint: continue that file
    # (Simulation.run refuses a finished recording that goes on past the checkpoint)
    append = bool(args.resume) and not args.force and Path(args.out).exists()
    with Recorder(args.out, chunk_size=args.chunk_size, attrs=attrs, time_units="1 (model time)",
                  config_text=text, overwrite=args.force, append=append) as recorder:
        stats = sim.run(monitors=monitors, recorder=recorder, checkpoint=args.checkpoint,
                        checkpoint_every=args.checkpoint_every or sim.options.checkpoint_every,
                        progress=not args.quiet)
    if args.checkpoint:
        sim.save_checkpoint(args.checkpoint)
    how = f"; {stats.path}" if stats.path else ""
    msg = (f"{stats.steps} steps to t={stats.t:g} with {sim.solver.name} "
           f"({stats.rhs_evals} right-hand-side evaluations{how})")
    if stats.converged is not None:
        msg += (f"; steady state {'reached' if stats.converged else 'NOT reached'} "
                f"(max |du/dt| = {stats.residual:.3g})")
    from .sizing import format_bytes
    size = format_bytes(Path(args.out).stat().st_size)
    print(f"{msg}; recording {'continued in' if append else 'written to'} {args.out} ({size})")


def _train(args) -> None:
    from .training import Trainer
    run_dir = Path(args.out)
    if args.seeds:
        return _train_ensemble(args, run_dir)
    rank = 0
    if args.distributed:
        from .graph import load_model_file
        from .training.distributed import init_from_environment
        configured = load_model_file(args.model).data.get("training", {}).get("device", "cpu")
        rank, _, args.device = init_from_environment(args.device or configured)
    if rank == 0:                        # the other processes of a data-parallel run write nothing
        _training_checks(args, run_dir)
    trainer = Trainer.from_model_file(args.model, progress=not args.quiet and rank == 0,
                                      epochs=args.epochs, seed=args.seed,
                                      batch_size=args.batch_size, device=args.device,
                                      dtype=args.dtype, threads=args.threads,
                                      keep_checkpoints=args.keep_checkpoints)
    if args.distributed:
        from .training.distributed import DataParallel
        trainer.protocol = DataParallel(trainer.protocol)
    trainer.fit(run_dir, write=rank == 0, log=print if rank == 0 else None)
    if rank:
        return
    kept = ", earlier epochs in checkpoints/" if trainer.config.keep_checkpoints > 1 else ""
    print(f"run saved in {run_dir} (metrics.csv, run.h5{kept})")


def _train_ensemble(args, run_dir: Path) -> None:
    from .training import Ensemble
    if args.seed is not None or args.distributed:
        flag = "--seed" if args.seed is not None else "--distributed"
        raise NeurosimError(f"--seeds trains an ensemble (one member per seed); it does not "
                            f"combine with {flag}.")
    _training_checks(args, run_dir)
    ensemble = Ensemble.from_model_file(args.model, args.seeds, progress=not args.quiet,
                                        epochs=args.epochs, batch_size=args.batch_size,
                                        device=args.device, dtype=args.dtype,
                                        threads=args.threads,
                                        keep_checkpoints=args.keep_checkpoints)
    ensemble.fit(run_dir)
    print(f"ensemble of {len(args.seeds)} saved in {run_dir}/seed_<s>/ (one run directory "
          f"per member; `neurosim table {run_dir}` summarises them)")


def _resume(args) -> None:
    from .training import Ensemble, Trainer
    if not (Path(args.run_dir) / "run.h5").exists() and any(
            Path(args.run_dir).glob("seed_*/run.h5")):
        ensemble = Ensemble.resume(args.run_dir, progress=not args.quiet, device=args.device,
                                   threads=args.threads, keep_checkpoints=args.keep_checkpoints)
        target = args.epochs if args.epochs is not None else ensemble.members[0].config.epochs
        if ensemble.epoch >= target:
            print(f"{args.run_dir} already has {ensemble.epoch} epochs (target {target}); "
                  "pass --epochs N to extend it.")
            return
        ensemble.fit(args.run_dir, epochs=target)
        return
    trainer = Trainer.resume(args.run_dir, progress=not args.quiet, device=args.device,
                             threads=args.threads, keep_checkpoints=args.keep_checkpoints)
    target = args.epochs if args.epochs is not None else trainer.config.epochs
    if trainer.epoch >= target:
        print(f"{args.run_dir} already has {trainer.epoch} epochs (target {target}); "
              "pass --epochs N to extend it.")
        return
    trainer.fit(args.run_dir, epochs=target)


def _inspect(args) -> None:
    folder = Path(args.file)
    if folder.is_dir() and not (folder / "run.h5").exists() and \
            not (folder / "metrics.csv").exists() and any(folder.glob("seed_*/run.h5")):
        from .table import make_table              # an ensemble (train --seeds)
        members = sorted(d.name for d in folder.glob("seed_*") if (d / "run.h5").exists())
        print(f"{folder}: an ensemble of {len(members)} members ({', '.join(members)}); "
              f"`neurosim inspect {folder / members[0]}` shows one of them.")
        print(make_table([folder]), end="")
        return
    if Path(args.file).is_dir():
        from .training.summary import describe_run
        print(describe_run(args.file))
        return
    from .io import describe_h5
    print(describe_h5(args.file))


def _plot(args) -> None:
    from .plotting import SELECTION, plot_path
    selection = {key: getattr(args, key) for key in SELECTION
                 if getattr(args, key) is not None}
    out = plot_path(args.path, args.out, log=print, **selection)
    print(f"wrote {out}")


def _table(args) -> None:
    from .table import make_table
    print(make_table(args.runs, csv_out=args.csv, markdown_out=args.markdown,
                     plot_out=args.plot), end="")
    for flag, path in (("csv", args.csv), ("markdown", args.markdown), ("plot", args.plot)):
        if path:
            print(f"wrote {path}")


def _sweep(args) -> None:
    from .sweep import load_sweep
    from .sweep.run import run_sweep
    if args.executor != "ray" and args.address:
        raise NeurosimError("--address names a Ray cluster; use it with --executor ray.")
    spec = load_sweep(args.sweep)
    summary = run_sweep(spec, args.out, storage=args.storage, workers=args.workers,
                        threads=args.threads, executor=args.executor, address=args.address,
                        heartbeat=args.heartbeat, verbose=args.verbose, quiet=args.quiet)
    best = summary["best"]
    if best is not None:
        values = spec.describe({p.key: best[p.key] for p in spec.space})
        print(f"best: trial {best['trial']}, {spec.objective} {best['objective']:.4f}: {values}")
    print(f"sweep saved in {args.out} (summary.md, summary.csv, trials/)")


def _data(args) -> None:
    from .data.cli import cli_fetch, cli_list
    if args.data_command == "list":
        print(cli_list(args.root))
    else:
        print(cli_fetch(args.name, getattr(args, "from"), args.root))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = _Parser(prog="neurosim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"neurosim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="integrate a model's dynamics and record them")
    sim.add_argument("model", nargs="?", help="model file (TOML)")
    sim.add_argument("--out", required=True, help="recording file to write (HDF5)")
    sim.add_argument("--solver", help="euler, gs-euler, heun, rk4, dopri5, bdf, lsoda, ...")
    length = sim.add_mutually_exclusive_group()
    length.add_argument("--duration", type=positive_float, help="simulated time")
    length.add_argument("--steps", type=positive_int,
                        help="number of steps (instead of --duration)")
    sim.add_argument("--dt", type=positive_float,
                     help="step size (output interval of adaptive solvers)")
    sim.add_argument("--batch", type=positive_int, help="samples integrated side by side")
    sim.add_argument("--seed", type=non_negative_int)
    sim.add_argument("--rtol", type=positive_float, help="relative tolerance (adaptive solvers)")
    sim.add_argument("--atol", type=positive_float, help="absolute tolerance (adaptive solvers)")
    sim.add_argument("--max-rhs-evals", type=positive_int, metavar="N",
                     help="adaptive solvers: right-hand-side evaluations allowed per output "
                     "interval (dt) before the run stops (default 10000); a run may also "
                     "average at most max(200, N / 50) per output step")
    sim.add_argument("--steady-tol", type=positive_float, help="stop once max |du/dt| < this")
    sim.add_argument("--plasticity", type=_plasticity,
                     help='rules: "off", "continuous", or N (run every N steps)')
    sim.add_argument("--chunk-size", type=positive_int, default=256,
                     help="records per HDF5 write")
    sim.add_argument("--checkpoint", help="checkpoint file written during/after the run")
    sim.add_argument("--checkpoint-every", type=positive_int, help="steps between checkpoints")
    sim.add_argument("--resume", help="continue from this simulation checkpoint")
    sim.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    sim.add_argument("--dtype", choices=["float32", "float64"])
    sim.add_argument("--force", action="store_true",
                     help="overwrite an existing --out (and --checkpoint) file; with --resume, "
                     "an existing --out is otherwise continued: the recording of a crashed run, "
                     "or one that ends at the checkpoint")
    sim.add_argument("--no-size-check", action="store_true",
                     help="start even if the memory or disk estimate exceeds what is free")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=_simulate)

    train = sub.add_parser("train", help="train a model (e.g. CorInfoMax by EP)")
    train.add_argument("model")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--epochs", type=positive_int)
    train.add_argument("--seed", type=non_negative_int)
    train.add_argument("--seeds", type=seed_list, metavar="SEEDS",
                       help='train one member per seed ("0-9", "0,1,2") as one batched '
                       "ensemble in this process; each member is a run directory "
                       "OUT/seed_<s> (every protocol with a fixed-step solver)")
    train.add_argument("--batch-size", type=positive_int)
    train.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    train.add_argument("--dtype", choices=["float32", "float64"])
    train.add_argument("--threads", type=positive_int,
                       help="CPU threads for torch (default: all cores)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the processes torchrun starts (gloo on CPUs, "
                       "NCCL on GPUs; batch-linear protocols such as copi); the first writes "
                       "the run")
    train.add_argument("--keep-checkpoints", type=positive_int, metavar="K",
                       help="checkpoints kept: run.h5 and the K-1 before it in checkpoints/ "
                       "(default: [training] keep_checkpoints, else 3)")
    train.add_argument("--force", action="store_true", help="overwrite an existing run")
    train.add_argument("--no-size-check", action="store_true",
                       help="start even if the memory or disk estimate exceeds what is free")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=_train)

    resume = sub.add_parser("resume", help="continue (or extend) a training run")
    resume.add_argument("run_dir", help="a run directory, or an ensemble's (--seeds) folder")
    resume.add_argument("--epochs", type=positive_int, help="train until this many epochs")
    resume.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N")
    resume.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    resume.add_argument("--keep-checkpoints", type=positive_int, metavar="K",
                        help="checkpoints kept from now on (default: as the run was started)")
    resume.add_argument("--quiet", action="store_true")
    resume.set_defaults(func=_resume)

    inspect = sub.add_parser("inspect", help="show what a recording or checkpoint holds, or "
                             "summarise a training run directory")
    inspect.add_argument("file", help="an HDF5 file (recording, checkpoint) or a run directory")
    inspect.set_defaults(func=_inspect)

    plot = sub.add_parser("plot", help="plot a recording (voltages) or a run (accuracy)",
                          description="Plot a recording (one panel per recorded variable) or a "
                          "training run directory (its metrics per epoch). The selection flags "
                          "apply to recordings; naming only neuron flags draws neurons only, "
                          "naming only --projections/--synapses draws weights only.")
    plot.add_argument("path", help="recording .h5 or run directory")
    plot.add_argument("--out", help="PNG to write (default next to the input)")
    plot.add_argument("--populations", nargs="+", metavar="POP",
                      help="populations to draw (default: all recorded)")
    plot.add_argument("--compartments", nargs="+", metavar="COMP",
                      help="compartments to draw: soma, basal, apical, ...")
    plot.add_argument("--variables", nargs="+", metavar="VAR", help="variables to draw: u, v, r")
    plot.add_argument("--samples", nargs="+", type=int, metavar="I",
                      help="batch rows to draw (default: 0)")
    plot.add_argument("--neurons", nargs="+", type=int, metavar="ID",
                      help="neuron indices within the population (default: the first 10 "
                      "recorded)")
    plot.add_argument("--projections", nargs="+", metavar="PROJ",
                      help="weight recordings to draw (default: all)")
    plot.add_argument("--synapses", nargs="+", metavar="POST:PRE",
                      help="weights to draw, e.g. 0:3 (default: every synapse of a matrix with "
                      "at most 16; larger matrices are left out)")
    plot.add_argument("--t-start", type=float, metavar="T", help="start of the time window")
    plot.add_argument("--t-stop", type=float, metavar="T", help="end of the time window")
    plot.set_defaults(func=_plot)

    table = sub.add_parser("table", help="mean +- std over seeds per configuration of runs",
                           description="Group run directories by configuration (model files "
                           "equal up to [training] seed) and show, per configuration, the final "
                           "and peak test accuracy, the epoch of the peak, epochs and time as "
                           "mean +- std over seeds, with the published number when the model "
                           "file has a [reference] table.")
    table.add_argument("runs", nargs="+", help="run directories or folders holding them")
    table.add_argument("--csv", help="also write the table as CSV")
    table.add_argument("--markdown", help="also write the Markdown table to this file")
    table.add_argument("--plot", help="learning curves (mean over seeds, range as a band)")
    table.set_defaults(func=_table)

    sweep = sub.add_parser("sweep", help="search a model file's settings over seeds (Optuna)",
                           description="Run (or resume) the sweep a sweep file describes: "
                           "each trial is one configuration, trained once per seed into "
                           "ordinary run directories under --out/trials. See docs/sweeps.md.")
    sweep.add_argument("sweep", help="sweep file (TOML: [sweep] and [space])")
    sweep.add_argument("--out", required=True,
                       help="sweep directory (rerun with the same one to resume)")
    sweep.add_argument("--storage", metavar="URL",
                       help="study database shared by several machines, e.g. "
                       "postgresql://user:pw@host/db (default: sqlite in --out)")
    sweep.add_argument("--workers", type=positive_int, metavar="N",
                       help="trials run at once (default 1; with Ray: the cluster's CPUs)")
    sweep.add_argument("--threads", type=positive_int,
                       help="CPU threads per worker (default: cores / workers; Ray: 1)")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local processes (default) or Ray tasks")
    sweep.add_argument("--address", help='Ray cluster address (e.g. "auto", host:6379), or '
                       '"local" for a Ray cluster on this machine (the default)')
    sweep.add_argument("--heartbeat", type=positive_int, default=10, metavar="S",
                       help="seconds between a trial's heartbeats; a trial silent for 3 of "
                       "them is taken as dead and continued by another worker (default 10)")
    sweep.add_argument("--verbose", action="store_true", help="a line per epoch of every run")
    sweep.add_argument("--quiet", action="store_true", help="no line per trial")
    sweep.set_defaults(func=_sweep)

    data = sub.add_parser("data", help="datasets: list what is present, fetch")
    data.add_argument("--root", help="data directory (default $NEUROSIM_DATA or ~/.cache/neurosim/data)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dsub.add_parser("list", help="show datasets and where they are")
    fetch = dsub.add_parser("fetch", help="fetch and verify a dataset")
    fetch.add_argument("name", help="mnist, fashion-mnist, cifar10")
    fetch.add_argument("--from", help="files or directory you already have")
    data.set_defaults(func=_data)
    return parser


def _run_command(args) -> None:
    """``args.func(args)``, with neurosim's warnings (:class:`~neurosim.errors.NeurosimWarning`,
    e.g. a StiffnessWarning) printed as one line each, ``neurosim: warning: ...``, above the
    progress bar; other warnings are shown as Python shows them."""
    import warnings
    from .errors import NeurosimWarning
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, NeurosimWarning):
            return shown(message, category, filename, lineno, file, line)
        text = "neurosim: warning: " + " ".join(str(message).split())
        try:
            from tqdm import tqdm
            tqdm.write(text, file=file or sys.stderr)
        except ImportError:
            print(text, file=file or sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        args.func(args)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "simulate" and not (args.model or args.resume):
            parser.error("simulate needs a MODEL.toml (or --resume CHECKPOINT)")
        if args.command == "simulate" and args.model and args.resume:
            parser.error("simulate takes a MODEL.toml or --resume CHECKPOINT, not both (a "
                         "checkpoint holds its model)")
    except SystemExit as stop:        # --help, --version, or a usage error (one line, status 2)
        return stop.code if isinstance(stop.code, int) else 2
    try:
        _run_command(args)
    except NeurosimError as err:
        print(f"neurosim: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        from .sizing import allocation_message, is_allocation_error
        if not is_allocation_error(err):
            raise
        message = allocation_message(getattr(args, "size_estimate", None), err)
        print(f"neurosim: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:           # disk full, permissions, a file vanishing mid-run
        where = f" {err.filename}" if err.filename else ""
        print(f"neurosim: error: cannot read or write{where}: {err.strerror or err}. Free disk "
              "space or choose another path; checkpoints and recordings are written so that "
              "the last complete one stays readable.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neurosim: interrupted; the last checkpoint written is intact.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
