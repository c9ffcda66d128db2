"""Checkpoints: one self-describing HDF5 file holding everything needed to resume a run.

Layout (written atomically with :func:`.atomic.atomic_h5`, so a crash never damages the
previous checkpoint at the same path)::

    /                    root attrs: format="neurosim-checkpoint", format_version=1,
                         neurosim_version, kind ("simulation", "training", ...), created (ISO
                         8601, UTC), the caller's extra attrs, and LAST complete=True
    /<key>/...           one group (or leaf) per top-level payload key, e.g. network, state,
                         rules, rng, progress, metrics, solver, config; see :mod:`.tree`
    /config_text         optional str dataset: the config file the run was started from

:func:`load_checkpoint` checks format, version, ``complete`` and (optionally) kind before
reading, and raises :class:`CheckpointError` naming the file and the fix; for a missing,
truncated, non-HDF5 or incomplete file the subclass :class:`DamagedCheckpointError`, whose
message names the earlier checkpoints kept next to it, if any (see :mod:`.series`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py

from neurosim.io.atomic import atomic_h5
from neurosim.io.attrs import read_attrs, write_attrs
from neurosim.io.describe import describe_h5
from neurosim.io.errors import ChecksumError, CheckpointError, DamagedCheckpointError, TreeError
from neurosim.io.files import check_format, open_readonly, truncated_message
from neurosim.io.tree import read_tree, write_tree

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "Checkpoint", "save_checkpoint",
           "load_checkpoint", "describe_h5"]

CHECKPOINT_FORMAT = "neurosim-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CONFIG_TEXT = "config_text"
RESERVED_ATTRS = ("format", "format_version", "neurosim_version", "kind", "created", "complete")


@dataclass
class Checkpoint:
    """A loaded checkpoint: root attributes, the payload tree and the config text."""

    path: Path
    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    config_text: str | None = None


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any], *, kind: str,
                    config_text: str | None = None,
                    attrs: Mapping[str, Any] | None = None) -> Path:
    """Write ``payload`` (a nested dict, see :mod:`.tree`) to ``path`` atomically; return the path.

    ``attrs`` become extra root attributes (see :mod:`.attrs`); their names must not be one of
    the reserved header names.
    """
    from neurosim import __version__

    path = Path(path)
    _check_save_args(path, payload, kind, config_text, attrs)
    try:
        with atomic_h5(path) as f:
            f.attrs["format"] = CHECKPOINT_FORMAT
            f.attrs["format_version"] = CHECKPOINT_FORMAT_VERSION
            f.attrs["neurosim_version"] = __version__
            f.attrs["kind"] = kind
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")
            write_attrs(f, attrs)
            write_tree(f, payload)
            if config_text is not None:
                f.create_dataset(CONFIG_TEXT, data=config_text, dtype=h5py.string_dtype("utf-8"))
            f.attrs["complete"] = True
    except TreeError as e:
        raise CheckpointError(f"cannot save checkpoint {path}: {e} (nothing was written; any "
                              f"previous checkpoint there is unchanged)") from e
    return path


def _check_save_args(path: Path, payload: Any, kind: Any, config_text: Any, attrs: Any) -> None:
    if not isinstance(kind, str) or not kind:
        raise CheckpointError(f"save_checkpoint({path}): kind must be a non-empty str such as "
                              f'"simulation" or "training", got {kind!r}.')
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"save_checkpoint({path}): payload must be a dict, got "
                              f"{type(payload).__name__}.")
    if CONFIG_TEXT in payload:
        raise CheckpointError(f'save_checkpoint({path}): payload key "{CONFIG_TEXT}" is reserved; '
                              f"pass the text as config_text=... instead.")
    if config_text is not None and not isinstance(config_text, str):
        raise CheckpointError(f"save_checkpoint({path}): config_text must be a str, got "
                              f"{type(config_text).__name__}.")
    clash = sorted(set(attrs or {}) & set(RESERVED_ATTRS))
    if clash:
        raise CheckpointError(f"save_checkpoint({path}): attrs {clash} are reserved for the file "
                              f"header ({', '.join(RESERVED_ATTRS)}); rename them.")
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot save checkpoint {path}: directory {path.parent} does not "
                              f"exist; create it first.")


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; tensors come back on CPU.

    With ``kind``, also check that the checkpoint is of that kind (e.g. "training").
    """
    path = Path(path)
    damaged = "truncated or not an HDF5 file"
    try:
        f = open_readonly(path, "checkpoint", CheckpointError, _advice(path))
    except CheckpointError as e:
        reason = damaged if path.is_file() else "missing" if not path.exists() else "not a file"
        raise DamagedCheckpointError(str(e), reason) from e.__cause__
    with f:
        try:
            attrs = read_attrs(f)
            _check_header(path, attrs, kind)
            payload = read_tree(f, exclude=(CONFIG_TEXT,))
            config_text = f[CONFIG_TEXT].asstr()[()] if CONFIG_TEXT in f else None
        except ChecksumError as e:
            raise DamagedCheckpointError(f"cannot load checkpoint {path}: {e} "
                                         f"{_advice(path)[0].upper()}{_advice(path)[1:]}.",
                                         "contents damaged (checksum mismatch)") from e
        except TreeError as e:
            raise CheckpointError(f"cannot load checkpoint {path}: {e}") from e
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:
            # damage found while reading the body (garbled metadata, unreadable blocks)
            raise DamagedCheckpointError(
                truncated_message(path, e, "checkpoint", _advice(path)), damaged) from e
    return Checkpoint(path=path, kind=attrs["kind"], attrs=attrs, payload=payload,
                      config_text=config_text)


def _check_header(path: Path, attrs: Mapping[str, Any], kind: str | None) -> None:
    check_format(path, attrs, CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, CheckpointError)
    if attrs.get("complete") is not True:
        advice = _advice(path)
        raise DamagedCheckpointError(f"{path} is incomplete (root attribute 'complete' is missing "
                                     f"or false): its write did not finish. "
                                     f"{advice[0].upper()}{advice[1:]}.", "incomplete")
    found = attrs.get("kind")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} is a {found!r} checkpoint, but a {kind!r} checkpoint is "
                              f"expected here; pass a {kind} checkpoint.")


def _advice(path: Path) -> str:
    """What to do instead of loading a damaged checkpoint: the earlier ones kept beside it
    (a training run's checkpoints/), named, or that there are none."""
    from neurosim.io.series import earlier_checkpoints

    earlier = earlier_checkpoints(path)
    if not earlier:
        return ("no earlier checkpoint is kept next to it, so it has to be made again (re-run "
                "what wrote it)")
    names = ", ".join(str(p) for p in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
    return (f"use an earlier checkpoint kept next to it (newest first: {names}); `neurosim "
            f"resume` falls back to them by itself")
