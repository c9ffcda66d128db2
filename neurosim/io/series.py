"""The checkpoints of a run directory: the latest one and earlier ones kept beside it.

Layout::

    RUN_DIR/run.h5                        the latest checkpoint (atomically rewritten)
    RUN_DIR/checkpoints/epoch_0007.h5     earlier checkpoints, named by their epoch

The writer (:class:`neurosim.training.Trainer`) keeps an earlier checkpoint by putting the
latest one also under ``checkpoints/`` (:func:`keep_copy`: a hard link where the file system
allows, else a copy; atomically either way) just before it rewrites ``run.h5``, and deletes
old ones (:func:`prune`) only once the new ``run.h5`` is complete. Checkpoint files are
never modified in place, so a hard link shares nothing that changes later.

:func:`load_newest` reads ``run.h5`` and, if that is damaged (missing, truncated, not HDF5,
incomplete), the newest kept checkpoint that is intact.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from neurosim.io.atomic import fsync_dir, fsync_file, temp_path_for
from neurosim.io.errors import CheckpointError, DamagedCheckpointError

__all__ = ["LATEST", "KEPT_DIR", "kept_path", "kept_checkpoints", "earlier_checkpoints",
           "keep_copy", "prune", "load_newest"]

LATEST = "run.h5"
KEPT_DIR = "checkpoints"
_KEPT_NAME = re.compile(r"^epoch_(\d+)\.h5$")


def kept_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """Where the checkpoint after ``epoch`` epochs is kept: RUN_DIR/checkpoints/epoch_NNNN.h5."""
    return Path(run_dir) / KEPT_DIR / f"epoch_{int(epoch):04d}.h5"


def kept_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The kept checkpoints of ``run_dir`` as (epoch, path), newest first."""
    folder = Path(run_dir) / KEPT_DIR
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _KEPT_NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


def earlier_checkpoints(path: str | os.PathLike) -> list[Path]:
    """The kept checkpoints older than checkpoint ``path``, newest first: all kept ones for a
    run directory's ``run.h5``, those of smaller epochs for a kept one, else none."""
    path = Path(path)
    match = _KEPT_NAME.match(path.name)
    if match and path.parent.name == KEPT_DIR:
        return [p for epoch, p in kept_checkpoints(path.parent.parent)
                if epoch < int(match.group(1))]
    if path.name == LATEST:
        return [p for _, p in kept_checkpoints(path.parent)]
    return []


def keep_copy(src: str | os.PathLike, dst: str | os.PathLike, *, link: bool = True) -> None:
    """Make checkpoint ``src`` also available at ``dst``: a hard link (no data copied) where
    the file system allows and ``link`` is true, else a copy (independent of ``src``); it
    appears at ``dst`` atomically, complete or not at all."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link and dst.exists() and os.path.samefile(src, dst):
        return
    tmp = temp_path_for(dst)
    tmp.unlink(missing_ok=True)
    try:
        linked = False
        if link:
            try:
                os.link(src, tmp)
                linked = True
            except OSError:              # no hard links here (some network or FAT file systems)
                pass
        if not linked:
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)


def prune(run_dir: str | os.PathLike, *, keep: int, before: int) -> list[Path]:
    """Delete the kept checkpoints of epoch >= ``before`` (left from a run that went further
    before it was resumed from an earlier point, or started over) and all but the ``keep``
    newest of the others; return the deleted paths."""
    doomed, kept = [], 0
    for epoch, path in kept_checkpoints(run_dir):
        if epoch < before and kept < keep:
            kept += 1
        else:
            doomed.append(path)
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        fsync_dir(Path(run_dir) / KEPT_DIR)
    return doomed


def load_newest(run_dir: str | os.PathLike, *, kind: str | None = None,
                fix: str = "start the run again"):
    """Load ``run_dir``'s newest intact checkpoint: run.h5, else the kept ones, newest first.

    Returns ``(checkpoint, skipped)`` with ``skipped`` the damaged files passed over, as
    (path, reason). Raises :class:`CheckpointError` listing every file tried when none is
    intact; other errors (another format version, the wrong kind) are raised at once.
    """
    from neurosim.io.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    skipped: list[tuple[Path, str]] = []
    for path in [run_dir / LATEST, *(p for _, p in kept_checkpoints(run_dir))]:
        try:
            return load_checkpoint(path, kind=kind), skipped
        except DamagedCheckpointError as err:
            skipped.append((path, err.reason))
    tried = ", ".join(f"{path} ({reason})" for path, reason in skipped)
    raise CheckpointError(f"no intact checkpoint in {run_dir}: tried {tried}; {fix}.")
