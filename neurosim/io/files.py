"""Opening neurosim HDF5 files for reading, and checking their format header.

Every neurosim file carries root attributes ``format`` ("neurosim-checkpoint" or
"neurosim-recording"), ``format_version`` (int) and ``neurosim_version`` (the writer).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import h5py

from neurosim.io.errors import NeurosimIOError

KNOWN_FORMATS = {"neurosim-checkpoint": "checkpoint", "neurosim-recording": "recording"}


def open_readonly(path: str | os.PathLike, what: str = "file",
                  error: type[NeurosimIOError] = NeurosimIOError,
                  advice: str | None = None) -> h5py.File:
    """Open ``path`` read-only, raising ``error`` with a clear message if it cannot be read.

    Tries without HDF5 file locking first, so a recording can be read while another process
    is still writing it; falls back to locking when this process has the file open already.
    ``advice`` replaces the default "use an earlier ..." of the message for a damaged file.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"{what} {path} does not exist; check the path (cwd: {os.getcwd()}).")
    if path.is_dir():
        raise error(f"{what} {path} is a directory; pass the path of an HDF5 file.")
    try:
        try:
            return h5py.File(path, "r", locking=False, track_order=True)
        except OSError as e:
            if "locking flag" not in str(e):
                raise
            return h5py.File(path, "r", track_order=True)
    except OSError as e:
        raise error(truncated_message(path, e, what, advice)) from e


def truncated_message(path: Path, cause: BaseException, what: str = "file",
                      advice: str | None = None) -> str:
    """The message for a file HDF5 cannot parse; ``advice`` replaces "use an earlier ..."."""
    if advice is None:
        earlier = f"an earlier {what}" if what in ("checkpoint", "recording") else "an intact copy"
        advice = f"use {earlier}"
    return (f"{path} is truncated or not an HDF5 file (a write may have been interrupted); "
            f"{advice}. (HDF5 said: {cause})")


def check_format(path: Path, attrs: Mapping[str, Any], expected: str, version: int,
                 error: type[NeurosimIOError]) -> None:
    """Raise ``error`` unless ``attrs`` say the file is format ``expected``, version ``version``."""
    from neurosim import __version__

    what = KNOWN_FORMATS[expected]
    fmt = attrs.get("format")
    if fmt != expected:
        if fmt in KNOWN_FORMATS:
            raise error(f"{path} is a neurosim {KNOWN_FORMATS[fmt]}, not a {what}; pass a {what} "
                        f"file here.")
        raise error(f"{path} is an HDF5 file but not a neurosim {what} (root attribute 'format' "
                    f"is {fmt!r}, expected {expected!r}).")
    found = attrs.get("format_version")
    writer = attrs.get("neurosim_version", "unknown")
    if not isinstance(found, int) or isinstance(found, bool):
        raise error(f"{path}: root attribute 'format_version' is {found!r}, not an int; the file "
                    f"is damaged or was not written by neurosim.")
    if found > version:
        raise error(f"{path} has {what} format version {found} (written by neurosim {writer}), "
                    f"newer than version {version} that this neurosim {__version__} reads; "
                    f"upgrade neurosim to read it.")
    if found < version:
        raise error(f"{path} has the older {what} format version {found} (written by neurosim "
                    f"{writer}); this neurosim {__version__} reads only version {version}. Read it "
                    f"with neurosim {writer}, or re-create it.")
