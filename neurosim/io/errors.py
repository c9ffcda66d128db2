"""Errors raised by :mod:`neurosim.io`. Each message names the file or key at fault and the fix."""
from __future__ import annotations

from neurosim.errors import NeurosimError


class NeurosimIOError(NeurosimError):
    """A neurosim HDF5 file is missing, unreadable or of the wrong kind."""


class CheckpointError(NeurosimIOError):
    """A checkpoint cannot be written or loaded."""


class RecordingError(NeurosimIOError):
    """A recording cannot be written or read."""


class TreeError(NeurosimError, ValueError):
    """A nested dict cannot be stored in HDF5 (bad key or unsupported leaf type)."""
