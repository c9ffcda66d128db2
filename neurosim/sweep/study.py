"""The sweep's Optuna study: storage, the plan of trials, and the worker loop.

Plan. Every trial has a *slot*, its place in the plan (user attribute ``neurosim:slot``),
which names its directory (``trials/<slot>``). A grid sweep's slots are its grid points:
the process that creates the study (creation is atomic in the database; every other process
loads it) enqueues them all, so workers only ever pop planned points. Other samplers ask
Optuna for new trials; a new trial's slot is its rank among the trials that are not retries,
and one ranked beyond the planned number (two workers asking at once for the last slot) is
closed at once as surplus (state FAIL, user attribute ``neurosim:surplus``), never trained.

Exactly once. A running trial records a heartbeat every ``heartbeat`` seconds; one whose
heartbeat is older than three intervals (its worker was killed, or its machine lost) is
failed by the next worker that looks, and re-enqueued with the same slot and parameters
(user attribute ``neurosim:retry_of``). The retry continues the slot's run directories from
their checkpoints. A worker holds a lock on the trial directory while it trains, and checks
after taking it that the slot is not finished already, so no slot is trained twice at once
or completed twice. A slot is finished by a COMPLETE or PRUNED trial, or by a FAIL with
``neurosim:error`` (training itself failed: non-finite weights, a bad value); workers stop
when every slot is finished.
"""
from __future__ import annotations

import datetime
import inspect
import math
import os
import re
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NeurosimError

SLOT, RETRY_OF, ERROR = "neurosim:slot", "neurosim:retry_of", "neurosim:error"
SURPLUS, DUPLICATE, SEEDS = "neurosim:surplus", "neurosim:duplicate", "neurosim:seeds"
HOST = "neurosim:host"
DIGEST, PLANNED, PLAN_DONE = "neurosim:digest", "neurosim:planned", "neurosim:plan_complete"
HEARTBEAT = 10          # seconds between heartbeats; a trial is stale after 3 of them


def require_optuna():
    """The optuna module, or one clear error naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise NeurosimError("neurosim sweep needs Optuna: pip install 'neurosim[sweep]' "
                            "(optuna, cmaes and psycopg2-binary for PostgreSQL).") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def mask(url: str) -> str:
    """A storage URL without its password (for messages)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def default_storage(out_dir) -> str:
    """``sqlite:///OUT/study.db`` (absolute)."""
    return f"sqlite:///{(Path(out_dir).resolve() / 'study.db')}"


def check_storage_url(url: str) -> str:
    """A URL SQLAlchemy can use, with its driver installed (returned with the driver named:
    ``postgresql://`` means psycopg2 when it is installed, whatever SQLAlchemy's default);
    NeurosimError otherwise."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise NeurosimError(f"--storage {mask(url)}: not a database URL; give e.g. "
                            "postgresql://user:password@host:5432/database (or "
                            "sqlite:///path/study.db).")
    base, _, driver = scheme.partition("+")
    if base == "postgres":
        raise NeurosimError(f"--storage {mask(url)}: write postgresql://..., not "
                            "postgres://... (SQLAlchemy's name for it).")
    if base == "postgresql":
        candidates = [driver] if driver else ["psycopg2", "psycopg"]
        for module in candidates:
            try:
                __import__(module)
            except ImportError:
                continue
            return f"postgresql+{module}://{rest}"
        raise NeurosimError(f"--storage {mask(url)}: PostgreSQL needs a driver "
                            f"({' or '.join(candidates)}): pip install 'neurosim[sweep]'.")
    if base not in ("sqlite", "mysql"):
        raise NeurosimError(f"--storage {mask(url)}: use postgresql://... (several machines) "
                            "or sqlite:///FILE (one machine).")
    return url


def make_storage(url: str, heartbeat: int = HEARTBEAT, retry: bool = True):
    """An Optuna RDBStorage with heartbeats (stale after 3 intervals) and, when ``retry``,
    the callback that re-enqueues a stale trial."""
    optuna = require_optuna()
    url = check_storage_url(url)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else \
        {"pool_pre_ping": True}
    kwargs = {"heartbeat_interval": heartbeat, "grace_period": 3 * heartbeat}
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names \
        else "failed_trial_callback"
    if retry:
        kwargs[callback] = retry_stale
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except Exception as err:                # sqlalchemy's OperationalError and friends
        text = " ".join(str(err).split())[:300]
        raise NeurosimError(f"cannot open the study storage {mask(url)}: {text}. Check that "
                            "the database server runs and the URL (user, password, host, "
                            "port, database) is right.") from None


def retry_stale(study, trial) -> None:
    """Optuna's callback for a trial failed for lack of heartbeats: enqueue the same slot
    and parameters again (called by the one process that failed it)."""
    import optuna
    if trial.user_attrs.get(SURPLUS) or trial.user_attrs.get(DUPLICATE):
        return
    slot = trial.user_attrs.get(SLOT)
    if slot is None:
        slot = _rank(study, trial.number)
    system = {k: v for k, v in trial.system_attrs.items()}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params,
        distributions=trial.distributions, system_attrs=system,
        user_attrs={**{k: v for k, v in trial.user_attrs.items() if k != ERROR},
                    SLOT: slot, RETRY_OF: trial.number}))


def _rank(study, number: int) -> int:
    """Position of trial ``number`` among the trials that are not retries."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.number < number and RETRY_OF not in t.user_attrs)


