"""Crash-safe whole-file writes.

:func:`write_text_atomic` (text files: metrics.csv, tables) and :func:`atomic_h5` write a new HDF5 file under a temporary name in the target's directory
(``.<name>.tmp-<pid>``) and renames it onto the target only after it was closed and fsynced.
A reader therefore sees either the previous file or the complete new one, never a mix, even if
the process is killed (SIGKILL, power loss) part-way. A killed writer may leave its temporary
file behind; it is never read and can be deleted.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import h5py


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data and metadata to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory entry table (makes a rename durable). No-op where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(path: str | os.PathLike) -> Path:
    """The temporary name :func:`atomic_h5` writes to before renaming onto ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a fsynced temporary file renamed onto it."""
    path = Path(path)
    tmp = temp_path_for(path)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, **file_kwargs) -> Iterator[h5py.File]:
    """Yield a new ``h5py.File`` (mode "w") that replaces ``path`` atomically on normal exit.

    On any exception (KeyboardInterrupt included) the temporary file is removed, the exception
    propagates, and an existing file at ``path`` is left untouched. Extra keyword arguments go
    to ``h5py.File`` (``track_order=True`` by default, so dict order survives a round trip).
    """
    path = Path(path)
    tmp = temp_path_for(path)
    file_kwargs.setdefault("track_order", True)
    f = h5py.File(tmp, "w", **file_kwargs)
    try:
        yield f
        f.close()
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
