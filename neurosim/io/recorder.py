"""Streaming recordings of state variables to HDF5, with bounded memory.

Layout of a recording file::

    /                                 root attrs: format="neurosim-recording", format_version=1,
                                      neurosim_version, created (ISO 8601, UTC), time_units,
                                      chunk_size, complete (False while writing, True after a clean
                                      close()), aborted ("<exception>" if the writer's `with` block
                                      raised), plus the caller's attrs (dt, solver, model, ...)
    /config_text                      optional str dataset: the config the run was started from
    /time/every_<n>                   float64 (T_n,), resizable: the times of the records of all
                                      monitors with every=n; an HDF5 dimension scale; attrs units,
                                      every
    /recordings/<pop>/<comp>/<var>    (T, *record_shape), resizable along axis 0, chunked
                                      (chunk_size, *record_shape) (fewer rows for huge records);
                                      axis 0 has /time/every_<n> attached as its dimension scale and
                                      attr ``time`` holds that path; other attrs: monitor, population,
                                      compartment, variable, units, every, indices (int64 array, or
                                      "all"), axes ("time, batch, neuron"), torch_dtype, + caller's

Why one time axis per ``every``: monitors sampled at the same rate share it (no duplicated
times), and dimension scales make the relation visible to generic HDF5 tools. The rule this
imposes: monitors with the same ``every`` are appended at the same times (checked when cheap),
and all monitors are added before the first append.

Crash safety: the file is written in place (not via a temporary name) so that a run killed
part-way leaves everything up to the last written chunk readable. Each full chunk is written
and ``flush()``-ed to disk at once; ``complete`` stays False until :meth:`Recorder.close`, so a
reader can tell a finished recording from a cut-off one. Read live or cut-off recordings with
:func:`open_recording` (it opens without HDF5 file locking).

Buffering: each monitor keeps one preallocated torch buffer of ``chunk_size`` records on the
device of the first appended values, so :meth:`Recorder.append` is a device-side copy with no
host synchronisation; data move to the CPU only when a chunk is written. Pass ``t`` as a Python
float (a CUDA tensor would force a sync). :meth:`Recorder.append` stores every call: the caller
decides which steps to record (:meth:`MonitorSpec.due` helps); ``every`` only labels the rate.

Continuing a recording (``Recorder(path, append=True)``, used when a simulation resumes from a
checkpoint and records into the same file): the file is opened as it is and checked to be a
recording of the same model text (if ``config_text`` is given), root attrs and monitors (each
add() must match a dataset there: name, every, indices, units, shape, dtype, attrs; the file
may record nothing else). Nothing in it changes until :meth:`Recorder.truncate`, which drops
the records after the resume point (written after the checkpoint, before the crash), sets
``complete`` False and removes ``aborted``; appends then continue the same datasets and time
axes, so the finished file equals the recording of an uninterrupted run. A Recorder that is
closed before truncate() leaves the file untouched. Simulation.run does all this and writes
root attr ``first_step`` (the step of a new recording's first record) to count records by.
"""
from __future__ import annotations

import copy

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch

from neurosim.errors import did_you_mean
from neurosim.io.attrs import decode_attr, encode_attr, read_attrs, write_attrs
from neurosim.io.errors import RecordingError, TreeError
from neurosim.io.files import check_format, open_readonly

__all__ = ["RECORDING_FORMAT", "RECORDING_FORMAT_VERSION", "MonitorSpec", "Recorder",
           "RecordedVariable", "RecordingFile", "open_recording"]

RECORDING_FORMAT = "neurosim-recording"
RECORDING_FORMAT_VERSION = 1
CONFIG_TEXT = "config_text"
MAX_CHUNK_BYTES = 4 << 20  # on-disk chunk target; large records get fewer rows per chunk
MAX_RECORD_BYTES = 1 << 30
_ROOT_ATTRS = ("format", "format_version", "neurosim_version", "created", "complete", "aborted",
               "time_units", "chunk_size")
_DATASET_ATTRS = ("monitor", "population", "compartment", "variable", "units", "every",
                  "indices", "axes", "time", "torch_dtype")
_DEFAULT_AXES = {0: (), 1: ("neuron",), 2: ("batch", "neuron")}