# ---------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    """Where the sweep stands: per slot the trial that finished it, the waiting or running
    ones, and slots whose last trial died without a retry queued ("lost")."""

    planned: int
    finished: dict = field(default_factory=dict)
    active: dict = field(default_factory=dict)
    lost: dict = field(default_factory=dict)
    originals: int = 0
    waiting: int = 0

    @property
    def done(self) -> bool:
        """Every planned slot finished."""
        return len(self.finished) >= self.planned


def is_final(trial) -> bool:
    """Whether a trial finishes its slot: COMPLETE, PRUNED, or FAIL while training."""
    from optuna.trial import TrialState
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or \
        (trial.state == TrialState.FAIL and ERROR in trial.user_attrs)


def plan_of(study, planned: int, grace: float = 60.0) -> Plan:
    """The :class:`Plan` of ``study`` now."""
    from optuna.trial import TrialState
    plan = Plan(planned)
    dead = {}
    for t in study.get_trials(deepcopy=False):
        if RETRY_OF not in t.user_attrs:
            plan.originals += 1
        slot = t.user_attrs.get(SLOT)
        if slot is None or slot >= planned or t.user_attrs.get(DUPLICATE):
            continue
        if is_final(t):
            plan.finished.setdefault(slot, t)
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            plan.active.setdefault(slot, []).append(t)
            plan.waiting += t.state == TrialState.WAITING
        elif t.state == TrialState.FAIL:
            dead[slot] = t
    # a stale trial is failed, then its retry queued, by one process: lost only if no retry
    # came within a grace period (that process died in between)
    old = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    plan.lost = {s: t for s, t in dead.items()
                 if s not in plan.finished and s not in plan.active and
                 (t.datetime_complete is None or t.datetime_complete < old)}
    return plan


def open_study(spec, url: str, heartbeat: int = HEARTBEAT, log=print):
    """Create the study (and, for a grid, enqueue every point) or load it; a study made
    from another sweep file is refused."""
    optuna = require_optuna()
    storage = make_storage(url, heartbeat)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    direction=spec.direction, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        created = False
    if created:
        study.set_user_attr(DIGEST, spec.digest)
        study.set_user_attr(PLANNED, spec.planned)
        study.set_user_attr("neurosim:sweep_text", spec.text)
        if spec.sampler == "grid":
            _enqueue_grid(study, spec, set())
        study.set_user_attr(PLAN_DONE, True)
        return study
    deadline = time.monotonic() + max(30, 3 * heartbeat)
    while DIGEST not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)                       # another process is creating it right now
    digest = study.user_attrs.get(DIGEST)
    if digest is None:
        raise NeurosimError(f'study "{spec.name}" in {mask(url)} was not made by neurosim sweep '
                            "(it has no sweep fingerprint); give the sweep another [sweep] "
                            "name or use another storage.")
    if digest != spec.digest:
        raise NeurosimError(f'study "{spec.name}" in {mask(url)} was made from a different '
                            "sweep file or model file (fingerprint "
                            f"{digest} != {spec.digest}); rename the sweep ([sweep] name) or "
                            "use another storage to start a new one.")
    while not study.user_attrs.get(PLAN_DONE) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not study.user_attrs.get(PLAN_DONE):      # its creator died while enqueueing
        if spec.sampler == "grid":
            have = {t.user_attrs.get(SLOT) for t in study.get_trials(deepcopy=False)}
            _enqueue_grid(study, spec, have)
        study.set_user_attr(PLAN_DONE, True)
    return study


def _enqueue_grid(study, spec, have: set) -> None:
    for slot, values in enumerate(spec.grid()):
        if slot not in have:
            params = {p.key: p.to_optuna(values[p.key]) for p in spec.space}
            study.enqueue_trial(params, user_attrs={SLOT: slot})


def make_sampler(spec, worker: int = 0, offset: int = 0):
    """The Optuna sampler of a sweep (each worker its own seed, so that parallel random
    samplers do not draw the same points)."""
    optuna = require_optuna()
    seed = (spec.seed * 100003 + worker * 1009 + offset) % (2 ** 31)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, spec.trials // 2
                                                                          or 1))
    if spec.sampler == "cmaes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(spec):
    """MedianPruner for ``pruner = "median"``, else none."""
    optuna = require_optuna()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                           n_warmup_steps=spec.pruner_warmup_epochs)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------- the worker
class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds in a thread."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:            # a database hiccup: the next beat tries again
                pass
            if self.stop_event.wait(self.interval):
                return

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()


@dataclass
class WorkerSetup:
    """What a worker process needs (picklable: it travels to spawned processes and Ray)."""

    spec: object
    out_dir: str
    storage: str
    threads: int | None = None
    heartbeat: int = HEARTBEAT
    worker: int = 0
    verbose: bool = False
    quiet: bool = False


def _say(text: str) -> None:
    print(text, flush=True)


def work(setup: WorkerSetup, log=_say) -> int:
    """Pull trials from the study and run them until every planned slot is finished;
    returns how many trials this worker finished."""
    optuna = require_optuna()
    from optuna.trial import TrialState
    from .trial import TrialRunner
    spec = setup.spec
    if setup.threads:
        import torch
        torch.set_num_threads(setup.threads)
    storage = make_storage(setup.storage, setup.heartbeat)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    study.sampler = make_sampler(spec, setup.worker, len(study.get_trials(deepcopy=False)))
    runner = TrialRunner(spec, setup.out_dir, threads=setup.threads,
                         log=(lambda _: None) if setup.quiet else log,
                         verbose=setup.verbose)
    poll = min(2.0, setup.heartbeat / 2)
    finished = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)      # and re-enqueue them (retry_stale)
        plan = plan_of(study, spec.planned, grace=3 * setup.heartbeat)
        if plan.done:
            return finished
        trial = _pop_waiting(study, storage) if plan.waiting else None
        if trial is None and plan.lost:
            slot, dead = min(plan.lost.items())
            log(f"trial {slot:04d}: its last attempt (#{dead.number}) died with no retry "
                "queued; queueing it again")
            retry_stale(study, dead)
            continue
        if trial is None and spec.sampler != "grid" and plan.originals < spec.planned:
            with warnings.catch_warnings():  # "heartbeats are meant for Study.optimize"
                warnings.simplefilter("ignore")
                trial = study.ask()          # a new point (or a retry queued meanwhile)
            storage.record_heartbeat(trial._trial_id)      # stale, not lost, if we die now
            if SLOT not in storage.get_trial(trial._trial_id).user_attrs:
                rank = _rank(study, trial.number)
                if rank >= spec.planned:     # another worker took the last slot first
                    storage.set_trial_user_attr(trial._trial_id, SURPLUS, True)
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    continue
                storage.set_trial_user_attr(trial._trial_id, SLOT, rank)
        if trial is None:
            time.sleep(poll)             # the rest is running elsewhere: wait, in case it dies
            continue
        if _run(study, storage, trial, runner, setup, log, optuna):
            finished += 1


def _pop_waiting(study, storage):
    """Take a waiting (enqueued or retried) trial, atomically; None when there is none."""
    import optuna
    from optuna.trial import TrialState
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                    key=lambda t: t.number):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                storage.record_heartbeat(t._trial_id)     # stale, not lost, if we die now
                return optuna.trial.Trial(study, t._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _run(study, storage, trial, runner, setup, log, optuna) -> bool:
    """Run one trial to its end (COMPLETE, PRUNED, FAIL with an error); True when it
    finished its slot here. The trial directory's lock is held until the trial is told,
    so a second trial of the same slot (a retry queued twice) sees it finished."""
    import socket
    spec = setup.spec
    frozen = storage.get_trial(trial._trial_id)
    slot = frozen.user_attrs.get(SLOT)
    retry_of = frozen.user_attrs.get(RETRY_OF)
    ran_on = frozen.user_attrs.get(HOST)
    here = socket.gethostname()
    storage.set_trial_user_attr(trial._trial_id, HOST, here)
    with _Heartbeat(storage, trial._trial_id, setup.heartbeat):
        try:
            values = {p.key: p.suggest(trial) for p in spec.space}
            with runner.locked(slot):
                return _run_locked(study, storage, trial, runner, setup, log, optuna, slot,
                                   values, retry_of, ran_on if ran_on != here else None)
        except BaseException:
            # interrupted (Ctrl-C) or a bug: the slot is queued again, to continue from
            # its checkpoints when the sweep is started again
            try:
                from optuna.trial import TrialState
                if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    retry_stale(study, storage.get_trial(trial._trial_id))
            except Exception:
                pass
            raise


def _run_locked(study, storage, trial, runner, setup, log, optuna, slot, values, retry_of,
                elsewhere) -> bool:
    from optuna.trial import TrialState
    spec, key = setup.spec, f"{slot:04d}"
    done = [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(SLOT) == slot and t.number != trial.number and is_final(t)
            and not t.user_attrs.get(DUPLICATE)]
    if done:                             # finished by another worker meanwhile
        storage.set_trial_user_attr(trial._trial_id, DUPLICATE, True)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return False
    numbers = [t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get(SLOT) == slot]
    runner.write_info(slot, values, numbers)
    retry = None
    if retry_of is not None:
        retry = f"#{retry_of}" + (f", which ran on {elsewhere}" if elsewhere else "")
    def prune(value, epoch):             # the pruner sees each epoch's mean over seeds
        if math.isfinite(value):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch} ({value:.4g})")

    report = prune if spec.pruner != "none" else None
    try:
        result = runner.run(slot, values, report=report, retry=retry)
    except optuna.TrialPruned as pruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        _progress(study, spec, log, setup, f"trial {key} pruned at {pruned} | "
                  f"{spec.describe(values)}")
        return True
    except NeurosimError as err:
        message = " ".join(str(err).split())
        storage.set_trial_user_attr(trial._trial_id, ERROR, message[:2000])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if "objective" in message and "column" in message:
            raise                        # the same in every trial: stop the sweep
        _progress(study, spec, log, setup, f"trial {key} failed: {message}")
        return True
    value = result["value"]
    storage.set_trial_user_attr(trial._trial_id, SEEDS,
                                {str(s): v for s, v in result["seeds"].items()})
    if not math.isfinite(value):
        storage.set_trial_user_attr(trial._trial_id, ERROR,
                                    f"objective {spec.objective} is not finite "
                                    f"(per seed: {result['seeds']})")
        state = study.tell(trial, state=TrialState.FAIL, skip_if_finished=True).state
    else:
        state = study.tell(trial, value, skip_if_finished=True).state
    if state != TrialState.COMPLETE and math.isfinite(value):
        log(f"trial {key}: #{trial.number} was given up for dead (no heartbeat for "
            f"{3 * setup.heartbeat} s) while it ran; its retry reads these results")
        return False
    seeds = ", ".join(f"{v:.4g}" for v in result["seeds"].values())
    _progress(study, spec, log, setup,
              f"trial {key} done: {spec.objective} {value:.4f} (seeds {seeds}; "
              f"{result['seconds']:.1f} s) | {spec.describe(values)}")
    return True


def _progress(study, spec, log, setup, text: str) -> None:
    if setup.quiet:
        return
    plan = plan_of(study, spec.planned)
    log(f"[{len(plan.finished)}/{spec.planned}] {text}")


def worker_main(setup: WorkerSetup) -> None:
    """Entry point of a spawned worker process: :func:`work`, errors as one line, exit 2."""
    try:
        work(setup)
    except NeurosimError as err:
        print(f"neurosim: error: worker {setup.worker}: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def default_threads(workers: int) -> int:
    """CPU threads per worker: the cores shared among the workers (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


__all__ = ["open_study", "plan_of", "work", "WorkerSetup", "make_storage", "default_storage",
           "Plan", "retry_stale", "mask", "require_optuna", "HEARTBEAT"]
