"""``neurosim sweep``: check everything, open (or resume) the study, run the workers (local
processes or Ray tasks), then summarise.

The sweep directory (``--out``) holds

    sweep.toml     the sweep file as given
    sweep.json     its name, fingerprint and storage (a rerun with another sweep file,
                   model file or --storage is refused)
    study.db       the Optuna study (SQLite; absent with --storage postgresql://...)
    trials/<key>/  one trial: trial.json (its values) and seed_<s>/, ordinary run directories
    summary.md     the trials (state, objective, values), the best, and `neurosim table`
    summary.csv    one row per trial
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import NeurosimError
from ..io.atomic import write_text_atomic
from .spec import _short
from .study import (HEARTBEAT, SEEDS, ERROR, WorkerSetup, check_storage_url,
                    default_storage, default_threads, mask, open_study, plan_of,
                    require_optuna, work, worker_main)
from .trial import TRIALS_DIR, check_first, trial_key

STATE_FILE, SWEEP_COPY = "sweep.json", "sweep.toml"


def check_out_dir(spec, out: Path, url: str | None = None) -> None:
    """--out: new, empty, or a sweep directory of this very sweep (and, given ``url``, of
    this storage); writable."""
    if out.exists() and not out.is_dir():
        raise NeurosimError(f"--out {out} is a file; a sweep writes a directory: give a new or "
                            "empty directory path.")
    state = out / STATE_FILE
    if state.is_file():
        try:
            info = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise NeurosimError(f"{state} cannot be read ({err}); is it damaged? Give another "
                                "--out.") from None
        if info.get("digest") != spec.digest:
            raise NeurosimError(f"--out {out} holds the sweep \"{info.get('name')}\" made from "
                                f"{info.get('sweep_file')} (fingerprint {info.get('digest')}), "
                                "not from this sweep file and model file (fingerprint "
                                f"{spec.digest}); give another --out, or delete {out} to start "
                                "over.")
        recorded = info.get("storage")
        if url is not None and recorded and not _same_storage(recorded, url, out):
            own = recorded.startswith("sqlite:") and recorded.endswith("/study.db") and \
                (out / "study.db").is_file()
            how = "leave --storage out (its own study.db)" if own else \
                f"pass --storage {recorded} (with the password, if it has one)"
            raise NeurosimError(f"--out {out} holds a sweep whose study is in {recorded} (see "
                                f"{state}), not in {mask(url)}; to continue it, {how}, or "
                                "give another --out to start a new sweep.")
    elif out.is_dir() and any(out.iterdir()):
        raise NeurosimError(f"--out {out} is not empty and holds no sweep; give a new or empty "
                            "directory.")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise NeurosimError(f"--out {out}: {existing} is not a directory you can write to; "
                            "choose another path.")


def _same_storage(recorded: str, url: str, out: Path) -> bool:
    """Whether ``url`` is the storage sweep.json records (as masked); a sweep directory's
    own study.db is itself also after the directory was moved."""
    if recorded == mask(url):
        return True
    return url == default_storage(out) and recorded.startswith("sqlite:") and \
        recorded.endswith("/study.db") and (out / "study.db").is_file()


def _write_state(spec, out: Path, url: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SWEEP_COPY, spec.text)
    info = {"name": spec.name, "digest": spec.digest, "sweep_file": str(spec.path),
            "model_file": str(spec.model_path), "storage": mask(url),
            "sampler": spec.sampler, "planned": spec.planned, "seeds": list(spec.seeds)}
    write_text_atomic(out / STATE_FILE, json.dumps(info, indent=1) + "\n")


def run_sweep(spec, out, *, storage: str | None = None, workers: int | None = None,
              threads: int | None = None, executor: str = "local", address: str | None = None,
              heartbeat: int = HEARTBEAT, verbose: bool = False, quiet: bool = False,
              log=print) -> dict:
    """Run (or resume) a sweep into ``out``; returns the summary (see :func:`summarize`).
    Everything is checked before anything is written: the optional dependencies, the
    storage URL, --out (and the storage it records), the first configuration (built, its
    data loaded, its objective column written) and the study storage (opened). SIGINT or
    SIGTERM stops the workers, which queue their trials again, and raises
    KeyboardInterrupt."""
    require_optuna()
    out = Path(out)
    url = storage or default_storage(out)
    check_storage_url(url)
    if executor == "ray":
        _require_ray()
    check_out_dir(spec, out, url)
    check_first(spec)
    if url == default_storage(out):
        out.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, url, heartbeat)
    _write_state(spec, out, url)
    plan = plan_of(study, spec.planned)
    if plan.done:
        log(f"sweep {spec.name}: all {spec.planned} trials finished before; summarising")
    elif executor == "ray":
        with _interruptible():
            _run_ray(spec, out, url, workers, threads, address, heartbeat, verbose, quiet, log)
    else:
        workers = workers or 1
        threads = threads or default_threads(workers)
        log(f"sweep {spec.name}: {spec.planned} trials x {len(spec.seeds)} seeds "
            f"({spec.sampler}), {len(plan.finished)} finished before; {workers} worker"
            f"{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}; "
            f"study in {mask(url)}")
        setups = [WorkerSetup(spec, str(out.resolve()), url, threads, heartbeat, i,
                              verbose, quiet, check=workers > 1) for i in range(workers)]
        if workers == 1:                 # here, where check_first has just run
            with _interruptible():
                work(setups[0], log)
        else:
            _run_processes(setups)
    summary = summarize(spec, out, study)
    write_text_atomic(out / "summary.md", summary["markdown"])
    write_text_atomic(out / "summary.csv", summary["csv"])
    return summary


@contextmanager
def _interruptible(processes=()):
    """While inside: SIGINT and SIGTERM are passed on to ``processes`` (the worker processes,
    which then queue their trials again) and raise KeyboardInterrupt here. Outside the main
    thread (signals cannot be handled there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        for p in processes:
            if p.pid is not None and p.exitcode is None:      # started, still running
                os.kill(p.pid, number)
        raise KeyboardInterrupt

    before = {n: signal.signal(n, interrupt) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _stop(processes, wait: float = 30.0) -> None:
    """Give interrupted workers ``wait`` seconds to queue their trials again, then terminate
    those still running (SIGTERM, then SIGKILL): none is left behind. Further signals are
    ignored meanwhile."""
    before = {n: signal.signal(n, signal.SIG_IGN) for n in (signal.SIGINT, signal.SIGTERM)}
    try:
        deadline = time.monotonic() + wait
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for ending in ("terminate", "kill"):
            alive = [p for p in processes if p.exitcode is None]
            for p in alive:
                getattr(p, ending)()
            for p in alive:
                p.join(5)
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


def _run_processes(setups, target=worker_main, wait: float = 30.0) -> None:
    """The workers as local processes (``target(setup)`` each); on SIGINT or SIGTERM they
    are stopped (:func:`_stop`) and KeyboardInterrupt is raised."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=(s,), name=f"sweep-worker-{i}")
                 for i, s in enumerate(setups)]
    try:
        with _interruptible(processes):
            for p in processes:
                p.start()
            for p in processes:
                p.join()
    except KeyboardInterrupt:
        _stop([p for p in processes if p.pid is not None], wait)
        raise
    failed = [p for p in processes if p.exitcode != 0]
    if failed:
        raise NeurosimError(f"{len(failed)} of {len(processes)} workers stopped with an error "
                            "(above); finished trials are kept: fix the cause and run the same "
                            "command again to continue.")


# ---------------------------------------------------------------------------- Ray
def _require_ray():
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")       # every trial's line, not "repeated 3x"
    try:
        import ray
    except ImportError:
        raise NeurosimError("--executor ray needs Ray: pip install 'neurosim[ray]'.") from None
    return ray


def _ray_work(setup: WorkerSetup) -> int:
    """A Ray task: one worker loop."""
    return work(setup)


def _run_ray(spec, out, url, workers, threads, address, heartbeat, verbose, quiet, log):
    """The workers as Ray tasks (``address``: a cluster's, or "local" (also None) for a new
    cluster of this machine's with ``workers`` CPUs, never one that happens to run here)."""
    ray = _require_ray()
    threads = threads or 1
    options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True,
                   configure_logging=False)
    local = address in (None, "local")
    try:
        if local:
            ray.init(address="local", num_cpus=(workers or os.cpu_count() or 1) * threads,
                     **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if local:
            raise NeurosimError(f"--executor ray: cannot start a Ray cluster on this machine "
                                f"({err}); check the Ray installation, or give a running "
                                "cluster's --address.") from None
        raise NeurosimError(f"--address {address}: cannot connect to a Ray cluster ({err}); "
                            "start one with `ray start --head` or give its address.") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if url.startswith("sqlite") and len(nodes) > 1:
            raise NeurosimError(f"the Ray cluster has {len(nodes)} machines but the study is "
                                "in SQLite, which only one machine can share; pass --storage "
                                "postgresql://... and put --out on a filesystem every machine "
                                "mounts at the same path.")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus // threads)
        plan = plan_of(open_study(spec, url, heartbeat), spec.planned)
        log(f"sweep {spec.name}: {spec.planned} trials x {len(spec.seeds)} seeds "
            f"({spec.sampler}), {len(plan.finished)} finished before; {workers} Ray tasks x "
            f"{threads} thread{'s' if threads > 1 else ''} on {len(nodes)} node"
            f"{'s' if len(nodes) > 1 else ''} ({cpus} CPUs); study in {mask(url)}")
        task = ray.remote(num_cpus=threads)(_ray_work)
        refs = [task.remote(WorkerSetup(spec, str(Path(out).resolve()), url, threads,
                                        heartbeat, i, verbose, quiet)) for i in range(workers)]
        try:
            ray.get(refs)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, NeurosimError):
                raise NeurosimError(str(cause)) from None
            raise
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------- summary
def _decode(spec, params: dict) -> dict:
    values = {}
    for p in spec.space:
        if p.key in params:
            raw = params[p.key]
            values[p.key] = json.loads(raw) if p.encoded else raw
    return values


def summarize(spec, out, study) -> dict:
    """{"rows": one dict per planned trial, "best": the best row or None, "markdown",
    "csv"}; the Markdown ends with `neurosim table` over the trials' run directories."""
    from optuna.trial import TrialState
    out = Path(out)
    plan = plan_of(study, spec.planned)
    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
              TrialState.FAIL: "failed", TrialState.RUNNING: "running",
              TrialState.WAITING: "waiting"}
    rows = []
    for slot in range(spec.planned):
        trial = plan.finished.get(slot) or (plan.active.get(slot) or [None])[-1] or \
            plan.lost.get(slot)
        row = {"trial": trial_key(slot),
               "state": states.get(trial.state, "?") if trial else "not started",
               "objective": trial.value if trial is not None and
               trial.state == TrialState.COMPLETE else None,
               **{p.key: None for p in spec.space}}
        if trial is not None:
            row.update(_decode(spec, trial.params))
            row["optuna_trial"] = trial.number
            row["seeds"] = json.dumps(trial.user_attrs.get(SEEDS, {}))
            row["error"] = trial.user_attrs.get(ERROR, "")
        rows.append(row)
    complete = [r for r in rows if r["objective"] is not None]
    pick = max if spec.direction == "maximize" else min
    best = pick(complete, key=lambda r: r["objective"]) if complete else None
    head = [f"# Sweep {spec.name}", "",
            f"{spec.model_path.name}, {spec.sampler} sampler, seeds "
            f"{', '.join(map(str, spec.seeds))}; objective {spec.objective} ({spec.direction}, "
            f"mean over seeds); {len(plan.finished)} of {spec.planned} trials finished.", ""]
    if best:
        values = spec.describe({p.key: best[p.key] for p in spec.space})
        head += [f"Best: trial {best['trial']}, {spec.objective} {best['objective']:.4f}: "
                 f"{values}", ""]
    keys = [p.key for p in spec.space]
    lines = ["| trial | state | objective | " + " | ".join(keys) + " |",
             "|---|---|---:|" + "---|" * len(keys)]
    for r in rows:
        objective = "-" if r["objective"] is None else f"{r['objective']:.4f}"
        cells = ["-" if r[k] is None else _short(r[k]).replace("|", "\\|") for k in keys]
        lines.append(f"| {r['trial']} | {r['state']} | {objective} | " + " | ".join(cells) + " |")
    table = _run_table(spec, out, plan)
    markdown = "\n".join(head + ["## Trials", ""] + lines + ["", table])
    buffer = io.StringIO()
    columns = ["trial", "state", "objective", *keys, "optuna_trial", "seeds", "error"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else
                         (json.dumps(r[k]) if isinstance(r[k], (list, dict)) else r[k])
                         for k in columns})
    return {"rows": rows, "best": best, "markdown": markdown, "csv": buffer.getvalue()}


def _run_table(spec, out: Path, plan) -> str:
    from ..table import make_table
    dirs = [out / TRIALS_DIR / trial_key(slot) for slot in sorted(plan.finished)]
    dirs = [d for d in dirs if any(d.glob("seed_*/metrics.csv"))]
    if not dirs:
        return "## Runs\n\nNo finished run directories here.\n"
    try:
        text = make_table(dirs)
    except NeurosimError as err:
        return f"## Runs\n\n`neurosim table` could not summarise them: {err}\n"
    return "## Runs (neurosim table: mean ± std over seeds)\n\n" + text


__all__ = ["run_sweep", "summarize", "check_out_dir", "STATE_FILE"]
