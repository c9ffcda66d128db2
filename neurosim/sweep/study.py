"""The sweep's Optuna study: storage, the plan of trials, and the worker loop.

Plan. Every trial has a *slot*, its place in the plan (user attribute ``neurosim:slot``),
which names its directory (``trials/<slot>``). A grid sweep's slots are its grid points:
the process that creates the study (creation is atomic in the database; every other process
loads it) enqueues them all, so workers only ever pop planned points. Other samplers ask
Optuna for new trials; a new trial's slot is its rank among the trials that are not retries,
and one ranked beyond the planned number (two workers asking at once for the last slot) is
closed at once as surplus (state FAIL, user attribute ``neurosim:surplus``), never trained.

Exactly once. A running trial records a heartbeat every ``heartbeat`` seconds; one whose
heartbeat is older than three intervals (its worker was killed, or its machine lost), or
that has run that long without ever recording one (killed right after taking it), is
failed by the next worker that looks, and re-enqueued with the same slot and parameters
(user attribute ``neurosim:retry_of``). The retry continues the slot's run directories from
their checkpoints. Taking a queued trial is not atomic on SQLite (two workers may both move
it to RUNNING), so the taker writes an owner token (``neurosim:owner``) and runs the trial
only while that token is still its own. A worker holds a lock on the trial directory while
it trains, and checks after taking it that the trial is still its own and the slot not
finished already, so no slot is trained twice at once or completed twice. A worker whose
trial was finished by another meanwhile (it was taken for dead) hands it over quietly. A
slot is finished by a COMPLETE or PRUNED trial, or by a FAIL with ``neurosim:error``
(training itself failed: non-finite weights, a bad value); an error that is not the
configuration's (a data file missing on this machine, a stray run directory) leaves the
trial to be retried and stops the worker. Workers stop when every slot is finished.
"""
from __future__ import annotations

import datetime
import inspect
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError
from ..errors import NeurosimError
from ..io import NeurosimIOError
from .trial import RetryableError, TrialRunner, check_first

