"""Errors raised by :mod:`neurosim.io`. Each message names the file or key at fault and the fix."""
from __future__ import annotations

from neurosim.errors import NeurosimError


class NeurosimIOError(NeurosimError):
    """A neurosim HDF5 file is missing, unreadable or of the wrong kind."""


class CheckpointError(NeurosimIOError):
    """A checkpoint cannot be written or loaded."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint file is unusable as such: missing, truncated, not HDF5, or incomplete.

    ``reason`` is a short phrase for listings ("truncated or not an HDF5 file", "incomplete",
    "missing"). A run directory's loader falls back to an earlier checkpoint on this error, and
    only on this one (a newer format version or the wrong kind is not damage)."""

    def __init__(self, message: str, reason: str = "damaged") -> None:
        super().__init__(message)
        self.reason = reason


class RecordingError(NeurosimIOError):
    """A recording cannot be written or read."""


class TreeError(NeurosimError, ValueError):
    """A nested dict cannot be stored in HDF5 (bad key or unsupported leaf type)."""


class ChecksumError(TreeError):
    """A stored leaf's bytes do not match the CRC-32 written with them: the file is damaged."""