@dataclass(frozen=True)
class MonitorSpec:
    """What to record: ``population/compartment/variable``, which neurons, how often, units."""

    population: str
    compartment: str
    variable: str
    indices: tuple[int, ...] | None = None
    every: int = 1
    units: str = ""

    def __post_init__(self) -> None:
        for name in ("population", "compartment", "variable"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or "/" in value or value == ".":
                raise RecordingError(f"MonitorSpec.{name} must be a non-empty str without '/', "
                                     f"got {value!r}.")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise RecordingError(f"MonitorSpec({self.key}).every must be an int >= 1 (record "
                                 f"every n-th step), got {self.every!r}.")
        if self.indices is not None:
            try:
                indices = tuple(int(i) for i in self.indices)
            except (TypeError, ValueError):
                raise RecordingError(f"MonitorSpec({self.key}).indices must be a sequence of "
                                     f"ints or None (all), got {self.indices!r}.") from None
            object.__setattr__(self, "indices", indices)
        if not isinstance(self.units, str):
            raise RecordingError(f"MonitorSpec({self.key}).units must be a str, got "
                                 f"{self.units!r}.")

    @property
    def key(self) -> str:
        """The recording key and dataset path below /recordings: "pop/comp/var"."""
        return f"{self.population}/{self.compartment}/{self.variable}"

    def due(self, step: int) -> bool:
        """True on the steps this monitor records (step 0, every, 2*every, ...)."""
        return step % self.every == 0


@dataclass
class _Clock:
    """The shared time axis of all monitors with one ``every``."""

    ds: h5py.Dataset
    buf: np.ndarray
    fill: int = 0
    written: int = 0

    @property
    def count(self) -> int:
        return self.written + self.fill


@dataclass
class _Monitor:
    name: str
    spec: MonitorSpec
    ds: h5py.Dataset
    shape: tuple[int, ...]
    dtype: torch.dtype          # buffer dtype (as declared)
    storage: torch.dtype        # dtype written to disk (numpy-compatible)
    buffer: torch.Tensor | None = None
    fill: int = 0
    written: int = 0

    @property
    def count(self) -> int:
        return self.written + self.fill


class Recorder:
    """Stream monitored variables into an HDF5 recording (layout: neurosim.io.recorder).

    Use as a context manager, or call :meth:`close`; either flushes the last partial chunk.
    An existing file at ``path`` is only replaced with ``overwrite=True``, or continued with
    ``append=True`` (see "Continuing a recording" in neurosim.io.recorder).
    """

    def __init__(self, path: str | os.PathLike, *, chunk_size: int = 256,
                 attrs: Mapping[str, Any] | None = None,
                 time_units: str = "1 (model time)",
                 config_text: str | None = None, overwrite: bool = False,
                 append: bool = False) -> None:
        from neurosim import __version__

        self.path = Path(path)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise RecordingError(f"Recorder({self.path}): chunk_size must be an int >= 1, got "
                                 f"{chunk_size!r}.")
        clash = sorted(set(attrs or {}) & set(_ROOT_ATTRS))
        if clash:
            raise RecordingError(f"Recorder({self.path}): attrs {clash} are reserved for the file "
                                 f"header; rename them.")
        if not self.path.parent.is_dir():
            raise RecordingError(f"cannot create recording {self.path}: directory "
                                 f"{self.path.parent} does not exist; create it first.")
        if append and overwrite:
            raise RecordingError(f"Recorder({self.path}): pass append=True (continue the "
                                 f"recording) or overwrite=True (replace it), not both.")
        if self.path.exists() and not (overwrite or append):
            raise RecordingError(f"recording {self.path} already exists; choose another path or "
                                 f"pass overwrite=True to replace it.")
        self.chunk_size = chunk_size
        self.chunks_written = 0
        self._monitors: dict[str, _Monitor] = {}
        self._clocks: dict[int, _Clock] = {}
        self._started = False
        self._closed = False
        self._time_units = time_units
        self._append = append          # continuing an existing file: see truncate()
        self._truncated = False
        self._pending_attrs: dict[str, Any] = {}
        self._annotated: dict[str, Any] = {}     # root attrs written by annotate()
        if append:
            self._open_existing(attrs, config_text)
            return
        self._file = h5py.File(self.path, "w", track_order=True)
        try:
            f = self._file
            f.attrs["format"] = RECORDING_FORMAT
            f.attrs["format_version"] = RECORDING_FORMAT_VERSION
            f.attrs["neurosim_version"] = __version__
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")
            f.attrs["complete"] = False
            f.attrs["time_units"] = time_units
            f.attrs["chunk_size"] = chunk_size
            write_attrs(f, attrs)
            self._annotated.update((k, _snapshot(v)) for k, v in (attrs or {}).items())
            if config_text is not None:
                f.create_dataset(CONFIG_TEXT, data=config_text, dtype=h5py.string_dtype("utf-8"))
            f.create_group("time", track_order=True)
            f.create_group("recordings", track_order=True)
            f.flush()
        except BaseException as e:
            self._file.close()
            self.path.unlink(missing_ok=True)
            if isinstance(e, TreeError):
                raise RecordingError(f"Recorder({self.path}): {e}") from e
            raise

    def _open_existing(self, attrs: Mapping[str, Any] | None, config_text: str | None) -> None:
        """append=True: open the recording to continue it. It must be a recording of the same
        model text (when given) and attrs (those it has); nothing in it changes before
        :meth:`truncate`."""
        if not self.path.is_file():
            raise RecordingError(f"cannot continue recording {self.path}: it does not exist; "
                                 f"create it without append=True.")
        try:
            self._file = h5py.File(self.path, "r+", track_order=True)
        except OSError as e:
            raise RecordingError(f"cannot open recording {self.path} to continue it ({e}); if "
                                 f"it is truncated or not an HDF5 file, write to another "
                                 f"file.") from e
        try:
            stored = read_attrs(self._file)
            check_format(self.path, stored, RECORDING_FORMAT, RECORDING_FORMAT_VERSION,
                         RecordingError)
            if not isinstance(self._file.get("time"), h5py.Group) or \
                    not isinstance(self._file.get("recordings"), h5py.Group):
                raise RecordingError(f"cannot continue recording {self.path}: it has no /time "
                                     f"or /recordings group (damaged); write to another file.")
            if config_text is not None and self.config_text != config_text:
                raise RecordingError(
                    f"cannot continue recording {self.path}: it was recorded from another model "
                    f"text (its /config_text differs from this run's); write to another file, or "
                    f"replace it (overwrite=True, on the command line --force).")
            self._pending_attrs.update(self._same_attrs(attrs or {}, "cannot continue"))
        except BaseException:
            self._file.close()
            raise

    def _same_attrs(self, attrs: Mapping[str, Any], what: str) -> dict[str, Any]:
        """Check ``attrs`` against the root attributes of the file being continued; return
        those it does not have yet (written by truncate())."""
        stored = read_attrs(self._file)
        differ = [f"{k} = {stored[k]!r} there, {v!r} here" for k, v in attrs.items()
                  if k in stored and not _same_attr(stored[k], v)]
        if differ:
            raise RecordingError(f"{what} recording {self.path}: it was recorded by another run "
                                 f"({'; '.join(differ)}); write to another file, or replace it "
                                 f"(overwrite=True, on the command line --force).")
        return {k: v for k, v in attrs.items() if k not in stored}

    # -- setup -------------------------------------------------------------------------------

    def annotate(self, attrs: Mapping[str, Any]) -> None:
        """Add root attributes describing the run (model, solver, ...); header names are
        reserved. Used by Simulation.run so that Python and CLI recordings carry the same.
        While a recording opened with append=True waits for :meth:`truncate`, they are checked
        against the file's (a different value is an error) and written by truncate()."""
        self._check_open()
        clash = sorted(set(attrs) & set(_ROOT_ATTRS))
        if clash:
            raise RecordingError(f"Recorder({self.path}): attrs {clash} are reserved for the "
                                 "file header; rename them.")
        if self.resuming:
            self._pending_attrs.update(self._same_attrs(attrs, "cannot continue"))
            return
        # every run of a simulation annotates its recording again: rewrite only what changed
        fresh = {k: v for k, v in attrs.items()
                 if k not in self._annotated or not _same_value(self._annotated[k], v)}
        try:
            write_attrs(self._file, fresh)
        except TreeError as e:
            raise RecordingError(f"Recorder({self.path}): {e}") from e
        self._annotated.update((k, _snapshot(v)) for k, v in fresh.items())

    def add(self, name: str, spec: MonitorSpec, record_shape: tuple[int, ...],
            dtype: torch.dtype | np.dtype | str = torch.float32,
            attrs: Mapping[str, Any] | None = None, *,
            axes: tuple[str, ...] | None = None) -> None:
        """Declare monitor ``name``: each :meth:`append` gives one record of ``record_shape``.

        ``axes`` names the record axes (default "batch, neuron" for 2-d, "neuron" for 1-d).
        All monitors must be added before the first append.
        """
        where = f'Recorder({self.path}).add("{name}")'
        self._check_open()
        if self._started:
            raise RecordingError(f"{where}: add all monitors before the first append().")
        if not isinstance(name, str) or not name:
            raise RecordingError(f"{where}: the monitor name must be a non-empty str.")
        if name in self._monitors:
            raise RecordingError(f"{where}: a monitor with this name already exists.")
        if not isinstance(spec, MonitorSpec):
            raise RecordingError(f"{where}: spec must be a MonitorSpec, got {type(spec).__name__}.")
        other = next((m.name for m in self._monitors.values() if m.spec.key == spec.key), None)
        if other is not None:
            raise RecordingError(f'{where}: monitor "{other}" already records {spec.key}; record '
                                 f"each variable once.")
        shape = _record_shape(record_shape, where)
        buffer_dtype, storage = _dtypes(dtype, where)
        axes = _axes(axes, shape, where)
        clash = sorted(set(attrs or {}) & set(_DATASET_ATTRS))
        if clash:
            raise RecordingError(f"{where}: attrs {clash} are set by the recorder; rename them.")
        if self._append:
            self._adopt(name, spec, shape, buffer_dtype, storage, axes, attrs or {}, where)
            return

        clock = self._clock(spec.every)
        record_bytes = int(np.prod(shape, dtype=np.int64)) * _itemsize(storage)
        if record_bytes > MAX_RECORD_BYTES:
            raise RecordingError(f"{where}: one record is {record_bytes} bytes; record a subset "
                                 f"of neurons (MonitorSpec.indices) instead.")
        rows = max(1, min(self.chunk_size, MAX_CHUNK_BYTES // max(1, record_bytes)))
        group = self._file["recordings"]
        for part in (spec.population, spec.compartment):
            group = group[part] if part in group else group.create_group(part, track_order=True)
        ds = group.create_dataset(spec.variable, shape=(0, *shape), maxshape=(None, *shape),
                                  chunks=(rows, *shape), dtype=_numpy_dtype(storage),
                                  track_order=True)
        ds.attrs["monitor"] = name
        ds.attrs["population"] = spec.population
        ds.attrs["compartment"] = spec.compartment
        ds.attrs["variable"] = spec.variable
        ds.attrs["units"] = spec.units
        ds.attrs["every"] = spec.every
        ds.attrs["indices"] = ("all" if spec.indices is None
                               else np.asarray(spec.indices, dtype=np.int64))
        ds.attrs["axes"] = ", ".join(("time", *axes))
        ds.attrs["time"] = clock.ds.name
        ds.attrs["torch_dtype"] = str(buffer_dtype).removeprefix("torch.")
        try:
            write_attrs(ds, attrs)
        except TreeError as e:
            raise RecordingError(f"{where}: {e}") from e
        ds.dims[0].attach_scale(clock.ds)
        for dim, label in zip(ds.dims, ("time", *axes)):
            dim.label = label
        self._monitors[name] = _Monitor(name, spec, ds, shape, buffer_dtype, storage)
        self._file.flush()

    def _adopt(self, name: str, spec: MonitorSpec, shape: tuple[int, ...],
               buffer_dtype: torch.dtype, storage: torch.dtype, axes: tuple[str, ...],
               attrs: Mapping[str, Any], where: str) -> None:
        """add() while continuing a recording: take over its dataset of ``spec.key`` after
        checking that it was recorded the same way."""
        ds = self._file["recordings"].get(spec.key)
        if not isinstance(ds, h5py.Dataset):
            have = ", ".join(self._stored_keys()) or "nothing"
            raise RecordingError(f"{where}: recording {self.path} has no {spec.key}, so it was "
                                 f"made with other monitors (it records {have}); write to another "
                                 f"file, or replace it (overwrite=True, on the command line "
                                 f"--force).")
        expected = {"monitor": name, "every": spec.every, "units": spec.units,
                    "indices": ("all" if spec.indices is None
                                else np.asarray(spec.indices, dtype=np.int64)),
                    "axes": ", ".join(("time", *axes)),
                    "torch_dtype": str(buffer_dtype).removeprefix("torch."),
                    "time": f"/time/every_{spec.every}", **attrs}
        stored = read_attrs(ds)
        differ = [f"{k} = {stored.get(k)!r} there, {v!r} here" for k, v in expected.items()
                  if not _same_attr(stored.get(k), v)]
        if ds.shape[1:] != shape:
            differ.insert(0, f"record shape {ds.shape[1:]} there, {shape} here")
        if ds.dtype != _numpy_dtype(storage):
            differ.insert(0, f"dtype {ds.dtype} there, {_numpy_dtype(storage)} here")
        if differ:
            raise RecordingError(f"{where}: recording {self.path} holds {spec.key} recorded "
                                 f"another way ({'; '.join(differ)}); write to another file, or "
                                 f"replace it (overwrite=True, on the command line --force).")
        if spec.every not in self._clocks:
            clock_ds = self._file["time"].get(f"every_{spec.every}")
            if not isinstance(clock_ds, h5py.Dataset):
                raise RecordingError(f"{where}: recording {self.path} lacks its time axis "
                                     f"/time/every_{spec.every} (damaged); write to another file.")
            self._clocks[spec.every] = _Clock(clock_ds, np.empty(self.chunk_size, np.float64),
                                              written=clock_ds.shape[0])
        self._monitors[name] = _Monitor(name, spec, ds, shape, buffer_dtype, storage,
                                        written=ds.shape[0])

    def _stored_keys(self) -> list[str]:
        """The "pop/comp/var" keys of the datasets in the file's /recordings."""
        root = self._file["recordings"]
        return [f"{pop}/{comp}/{var}" for pop in root if isinstance(root[pop], h5py.Group)
                for comp in root[pop] if isinstance(root[pop][comp], h5py.Group)
                for var in root[pop][comp] if isinstance(root[pop][comp][var], h5py.Dataset)]

    @property
    def resuming(self) -> bool:
        """True while a recording opened with append=True waits for :meth:`truncate`."""
        return self._append and not self._truncated and not self._closed

    @property
    def rates(self) -> tuple[int, ...]:
        """The ``every`` of each time axis of the monitors added so far, ascending."""
        return tuple(sorted(self._clocks))

    @property
    def records_held(self) -> dict[int, int]:
        """For each ``every`` of the monitors added so far, the records the file holds on that
        time axis now (the most of its times and of any of its monitors' values); while
        continuing a recording, what :meth:`truncate` would keep or drop is counted from it."""
        self._check_open()
        return {every: max([clock.ds.shape[0], *(m.ds.shape[0] for m in self._monitors.values()
                                                  if m.spec.every == every)])
                for every, clock in sorted(self._clocks.items())}

    @property
    def file_attrs(self) -> dict[str, Any]:
        """The root attributes now in the file."""
        self._check_open()
        return read_attrs(self._file)

    @property
    def config_text(self) -> str | None:
        """The model text in the file (root dataset config_text), or None."""
        self._check_open()
        return self._file[CONFIG_TEXT].asstr()[()] if CONFIG_TEXT in self._file else None

    def truncate(self, records: Mapping[int, int], *,
                 last_times: Mapping[int, float] | None = None) -> None:
        """Continue a recording opened with append=True after its first ``records[every]``
        records on each time axis (every monitor sampled at that ``every``): later records
        (written after the checkpoint a run resumed from) are dropped and appends follow.

        Checks first, changing nothing if one fails: the file records exactly the monitors
        added, holds at least that many records on each axis (none lost before the resume
        point), and, for the ``every`` in ``last_times``, that the last record kept is at that
        time. Then marks the recording incomplete (until :meth:`close`) and clears
        ``aborted``. Called once, after every add() and before the first append()."""
        where = f"Recorder({self.path}).truncate"
        self._check_open()
        if not self.resuming or self._started:
            raise RecordingError(f"{where}: only for a recording opened with append=True, once, "
                                 f"after add() and before the first append().")
        extra = sorted(set(self._stored_keys()) - {m.spec.key for m in self._monitors.values()})
        if extra:
            raise RecordingError(f"cannot continue recording {self.path}: it also records "
                                 f"{', '.join(extra)}, which this run does not (other monitors); "
                                 f"write to another file, or replace it (overwrite=True, on the "
                                 f"command line --force).")
        if set(records) != set(self._clocks):
            raise RecordingError(f"{where}: records must give a count for each every in "
                                 f"{list(self.rates)}, got {dict(records)}.")
        for every, clock in self._clocks.items():
            n = records[every]
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise RecordingError(f"{where}: records[{every}] must be an int >= 0, got {n!r}.")
            found = min([clock.ds.shape[0], *(m.ds.shape[0] for m in self._monitors.values()
                                              if m.spec.every == every)])
            if found < n:
                raise RecordingError(
                    f"cannot continue recording {self.path}: it holds {found} records on its time "
                    f"axis every_{every}, but the run continues after record {n}, so {n - found} "
                    f"are missing (it was cut off before the checkpoint was written, or is from "
                    f"another run); write to another file.")
            t = (last_times or {}).get(every)
            if t is not None and n > 0 and float(clock.ds[n - 1]) != float(t):
                raise RecordingError(
                    f"cannot continue recording {self.path}: its record {n - 1} on time axis "
                    f"every_{every} is at t={float(clock.ds[n - 1])!r}, but the run continues "
                    f"from t={float(t)!r}; it is from another run (another step size or start). "
                    f"Write to another file.")
        f = self._file
        f.attrs["complete"] = False
        if "aborted" in f.attrs:
            del f.attrs["aborted"]
        try:
            write_attrs(f, self._pending_attrs)
        except TreeError as e:
            raise RecordingError(f"Recorder({self.path}): {e}") from e
        for every, clock in self._clocks.items():
            n = records[every]
            clock.ds.resize((n,))
            clock.written, clock.fill = n, 0
        for m in self._monitors.values():
            n = records[m.spec.every]
            m.ds.resize(n, axis=0)
            m.written, m.fill = n, 0
        self._truncated = True
        f.flush()

    def _clock(self, every: int) -> _Clock:
        if every not in self._clocks:
            ds = self._file["time"].create_dataset(
                f"every_{every}", shape=(0,), maxshape=(None,), chunks=(self.chunk_size,),
                dtype=np.float64)
            ds.attrs["units"] = self._time_units
            ds.attrs["every"] = every
            ds.make_scale(f"time (every {every} steps)")
            self._clocks[every] = _Clock(ds, np.empty(self.chunk_size, dtype=np.float64))
        return self._clocks[every]

    # -- streaming ---------------------------------------------------------------------------

    def append(self, name: str, values: torch.Tensor, t: float) -> None:
        """Add one record of monitor ``name`` taken at time ``t``; writes a chunk when full."""
        self._check_open()
        if self.resuming:
            raise RecordingError(f"Recorder({self.path}) continues an existing recording: call "
                                 f"truncate() (Simulation.run does) before the first append().")
        m = self._monitors.get(name)
        if m is None:
            raise RecordingError(f'Recorder({self.path}): no monitor "{name}".'
                                 f"{did_you_mean(name, self._monitors)} Monitors: "
                                 f"{', '.join(self._monitors) or '(none; call add() first)'}.")
        if not isinstance(values, torch.Tensor):
            values = torch.as_tensor(values)
        if tuple(values.shape) != m.shape:
            raise RecordingError(f'Recorder({self.path}): monitor "{name}" records shape '
                                 f"{m.shape}, got values of shape {tuple(values.shape)}.")
        clock = self._clocks[m.spec.every]
        self._check_time(clock, m, t)
        if m.buffer is None:
            m.buffer = torch.empty((self.chunk_size, *m.shape), dtype=m.dtype,
                                   device=values.device)
        m.buffer[m.fill].copy_(values.detach())
        self._started = True
        if m.count == clock.count:  # first monitor at this record index advances the clock
            clock.buf[clock.fill] = float(t)
            clock.fill += 1
            if clock.fill == self.chunk_size:
                self._write_clock(clock)
                self._file.flush()
        m.fill += 1
        if m.fill == self.chunk_size:
            self._write_monitor(m)
            self._file.flush()

    def append_block(self, name: str, values: torch.Tensor, times) -> None:
        """Add ``len(times)`` consecutive records of monitor ``name`` at once (``values``:
        records x the monitor's shape), as that many :meth:`append` calls would, with one
        tensor copy per chunk. A time that differs from the shared time axis raises as
        :meth:`append` does; records of earlier chunks of the block are then kept."""
        self._check_open()
        times = [float(t) for t in times]
        m = self._monitors.get(name)
        if m is None or self.resuming:
            self.append(name, values, times[0] if times else 0.0)   # raises: says why
        if not isinstance(values, torch.Tensor) or values.dim() != 1 + len(m.shape) or \
                tuple(values.shape[1:]) != m.shape or values.shape[0] != len(times):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values)
            raise RecordingError(f'Recorder({self.path}): append_block("{name}") takes '
                                 f"{len(times)} records of shape {m.shape} for {len(times)} "
                                 f"times, i.e. a tensor of shape {(len(times), *m.shape)}; got "
                                 f"{got}.")
        clock = self._clocks[m.spec.every]
        stamps = np.asarray(times, dtype=np.float64)
        done, wrote = 0, False
        while done < len(stamps):
            whole = (len(stamps) - done) // self.chunk_size * self.chunk_size
            if whole and m.fill == 0 and clock.fill == 0 and m.count == clock.count:
                # whole chunks that lead the time axis: written straight from the block
                n = m.written
                _append_rows(m.ds, n, values[done:done + whole].detach().to(m.dtype).to(
                    "cpu").to(m.storage).numpy())        # rounded as the buffer would
                m.written += whole
                _append_rows(clock.ds, clock.written, stamps[done:done + whole])
                clock.written += whole
                self.chunks_written += whole // self.chunk_size
                self._started, wrote = True, True
                done += whole
                continue
            whole = (m.fill + len(stamps) - done) // self.chunk_size * self.chunk_size
            if whole and m.fill and m.fill == clock.fill and m.count == clock.count:
                # the held records and the block's next ones make whole chunks, and this
                # monitor extends the time axis: one write of each, not one per chunk
                take = whole - m.fill
                head = m.buffer[:m.fill].to("cpu").to(m.storage)
                body = values[done:done + take].detach().to(m.dtype).to("cpu").to(m.storage)
                n = m.written
                _append_rows(m.ds, n, torch.cat([head, body]).numpy())
                m.written, m.fill = n + whole, 0
                n = clock.written
                _append_rows(clock.ds, n, np.concatenate([clock.buf[:clock.fill],
                                                          stamps[done:done + take]]))
                clock.written, clock.fill = n + whole, 0
                self.chunks_written += whole // self.chunk_size
                self._started, wrote = True, True
                done += take
                continue
            take = min(len(stamps) - done, self.chunk_size - m.fill)
            # records another monitor already put on the shared time axis: the same times
            lag = max(0, min(take, clock.count - m.count))
            start = m.count - clock.written
            if lag and start + lag > 0:
                skip = max(0, -start)
                held = clock.buf[start + skip:start + lag]
                given = stamps[done + skip:done + lag]
                bad = np.flatnonzero(held != given)
                if bad.size:
                    k = int(bad[0]) + skip
                    self._time_mismatch(clock, m, m.count + k, float(stamps[done + k]),
                                        float(clock.buf[start + k]))
            m.fill += lag
            lead = stamps[done + lag:done + take]        # the rest extends the time axis
            while lead.size:
                room = min(lead.size, self.chunk_size - clock.fill)
                clock.buf[clock.fill:clock.fill + room] = lead[:room]
                clock.fill += room
                m.fill += room
                lead = lead[room:]
                if clock.fill == self.chunk_size:
                    self._write_clock(clock)
                    wrote = True
            if m.buffer is None:
                m.buffer = torch.empty((self.chunk_size, *m.shape), dtype=m.dtype,
                                       device=values.device)
            m.buffer[m.fill - take:m.fill].copy_(values[done:done + take].detach())
            self._started = True
            done += take
            if m.fill == self.chunk_size:
                self._write_monitor(m)
                wrote = True
        if wrote:
            self._file.flush()

    def _check_time(self, clock: _Clock, m: _Monitor, t: float) -> None:
        j = m.count - clock.written
        if m.count < clock.count and j >= 0 and isinstance(t, (int, float)) \
                and clock.buf[j] != t:
            self._time_mismatch(clock, m, m.count, t, clock.buf[j])

    def _time_mismatch(self, clock: _Clock, m: _Monitor, record: int, t: float,
                       held: float) -> None:
        raise RecordingError(
            f'Recorder({self.path}): monitor "{m.name}" appended its record {record} at '
            f"t={t}, but the shared time axis {clock.ds.name} has t={held} there; "
            f"monitors with the same every={m.spec.every} must be appended at the same times "
            f"(give this one a different `every` or append it on the same steps).")

    def _write_clock(self, clock: _Clock) -> None:
        n, k = clock.written, clock.fill
        _append_rows(clock.ds, n, clock.buf[:k])
        clock.written, clock.fill = n + k, 0

    def _write_monitor(self, m: _Monitor) -> None:
        n, k = m.written, m.fill
        data = m.buffer[:k].to("cpu").to(m.storage).numpy()  # the only host sync
        _append_rows(m.ds, n, data)
        m.written, m.fill = n + k, 0
        self.chunks_written += 1

    def flush(self) -> None:
        """Write all partially filled buffers and flush the file to disk."""
        self._check_open()
        for clock in self._clocks.values():
            if clock.fill:
                self._write_clock(clock)
        for m in self._monitors.values():
            if m.fill:
                self._write_monitor(m)
        self._file.flush()

    @property
    def buffer_nbytes(self) -> int:
        """Bytes held in in-memory buffers (bounded by chunk_size, whatever the run length)."""
        data = sum(m.buffer.numel() * m.buffer.element_size()
                   for m in self._monitors.values() if m.buffer is not None)
        return data + sum(c.buf.nbytes for c in self._clocks.values())

    @property
    def closed(self) -> bool:
        """Whether the file has been closed (by :meth:`close` or at the end of its ``with``
        block)."""
        return self._closed

    # -- closing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush the remaining records, mark the recording complete and close the file."""
        self._finish(complete=True)

    def _finish(self, complete: bool, aborted: str | None = None) -> None:
        if self._closed:
            return
        try:
            if self.resuming:   # append=True but never continued: leave the file as it was
                return
            self.flush()
            self._file.attrs["complete"] = complete
            if aborted is not None:
                self._file.attrs["aborted"] = aborted
        finally:
            self._closed = True
            for m in self._monitors.values():
                m.buffer = None
            self._file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RecordingError(f"Recorder({self.path}) is closed; create a new Recorder to "
                                 f"record more.")

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # keep the data, but do not claim the run finished
            self._finish(complete=False, aborted=f"{exc_type.__name__}: {exc}"[:1000])


def _append_rows(ds: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Grow ``ds`` along its first axis to ``start + len(rows)`` and write ``rows`` there,
    through h5py's low-level calls (its slicing costs several times more per write)."""
    rows = np.ascontiguousarray(rows)
    ds.id.set_extent((start + rows.shape[0], *ds.shape[1:]))
    space = ds.id.get_space()
    space.select_hyperslab((start,) + (0,) * (rows.ndim - 1), rows.shape)
    ds.id.write(h5py.h5s.create_simple(rows.shape), space, rows)


def _snapshot(value: Any) -> Any:
    """A copy of an attribute value that later changes to the value do not reach (tensors as
    NumPy arrays)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return copy.deepcopy(value)


def _same_value(snapshot: Any, value: Any) -> bool:
    """Whether attribute value ``value`` equals an earlier one's :func:`_snapshot`: the same
    type, and for arrays the same dtype, shape and elements."""
    value = _snapshot(value) if isinstance(value, torch.Tensor) else value
    if type(snapshot) is not type(value):
        return False
    if isinstance(value, np.ndarray):
        return snapshot.dtype == value.dtype and snapshot.shape == value.shape and \
            bool(np.array_equal(snapshot, value))
    try:
        return bool(snapshot == value)
    except Exception:  # noqa: BLE001 - values that do not compare are rewritten
        return False


def _same_attr(stored: Any, value: Any) -> bool:
    """Whether attribute value ``value`` (as given to write_attrs) equals ``stored`` (as read)."""
    try:
        value = decode_attr(encode_attr("value", value))
    except TreeError:
        return False
    if isinstance(stored, np.ndarray) or isinstance(value, np.ndarray):
        a, b = np.asarray(stored), np.asarray(value)
        return a.dtype.kind in "biufc" and b.dtype.kind in "biufc" and a.shape == b.shape \
            and bool(np.array_equal(a, b))
    return isinstance(stored, bool) == isinstance(value, bool) and stored == value


def _record_shape(record_shape: Any, where: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(n) for n in record_shape)
    except (TypeError, ValueError):
        raise RecordingError(f"{where}: record_shape must be a tuple of ints, got "
                             f"{record_shape!r}.") from None
    if any(n < 1 for n in shape):
        raise RecordingError(f"{where}: record_shape {shape} has an empty axis; nothing to "
                             f"record.")
    return shape


def _dtypes(dtype: Any, where: str) -> tuple[torch.dtype, torch.dtype]:
    """(buffer dtype, storage dtype): dtypes numpy lacks are stored widened, exactly."""
    try:
        if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
            dtype = getattr(torch, dtype)
        if not isinstance(dtype, torch.dtype):
            dtype = torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except (TypeError, ValueError):
        raise RecordingError(f"{where}: unsupported dtype {dtype!r}; use a torch or numpy "
                             f"numeric dtype such as torch.float32.") from None
    try:
        torch.empty(0, dtype=dtype).numpy()
        return dtype, dtype
    except TypeError:
        return dtype, torch.complex64 if dtype.is_complex else torch.float32


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def _axes(axes: Any, shape: tuple[int, ...], where: str) -> tuple[str, ...]:
    if axes is None:
        return _DEFAULT_AXES.get(len(shape), tuple(f"dim{i + 1}" for i in range(len(shape))))
    axes = tuple(str(a) for a in axes)
    if len(axes) != len(shape):
        raise RecordingError(f"{where}: axes {axes} must name each of the {len(shape)} axes of "
                             f"record_shape {shape}.")
    return axes


# -- reading -----------------------------------------------------------------------------------

@dataclass
class RecordedVariable:
    """One recorded variable: ``values[i]`` was taken at ``time[i]``.

    ``attrs["indices"]`` is a tuple of ints, or None for all neurons.
    """

    key: str
    time: np.ndarray
    values: np.ndarray | torch.Tensor
    attrs: dict[str, Any] = field(default_factory=dict)


class RecordingFile:
    """A recording opened for reading (also while it is still being written, or cut off)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file = open_readonly(self.path, "recording", RecordingError)
        try:
            self.attrs: dict[str, Any] = read_attrs(self._file)
            check_format(self.path, self.attrs, RECORDING_FORMAT, RECORDING_FORMAT_VERSION,
                         RecordingError)
        except BaseException:
            self._file.close()
            raise

    @property
    def complete(self) -> bool:
        """True if the writer closed the recording cleanly (False: still running or cut off)."""
        return self.attrs.get("complete") is True

    @property
    def config_text(self) -> str | None:
        """The model text the run was started from (``/config_text``), or None if it was
        not stored."""
        return self._file[CONFIG_TEXT].asstr()[()] if CONFIG_TEXT in self._file else None

    def variables(self) -> list[str]:
        """The recorded variables as "population/compartment/variable" keys, in creation order."""
        root = self._file.get("recordings")
        if root is None:
            return []
        return [f"{pop}/{comp}/{var}" for pop in root for comp in root[pop]
                for var in root[pop][comp] if isinstance(root[pop][comp][var], h5py.Dataset)]

    def read(self, key: str, as_tensor: bool = False, *, rows: slice | None = None,
             index: tuple = ()) -> RecordedVariable:
        """Read variable ``key`` ("pop/comp/var") with its times, as numpy or a CPU tensor.

        Only a part is loaded when ``rows`` (a slice of the records: times and values alike)
        or ``index`` (a selection of the record axes after time, e.g. ``(0, [2, 5])`` for
        sample 0, neurons 2 and 5: ints, slices and at most one increasing list, as h5py
        allows) is given."""
        keys = self.variables()
        if key not in keys:
            raise RecordingError(f'{self.path}: no recorded variable "{key}".'
                                 f"{did_you_mean(key, keys)} Recorded: "
                                 f"{', '.join(keys) or '(none)'}.")
        try:
            ds = self._file["recordings"][key]
            time_ds = self._file[ds.attrs["time"]]
            n = min(ds.shape[0], time_ds.shape[0])  # equal unless cut off between two writes
            span = slice(0, n) if rows is None else slice(*rows.indices(n))
            try:
                values, time = ds[(span, *index)], time_ds[span]
            except (TypeError, ValueError, IndexError) as e:
                raise RecordingError(f"{self.path}: cannot select rows {rows!r}, index "
                                     f"{index!r} of {key}, records of shape {ds.shape[1:]} "
                                     f"({e}).") from None
            attrs = read_attrs(ds)
        except (OSError, KeyError) as e:
            raise RecordingError(f"{self.path}: cannot read {key} ({e}); if the recording is "
                                 f"still being written, retry.") from e
        indices = attrs.get("indices")
        attrs["indices"] = (None if indices is None or isinstance(indices, str)
                            else tuple(int(i) for i in np.atleast_1d(indices)))
        if as_tensor:
            values = torch.from_numpy(np.ascontiguousarray(values))
            dtype = getattr(torch, str(attrs.get("torch_dtype", "")), None)
            if isinstance(dtype, torch.dtype) and dtype != values.dtype:
                values = values.to(dtype)
        return RecordedVariable(key=key, time=time, values=values, attrs=attrs)

    def close(self) -> None:
        """Close the file (also done at the end of a ``with`` block)."""
        self._file.close()

    def __enter__(self) -> "RecordingFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_recording(path: str | os.PathLike) -> RecordingFile:
    """Open a recording written by :class:`Recorder` for reading."""
    return RecordingFile(path)