SLOT, RETRY_OF, ERROR = "neurosim:slot", "neurosim:retry_of", "neurosim:error"
SURPLUS, DUPLICATE, SEEDS = "neurosim:surplus", "neurosim:duplicate", "neurosim:seeds"
HOST, OWNER = "neurosim:host", "neurosim:owner"
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
    if base != "sqlite":
        raise NeurosimError(f"--storage {mask(url)}: {base} databases are not supported (only "
                            "PostgreSQL and SQLite are); use postgresql://user:password@host:"
                            "5432/database (several machines) or sqlite:///FILE (one machine).")
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
    if slot is None:                     # died before it was given its slot
        slot = _rank(study, trial.number)
        if slot >= study.user_attrs.get(PLANNED, slot + 1):
            return                       # a surplus trial
    system = {k: v for k, v in trial.system_attrs.items()}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params,
        distributions=trial.distributions, system_attrs=system,
        user_attrs={**{k: v for k, v in trial.user_attrs.items() if k not in (ERROR, OWNER)},
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


def fail_dead_trials(study, storage, grace: float) -> None:
    """Fail the trials whose worker died, and queue their retries: those whose heartbeat is
    older than the storage's grace period (Optuna's check), and those RUNNING for longer
    than ``grace`` seconds without ever recording one (killed between being taken and their
    first heartbeat)."""
    import optuna
    from optuna.trial import TrialState
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)
    before = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    for trial_id in _never_beating(storage, study._study_id):
        start = storage.get_trial(trial_id).datetime_start
        if start is None or start >= before:
            continue                     # taken just now: its heartbeat is on its way
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                retry_stale(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            continue                     # finished (or failed) meanwhile by another worker


def _never_beating(storage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials that have no heartbeat row."""
    from optuna.storages._rdb import models
    from optuna.trial import TrialState
    session = storage.scoped_session()
    try:
        rows = (session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel,
                           models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id,
                        models.TrialModel.state == TrialState.RUNNING,
                        models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .all())
    finally:
        session.close()
    return [row[0] for row in rows]


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
    check: bool = True


def _say(text: str) -> None:
    print(text, flush=True)


def work(setup: WorkerSetup, log=_say) -> int:
    """Pull trials from the study and run them until every planned slot is finished;
    returns how many trials this worker finished. With ``setup.check`` the first
    configuration is built here first (its data loaded), so that a machine that cannot run
    the sweep stops before it takes a trial."""
    optuna = require_optuna()
    spec = setup.spec
    if setup.check:
        try:
            check_first(spec)
        except NeurosimError as err:
            raise NeurosimError(f"on {socket.gethostname()}: {err}") from None
    if setup.threads:
        import torch
        torch.set_num_threads(setup.threads)
    storage = make_storage(setup.storage, setup.heartbeat)
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec))
    study.sampler = make_sampler(spec, setup.worker, len(study.get_trials(deepcopy=False)))
    runner = TrialRunner(spec, setup.out_dir, threads=setup.threads,
                         log=(lambda _: None) if setup.quiet else log,
                         verbose=setup.verbose)
    poll, grace = min(2.0, setup.heartbeat / 2), 3 * setup.heartbeat
    finished = 0
    while True:
        fail_dead_trials(study, storage, grace)       # and re-enqueue them (retry_stale)
        plan = plan_of(study, spec.planned, grace=grace)
        if plan.done:
            return finished
        taken = _pop_waiting(study, storage, spec) if plan.waiting else None
        if taken is None and plan.lost:
            slot, dead = min(plan.lost.items())
            log(f"trial {slot:04d}: its last attempt (#{dead.number}) died with no retry "
                "queued; queueing it again")
            retry_stale(study, dead)
            continue
        if taken is None and spec.sampler != "grid" and plan.originals < spec.planned:
            with warnings.catch_warnings():  # "heartbeats are meant for Study.optimize"
                warnings.simplefilter("ignore")
                trial = study.ask()          # a new point (or a retry queued meanwhile)
            taken = _claim(study, storage, spec, trial._trial_id, trial)
            if taken is None:                # surplus, or finished by another taker
                continue
        if taken is None:
            time.sleep(poll)             # the rest is running elsewhere: wait, in case it dies
            continue
        if _run(study, storage, *taken, runner, setup, log, optuna):
            finished += 1


def _pop_waiting(study, storage, spec):
    """Take a waiting (enqueued or retried) trial: ``(trial, owner token)`` (see
    :func:`_claim`), or None when there is none."""
    import optuna
    from optuna.trial import TrialState
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)),
                    key=lambda t: t.number):
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        taken = _claim(study, storage, spec, t._trial_id)
        if taken is not None:
            return taken
    return None


def _claim(study, storage, spec, trial_id: int, trial=None):
    """Make a trial just moved to RUNNING (popped, or asked: ``trial``) this worker's: its
    first heartbeat, a new owner token and, for a new trial, its slot. Returns ``(trial,
    token)``, or None when it is not to run here: finished already by a worker that took it
    at the same moment, or surplus (closed at once). Interrupted here, the trial is failed
    and queued again, never left RUNNING without a heartbeat."""
    import optuna
    from optuna.trial import TrialState
    token = uuid.uuid4().hex
    try:
        storage.record_heartbeat(trial_id)            # stale, not lost, if we die now
        storage.set_trial_user_attr(trial_id, OWNER, token)
        if trial is None:
            trial = optuna.trial.Trial(study, trial_id)
        if SLOT not in storage.get_trial(trial_id).user_attrs:
            rank = _rank(study, trial.number)
            if rank >= spec.planned:     # another worker took the last slot first
                storage.set_trial_user_attr(trial_id, SURPLUS, True)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                return None
            storage.set_trial_user_attr(trial_id, SLOT, rank)
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    except BaseException:
        _abandon(study, storage, trial_id, token)
        raise
    return trial, token


def _owned(storage, trial_id: int, token: str) -> bool:
    """Whether the trial is still RUNNING under this worker's owner token."""
    from optuna.trial import TrialState
    frozen = storage.get_trial(trial_id)
    return frozen.state == TrialState.RUNNING and frozen.user_attrs.get(OWNER) == token


def _abandon(study, storage, trial_id: int, token: str) -> None:
    """Fail a trial this worker took but cannot finish (interrupted, or an error that is not
    the configuration's) and queue it again, unless another worker owns it by now."""
    from optuna.trial import TrialState
    try:
        frozen = storage.get_trial(trial_id)
        if frozen.state == TrialState.RUNNING and frozen.user_attrs.get(OWNER) in (token, None) \
                and storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            retry_stale(study, storage.get_trial(trial_id))
    except Exception:                    # the database is gone: the heartbeat check retries it
        pass


def _run(study, storage, trial, token, runner, setup, log, optuna) -> bool:
    """Run one trial to its end (COMPLETE, PRUNED, FAIL with an error); True when it
    finished its slot here. It runs only while it is RUNNING under this worker's token,
    checked again once the trial directory's lock is held (two workers that took it at once
    each wrote a token; the last one runs it, the other returns False). The lock is held
    until the trial is told, so a second trial of the same slot (a retry queued twice) sees
    it finished. A trial finished by another worker meanwhile (taken for dead) is handed
    over: one line, False."""
    slot = storage.get_trial(trial._trial_id).user_attrs[SLOT]
    with _Heartbeat(storage, trial._trial_id, setup.heartbeat):
        try:
            if not _owned(storage, trial._trial_id, token):
                return False
            with runner.locked(slot):
                if not _owned(storage, trial._trial_id, token):
                    return False
                return _run_owned(study, storage, trial, slot, runner, setup, log, optuna)
        except optuna.exceptions.UpdateFinishedTrialError:
            log(f"trial {slot:04d}: #{trial.number} was finished by another worker while it "
                f"ran here (taken for dead: no heartbeat for {3 * setup.heartbeat} s); its "
                "retry continues from these run directories")
            return False
        except BaseException:
            # interrupted (Ctrl-C), an error that is not the configuration's, or a bug: the
            # slot is queued again, to continue from its checkpoints when the sweep is
            # started again
            _abandon(study, storage, trial._trial_id, token)
            raise


def _run_owned(study, storage, trial, slot, runner, setup, log, optuna) -> bool:
    from optuna.trial import TrialState
    spec = setup.spec
    frozen = storage.get_trial(trial._trial_id)
    retry_of = frozen.user_attrs.get(RETRY_OF)
    key, here, ran_on = f"{slot:04d}", socket.gethostname(), frozen.user_attrs.get(HOST)
    done = [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(SLOT) == slot and t.number != trial.number and is_final(t)
            and not t.user_attrs.get(DUPLICATE)]
    if done:                             # finished by another worker meanwhile
        storage.set_trial_user_attr(trial._trial_id, DUPLICATE, True)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return False
    storage.set_trial_user_attr(trial._trial_id, HOST, here)
    values = {p.key: p.suggest(trial) for p in spec.space}
    numbers = [t.number for t in study.get_trials(deepcopy=False)
               if t.user_attrs.get(SLOT) == slot]
    retry = None
    if retry_of is not None:
        retry = f"#{retry_of}" + (f", which ran on {ran_on}" if ran_on not in (None, here)
                                  else "")

    def prune(value, epoch):             # the pruner sees each epoch's mean over seeds
        if math.isfinite(value):
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch} ({value:.4g})")

    report = prune if spec.pruner != "none" else None
    try:
        runner.write_info(slot, values, numbers)
        result = runner.run(slot, values, report=report, retry=retry)
    except optuna.TrialPruned as pruned:
        _tell(study, trial, TrialState.PRUNED)
        _progress(study, spec, log, setup, f"trial {key} pruned at {pruned} | "
                  f"{spec.describe(values)}")
        return True
    except (RetryableError, DataError, NeurosimIOError, OSError) as err:
        raise _not_the_configuration(err, key, here) from None
    except NeurosimError as err:         # the configuration's own: the same on every retry
        message = " ".join(str(err).split())
        storage.set_trial_user_attr(trial._trial_id, ERROR, message[:2000])
        _tell(study, trial, TrialState.FAIL)
        _progress(study, spec, log, setup, f"trial {key} failed: {message}")
        return True
    value = result["value"]
    storage.set_trial_user_attr(trial._trial_id, SEEDS,
                                {str(s): v for s, v in result["seeds"].items()})
    if not math.isfinite(value):
        storage.set_trial_user_attr(trial._trial_id, ERROR,
                                    f"objective {spec.objective} is not finite "
                                    f"(per seed: {result['seeds']})")
        _tell(study, trial, TrialState.FAIL)
    else:
        _tell(study, trial, TrialState.COMPLETE, value)
    seeds = ", ".join(f"{v:.4g}" for v in result["seeds"].values())
    _progress(study, spec, log, setup,
              f"trial {key} done: {spec.objective} {value:.4f} (seeds {seeds}; "
              f"{result['seconds']:.1f} s) | {spec.describe(values)}")
    return True


def _tell(study, trial, state, value=None) -> None:
    """Tell the trial's end; UpdateFinishedTrialError when another worker finished it first
    (it was taken for dead)."""
    import optuna
    told = study.tell(trial, value, state=state, skip_if_finished=True)
    if told.state != state:
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial #{trial.number} is {told.state.name} already")


def _not_the_configuration(err: BaseException, key: str, host: str) -> RetryableError:
    """The error that stops a worker whose trial failed for a reason that is not its
    configuration's (the trial is queued again)."""
    if isinstance(err, RetryableError):
        return err
    if isinstance(err, OSError):
        where = f" {err.filename}" if err.filename else ""
        text = f"cannot read or write{where}: {err.strerror or err}."
    else:
        text = " ".join(str(err).split())
    return RetryableError(f"trial {key} cannot run on {host}: {text} It is queued again: fix "
                          "this, then run the same command to continue (finished trials are "
                          "kept).")


def _progress(study, spec, log, setup, text: str) -> None:
    if setup.quiet:
        return
    plan = plan_of(study, spec.planned)
    log(f"[{len(plan.finished)}/{spec.planned}] {text}")


def worker_main(setup: WorkerSetup) -> None:
    """Entry point of a spawned worker process: :func:`work`, errors as one line, exit 2;
    SIGINT or SIGTERM (the sweep's own, passed on) queues its trial again, exit 130."""
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _interrupt_once)
    try:
        work(setup)
    except NeurosimError as err:
        print(f"neurosim: error: worker {setup.worker}: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _interrupt_once(number, frame) -> None:
    """A worker's SIGINT and SIGTERM: KeyboardInterrupt, once; the copies that follow (a
    terminal's Ctrl-C reaches the worker and the sweep, which passes it on) are ignored, so
    that they cannot break off the handing back of its trial."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def default_threads(workers: int) -> int:
    """CPU threads per worker: the cores shared among the workers (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


__all__ = ["open_study", "plan_of", "work", "WorkerSetup", "make_storage", "default_storage",
           "Plan", "retry_stale", "fail_dead_trials", "mask", "require_optuna", "HEARTBEAT"]
