"""HDF5 input/output: crash-safe checkpoints and streaming recordings.

Modules: :mod:`.atomic` (atomic file replacement), :mod:`.tree` (nested dicts <-> HDF5),
:mod:`.attrs` (attribute values), :mod:`.rng` (RNG state), :mod:`.checkpoint` (checkpoints and
``describe_h5``), :mod:`.series` (a run directory's latest and kept checkpoints),
:mod:`.recorder` (recordings). Each module's docstring documents its layout.
"""
from neurosim.io.atomic import atomic_h5, fsync_dir, fsync_file, write_text_atomic
from neurosim.io.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, Checkpoint,
                                    load_checkpoint, save_checkpoint)
from neurosim.io.describe import describe_h5
from neurosim.io.errors import (CheckpointError, ChecksumError, DamagedCheckpointError,
                                NeurosimIOError, RecordingError, TreeError)
from neurosim.io.recorder import (RECORDING_FORMAT, RECORDING_FORMAT_VERSION, MonitorSpec,
                                  RecordedVariable, Recorder, RecordingFile, open_recording)
from neurosim.io.rng import capture_rng_state, restore_rng_state
from neurosim.io.series import kept_checkpoints, load_newest
from neurosim.io.tree import read_tree, write_tree

__all__ = [
    "atomic_h5", "fsync_file", "fsync_dir", "write_text_atomic",
    "write_tree", "read_tree",
    "capture_rng_state", "restore_rng_state",
    "CHECKPOINT_FORMAT", "CHECKPOINT_FORMAT_VERSION", "Checkpoint", "save_checkpoint",
    "load_checkpoint", "describe_h5", "kept_checkpoints", "load_newest",
    "RECORDING_FORMAT", "RECORDING_FORMAT_VERSION", "MonitorSpec", "Recorder",
    "RecordedVariable", "RecordingFile", "open_recording",
    "NeurosimIOError", "CheckpointError", "DamagedCheckpointError", "RecordingError",
    "TreeError", "ChecksumError",
]
