"""Tests for neurosim.io: tree round trips, RNG state, checkpoints, crash safety, recordings."""
from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import neurosim
from neurosim.errors import NeurosimError
from neurosim.io import (CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, CheckpointError,
                         DamagedCheckpointError, MonitorSpec, Recorder, RecordingError,
                         TreeError, atomic_h5, capture_rng_state, describe_h5, load_checkpoint,
                         open_recording, read_tree, restore_rng_state, save_checkpoint,
                         write_tree)

REPO = Path(__file__).resolve().parents[1]


# -- helpers ------------------------------------------------------------------------------------

def assert_identical(a, b, path="tree"):
    """Same type, same dtype/shape, same bits (NaN payloads and -0.0 included)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_identical(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and b.device.type == "cpu", path
        bits = [t.detach().contiguous().reshape(-1).view(torch.uint8).tolist() for t in (a, b)]
        assert bits[0] == bits[1], path
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), path
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
    elif isinstance(a, float):
        assert struct.pack("<d", a) == struct.pack("<d", b), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def tree_round_trip(tmp_path, tree):
    with h5py.File(tmp_path / "tree.h5", "w", track_order=True) as f:
        write_tree(f, tree)
    with h5py.File(tmp_path / "tree.h5", "r") as f:
        return read_tree(f)


def run_python(code: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def sample_payload():
    g = torch.Generator().manual_seed(0)
    return {
        "network": {"w": torch.randn(5, 3, generator=g), "mask": torch.rand(5, 3, generator=g) > 0.5},
        "state": {"soma": {"u": torch.randn(2, 5, dtype=torch.float64, generator=g)}},
        "progress": {"step": 1234, "t": 12.5, "done": False},
        "metrics": {"loss": [0.5, 0.25, float("nan")]},
    }


# -- tree -----------------------------------------------------------------------------------------

def test_tree_round_trip_is_bit_exact(tmp_path):
    nan_payload = np.array([0x7FF8000000000123], dtype=np.uint64).view(np.float64)
    tree = {
        "tensors": {
            "f32": torch.tensor([1.5, -0.0, float("nan"), float("inf"), -float("inf")]),
            "f64": torch.from_numpy(np.concatenate([nan_payload, [-0.0, 1e-310]])),
            "f16": torch.tensor([1.0, -0.0, float("nan")], dtype=torch.float16),
            "bf16": torch.tensor([[1.0, -0.0], [float("nan"), 3.5]], dtype=torch.bfloat16),
            "f8": torch.tensor([1.0, -2.0], dtype=torch.float32).to(torch.float8_e4m3fn),
            "i64": torch.tensor([-(2 ** 63), 2 ** 63 - 1]),
            "u8": torch.arange(256, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]),
            "c64": torch.tensor([1 + 2j, -0.0 - 1j], dtype=torch.complex64),
            "scalar": torch.tensor(-0.0),
            "empty": torch.zeros(0, 4, dtype=torch.int32),
            "strided": torch.arange(12.0).reshape(3, 4).t(),
            "param": torch.nn.Parameter(torch.ones(2)).detach(),
        },
        "arrays": {
            "f64": np.array([np.nan, -0.0, 1.0]),
            "big_endian": np.arange(4, dtype=">i4"),
            "bytes_with_nul": np.array([b"a\x00", b"\x00b"]),
            "unicode": np.array(["héllo", ""]),
            "structured": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8", (2,))]),
            "datetime": np.array(["2024-01-01"], dtype="datetime64[D]"),
            "np_scalar": np.float32(-0.0),
            "np_int": np.int16(-7),
            "zero_d": np.array(3.25),
            "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        },
        "scalars": {"int": 3, "huge": 2 ** 100, "float": 0.1, "nan": float("nan"),
                    "neg_zero": -0.0, "inf": float("-inf"), "true": True, "str": "µs ü 🧠",
                    "json_like": "json:{}", "none": None, "bytes": b"\x00\x01\xff",
                    "empty_bytes": b""},
        "lists": {"list": [1, 2.5, "x", None, True], "tuple": (1, 2), "empty": [],
                  "empty_tuple": ()},
        "empty_dict": {},
    }
    back = tree_round_trip(tmp_path, tree)
    assert_identical(tree, back)


def test_tree_keeps_key_order(tmp_path):
    tree = {"z": 1, "a": {"y": 2, "b": 3}, "m": 4}
    assert list(tree_round_trip(tmp_path, tree)) == ["z", "a", "m"]


@pytest.mark.parametrize("tree, message", [
    ({"a": {"b/c": 1}}, 'a: key "b/c" is not a valid HDF5 name'),
    ({"": 1}, 'key "" is not a valid HDF5 name'),
    ({3: 1}, "key 3 is a int; HDF5 names must be str"),
    ({"s": {1, 2}}, "s: cannot store a set"),
    ({"l": [[1, 2]]}, "l: lists and tuples may hold only int/float/bool/str/None"),
    ({"o": np.array([object()])}, "o: numpy arrays of dtype object cannot be stored"),
])
def test_tree_rejects_bad_input_clearly(tmp_path, tree, message):
    with h5py.File(tmp_path / "t.h5", "w") as f, pytest.raises(TreeError) as err:
        write_tree(f, tree)
    assert message in str(err.value)


# -- rng ----------------------------------------------------------------------------------------

def draw(gen):
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(), np.random.randn(3).tolist(),
            [random.random() for _ in range(4)], random.gauss(0, 1),
            torch.rand(4, generator=gen).tolist())


def test_rng_capture_restore_in_memory():
    gen = torch.Generator().manual_seed(123)
    np.random.randn(1)  # leave a cached gaussian in numpy's state
    state = capture_rng_state({"noise": gen})
    first = draw(gen)
    restore_rng_state(state, {"noise": gen})
    assert draw(gen) == first


def test_rng_state_survives_a_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(7)
    random.gauss(0, 1)  # Python caches the second gaussian: gauss_next is a float now
    save_checkpoint(tmp_path / "c.h5", {"rng": capture_rng_state({"noise": gen})}, kind="training")
    first = draw(gen)
    state = load_checkpoint(tmp_path / "c.h5").payload["rng"]
    restore_rng_state(state, {"noise": gen})
    assert draw(gen) == first


def test_rng_restore_names_a_missing_generator():
    state = capture_rng_state({"noise": torch.Generator()})
    with pytest.raises(CheckpointError, match='no generator "dropout" to restore; saved '
                                              'generators: "noise"'):
        restore_rng_state(state, {"dropout": torch.Generator()})


# -- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    payload = sample_payload()
    path = save_checkpoint(tmp_path / "ck.h5", payload, kind="training", config_text="[net]\nn=5\n",
                           attrs={"run": "demo", "seed": 3, "tags": ["a", "b"], "note": None})
    ck = load_checkpoint(path, kind="training")
    assert ck.path == path and ck.kind == "training"
    assert_identical(payload, ck.payload, "payload")
    assert ck.config_text == "[net]\nn=5\n"
    assert ck.attrs["format"] == CHECKPOINT_FORMAT
    assert ck.attrs["format_version"] == CHECKPOINT_FORMAT_VERSION
    assert ck.attrs["neurosim_version"] == neurosim.__version__
    assert ck.attrs["run"] == "demo" and ck.attrs["seed"] == 3
    assert ck.attrs["tags"] == ["a", "b"] and ck.attrs["note"] is None
    assert ck.attrs["complete"] is True and "T" in ck.attrs["created"]
    with h5py.File(path, "r") as f:
        assert list(f.attrs)[-1] == "complete"  # written last
    assert not list(tmp_path.glob(".*tmp*"))


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "ck.h5"
    save_checkpoint(path, sample_payload(), kind="training")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint .*ck.h5: state/x: cannot "
                                              r"store a set.*previous checkpoint there is "
                                              r"unchanged"):
        save_checkpoint(path, {"network": {"w": torch.ones(3)}, "state": {"x": {1}}},
                        kind="training")
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_h5_cleans_up_on_exception(tmp_path, exc):
    path = tmp_path / "f.h5"
    path.write_bytes(b"old contents")
    with pytest.raises(exc):
        with atomic_h5(path) as f:
            f["x"] = np.arange(10)
            assert Path(f.filename).name == f".f.h5.tmp-{os.getpid()}"
            raise exc()
    assert path.read_bytes() == b"old contents"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_h5_replaces_file(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"old")
    with atomic_h5(path) as f:
        f["x"] = np.arange(3)
    with h5py.File(path, "r") as f:
        assert f["x"][()].tolist() == [0, 1, 2]


@pytest.mark.parametrize("arg, message", [
    ({"kind": ""}, "kind must be a non-empty str"),
    ({"attrs": {"format": "x"}}, "attrs ['format'] are reserved"),
    ({"payload": {"config_text": "x"}}, 'payload key "config_text" is reserved'),
])
def test_save_checkpoint_argument_errors(tmp_path, arg, message):
    kw = {"payload": {}, "kind": "training", **arg}
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path / "c.h5", **kw)
    assert message in str(err.value)


def test_save_checkpoint_into_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; create it first"):
        save_checkpoint(tmp_path / "nope" / "c.h5", {}, kind="training")


def _edit_attrs(path, **attrs):
    with h5py.File(path, "r+") as f:
        for k, v in attrs.items():
            if v is None:
                del f.attrs[k]
            else:
                f.attrs[k] = v


def test_load_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*missing.h5 does not exist"):
        load_checkpoint(tmp_path / "missing.h5")


def test_load_non_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    # a lone file: no "use an earlier checkpoint" when there is none (a run directory's
    # kept ones are named: tests/test_resume_recovery.py)
    assert (f"{path} is truncated or not an HDF5 file (a write may have been interrupted); no "
            f"earlier checkpoint is kept next to it") in str(err.value)
    assert isinstance(err.value, DamagedCheckpointError)
    assert err.value.reason == "truncated or not an HDF5 file"


def test_load_truncated_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path / "good.h5", {"w": torch.randn(20000)}, kind="simulation")
    data = good.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert f"{bad} is truncated or not an HDF5 file (a write may have been interrupted)" \
        in str(err.value)
    assert isinstance(err.value, NeurosimError)


def test_load_plain_hdf5_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match=r"is an HDF5 file but not a neurosim checkpoint "
                                              r"\(root attribute 'format' is None"):
        load_checkpoint(path)


def test_load_recording_as_checkpoint(tmp_path):
    path = tmp_path / "rec.h5"
    Recorder(path).close()
    with pytest.raises(CheckpointError, match=r"rec.h5 is a neurosim recording, not a "
                                              r"checkpoint; pass a checkpoint file here"):
        load_checkpoint(path, kind="training")


@pytest.mark.parametrize("version, message", [
    (CHECKPOINT_FORMAT_VERSION + 1, r"has checkpoint format version 2 \(written by neurosim "
                                    r"9\.9\), newer than version 1 that this neurosim "
                                    r"\S+ reads; upgrade neurosim"),
    (0, r"has the older checkpoint format version 0 \(written by neurosim 9\.9\); this "
        r"neurosim \S+ reads only version 1"),
])
def test_load_wrong_format_version(tmp_path, version, message):
    path = save_checkpoint(tmp_path / "c.h5", {}, kind="training")
    _edit_attrs(path, format_version=version, neurosim_version="9.9")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("complete", [None, False])
def test_load_incomplete_checkpoint(tmp_path, complete):
    path = save_checkpoint(tmp_path / "c.h5", {}, kind="training")
    _edit_attrs(path, complete=complete)
    with pytest.raises(DamagedCheckpointError, match=r"is incomplete \(root attribute "
                       r"'complete' is missing or false\).*No earlier checkpoint is kept") as err:
        load_checkpoint(path)
    assert err.value.reason == "incomplete"


def test_load_wrong_kind(tmp_path):
    path = save_checkpoint(tmp_path / "c.h5", {}, kind="simulation")
    with pytest.raises(CheckpointError, match="is a 'simulation' checkpoint, but a 'training' "
                                              "checkpoint is expected here"):
        load_checkpoint(path, kind="training")


def test_killed_save_leaves_previous_checkpoint_intact(tmp_path):
    """SIGKILL a writer half-way through a ~40 MB checkpoint: the old one must survive."""
    path = tmp_path / "ck.h5"
    save_checkpoint(path, sample_payload(), kind="training")
    before = path.read_bytes()
    proc = run_python(f"""
        import sys, time
        from collections.abc import Mapping
        import numpy as np
        from neurosim.io import save_checkpoint

        class SlowPayload(Mapping):  # writes 40 datasets of 1 MB, then hangs mid-write
            def __len__(self): return 80
            def __getitem__(self, k): return np.full(125_000, float(k[1:]))
            def __iter__(self):
                for i in range(80):
                    if i == 40:
                        print("halfway", flush=True)
                        time.sleep(60)
                    yield f"d{{i}}"

        save_checkpoint({str(path)!r}, {{"state": SlowPayload()}}, kind="training")
    """)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "halfway", proc.stderr.read()
        tmp = tmp_path / f".ck.h5.tmp-{proc.pid}"
        assert tmp.exists() and tmp.stat().st_size > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert_identical(sample_payload(), load_checkpoint(path, kind="training").payload)
    with pytest.raises(CheckpointError):  # the orphaned temp file is never a valid checkpoint
        load_checkpoint(tmp)


def test_describe_h5_lists_groups_datasets_and_attrs(tmp_path):
    path = save_checkpoint(tmp_path / "c.h5", sample_payload(), kind="training",
                           config_text="x = 1", attrs={"long": "y" * 500})
    text = describe_h5(path)
    assert text.splitlines()[0].startswith(f"{path}  @format='neurosim-checkpoint'")
    assert "@kind='training'" in text and "@complete=True" in text
    assert "  network/" in text
    assert "    w  tensor float32 (5, 3)\n" in text
    assert "    step  = 1234\n" in text and "    loss  = [0.5, 0.25, NaN]\n" in text
    assert "config_text  str 'x = 1'" in text
    assert "y" * 100 not in text and "..." in text  # long attrs are abbreviated
    with pytest.raises(NeurosimError, match="does not exist"):
        describe_h5(tmp_path / "nope.h5")


# -- recordings ---------------------------------------------------------------------------------

SOMA_U = MonitorSpec("exc", "soma", "u", indices=(0, 2, 4), every=1, units="mV")


def test_recorder_streams_chunks_before_close(tmp_path):
    path = tmp_path / "rec.h5"
    rec = Recorder(path, chunk_size=4, attrs={"dt": 0.1, "solver": "euler", "model": "pc"},
                   config_text="[model]")
    rec.add("u", SOMA_U, (2, 3), torch.float32, {"note": "membrane"})
    values = [torch.full((2, 3), float(i)) for i in range(10)]
    for i, v in enumerate(values):
        rec.append("u", v, t=0.1 * i)
    assert rec.chunks_written == 2
    # Another process sees the first 8 records on disk while the writer is still open.
    proc = run_python(f"""
        import h5py
        with h5py.File({str(path)!r}, "r", locking=False) as f:
            ds = f["recordings/exc/soma/u"]
            print(ds.shape[0], f["time/every_1"].shape[0], ds[7, 0, 0], bool(f.attrs["complete"]))
    """)
    out, err = proc.communicate(timeout=30)
    assert out.split() == ["8", "8", "7.0", "False"], err
    with open_recording(path) as live:  # the reader API works while writing, too
        assert not live.complete and live.read("exc/soma/u").values.shape == (8, 2, 3)
    rec.close()
    assert rec.chunks_written == 3 and rec.closed

    with open_recording(path) as f:
        assert f.complete and f.variables() == ["exc/soma/u"]
        assert f.attrs["dt"] == 0.1 and f.attrs["solver"] == "euler"
        assert f.config_text == "[model]"
        r = f.read("exc/soma/u")
        np.testing.assert_array_equal(r.values, torch.stack(values).numpy())
        np.testing.assert_array_equal(r.time, [0.1 * i for i in range(10)])
        assert r.attrs["units"] == "mV" and r.attrs["every"] == 1
        assert r.attrs["indices"] == (0, 2, 4) and r.attrs["axes"] == "time, batch, neuron"
        assert r.attrs["note"] == "membrane" and r.attrs["time"] == "/time/every_1"
        t = f.read("exc/soma/u", as_tensor=True).values
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    with h5py.File(path, "r") as f:  # plain HDF5 view: chunked, resizable, dimension scale
        ds = f["recordings/exc/soma/u"]
        assert ds.chunks == (4, 2, 3) and ds.maxshape == (None, 2, 3)
        assert ds.dims[0][0].name == "/time/every_1"
        assert [d.label for d in ds.dims] == ["time", "batch", "neuron"]


def test_recorder_memory_is_bounded(tmp_path):
    with Recorder(tmp_path / "rec.h5", chunk_size=16) as rec:
        rec.add("u", SOMA_U, (100,))
        rec.append("u", torch.zeros(100), 0.0)
        size = rec.buffer_nbytes
        assert size == 16 * 100 * 4 + 16 * 8
        for i in range(1, 2000):
            rec.append("u", torch.full((100,), float(i)), float(i))
        assert rec.buffer_nbytes == size
        assert rec.chunks_written == 2000 // 16
    with open_recording(tmp_path / "rec.h5") as f:
        r = f.read("exc/soma/u")
        assert r.values.shape == (2000, 100) and r.values[-1, 0] == 1999 and r.time[-1] == 1999


def test_recording_survives_a_killed_writer(tmp_path):
    path = tmp_path / "rec.h5"
    proc = run_python(f"""
        import os, signal, torch
        from neurosim.io import MonitorSpec, Recorder
        rec = Recorder({str(path)!r}, chunk_size=4)
        rec.add("u", MonitorSpec("exc", "soma", "u"), (3,))
        for i in range(10):
            rec.append("u", torch.full((3,), float(i)), t=float(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    with open_recording(path) as f:
        assert not f.complete
        r = f.read("exc/soma/u")
        assert r.values[:, 0].tolist() == list(range(8)) and r.time.tolist() == list(range(8))


def test_recorder_shared_time_axes_and_dtypes(tmp_path):
    path = tmp_path / "rec.h5"
    with Recorder(path, chunk_size=3) as rec:
        rec.add("u", MonitorSpec("exc", "soma", "u", every=2), (4,))
        rec.add("v", MonitorSpec("exc", "apical", "v", every=2), (4,), torch.bfloat16)
        rec.add("spk", MonitorSpec("inh", "soma", "r", every=5), (2,), torch.bool)
        for step in range(20):
            t = step * 0.5
            if step % 2 == 0:
                rec.append("u", torch.full((4,), t), t)
                rec.append("v", torch.full((4,), t, dtype=torch.bfloat16), t)
            if step % 5 == 0:
                rec.append("spk", torch.tensor([True, step % 10 == 0]), t)
    with open_recording(path) as f:
        assert sorted(f.variables()) == ["exc/apical/v", "exc/soma/u", "inh/soma/r"]
        u, v = f.read("exc/soma/u"), f.read("exc/apical/v", as_tensor=True)
        np.testing.assert_array_equal(u.time, np.arange(0, 10, 1.0))
        np.testing.assert_array_equal(v.time, u.time)
        assert v.values.dtype == torch.bfloat16 and v.values[-1, 0].item() == 9.0
        spk = f.read("inh/soma/r")
        assert spk.values.dtype == np.bool_ and spk.values[:, 1].tolist() == [True, False] * 2
        np.testing.assert_array_equal(spk.time, [0, 2.5, 5, 7.5])
    with h5py.File(path, "r") as f:
        assert f["recordings/exc/soma/u"].dims[0][0] == f["recordings/exc/apical/v"].dims[0][0]
    assert "every_5  float64 (4,)" in describe_h5(path)


def test_recorder_exception_keeps_data_but_marks_incomplete(tmp_path):
    path = tmp_path / "rec.h5"
    with pytest.raises(ValueError):
        with Recorder(path, chunk_size=8) as rec:
            rec.add("u", SOMA_U, (3,))
            for i in range(5):
                rec.append("u", torch.ones(3) * i, float(i))
            raise ValueError("diverged")
    with open_recording(path) as f:
        assert not f.complete and f.attrs["aborted"] == "ValueError: diverged"
        assert f.read("exc/soma/u").values.shape == (5, 3)


def test_recorder_errors(tmp_path):
    path = tmp_path / "rec.h5"
    with Recorder(path, chunk_size=4) as rec:
        rec.add("soma_u", SOMA_U, (3,))
        rec.add("basal_u", MonitorSpec("exc", "basal", "u"), (3,))
        with pytest.raises(RecordingError, match='already records exc/soma/u'):
            rec.add("again", SOMA_U, (3,))
        with pytest.raises(RecordingError, match='no monitor "soma_v". Did you mean "soma_u"?'):
            rec.append("soma_v", torch.zeros(3), 0.0)
        with pytest.raises(RecordingError, match=r'"soma_u" records shape \(3,\), got values of '
                                                 r'shape \(4,\)'):
            rec.append("soma_u", torch.zeros(4), 0.0)
        rec.append("soma_u", torch.zeros(3), 0.0)
        with pytest.raises(RecordingError, match="must be appended at the same times"):
            rec.append("basal_u", torch.zeros(3), 0.5)
        with pytest.raises(RecordingError, match=r"add all monitors before the first append"):
            rec.add("late", MonitorSpec("exc", "soma", "r"), (3,))
    with pytest.raises(RecordingError, match="is closed"):
        rec.append("soma_u", torch.zeros(3), 1.0)
    with pytest.raises(RecordingError, match="already exists; choose another path or pass "
                                             "overwrite=True"):
        Recorder(path)
    Recorder(path, overwrite=True).close()
    with pytest.raises(RecordingError, match=r"attrs \['complete'\] are reserved"):
        Recorder(tmp_path / "r2.h5", attrs={"complete": 1})
    with pytest.raises(RecordingError, match="every must be an int >= 1"):
        MonitorSpec("exc", "soma", "u", every=0)
    with pytest.raises(RecordingError, match="population must be a non-empty str without '/'"):
        MonitorSpec("a/b", "soma", "u")


def test_open_recording_errors(tmp_path):
    path = tmp_path / "rec.h5"
    with Recorder(path) as rec:
        rec.add("u", SOMA_U, (3,))
        rec.add("r", MonitorSpec("exc", "soma", "r"), (3,))
    with open_recording(path) as f, pytest.raises(RecordingError) as err:
        f.read("exc/soma/uu")
    assert 'no recorded variable "exc/soma/uu". Did you mean "exc/soma/u"?' in str(err.value)
    assert "Recorded: exc/soma/u, exc/soma/r" in str(err.value)
    with pytest.raises(RecordingError, match=r"recording .*nope.h5 does not exist"):
        open_recording(tmp_path / "nope.h5")
    ck = save_checkpoint(tmp_path / "c.h5", {}, kind="training")
    with pytest.raises(RecordingError, match="is a neurosim checkpoint, not a recording"):
        open_recording(ck)
    (tmp_path / "junk.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(RecordingError, match="is truncated or not an HDF5 file"):
        open_recording(tmp_path / "junk.h5")


def test_monitor_spec_due_and_key():
    spec = MonitorSpec("exc", "basal", "v", indices=[1, 2], every=3)
    assert spec.key == "exc/basal/v" and spec.indices == (1, 2)
    assert [s for s in range(10) if spec.due(s)] == [0, 3, 6, 9]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recorder_buffers_on_the_values_device(tmp_path):
    with Recorder(tmp_path / "rec.h5", chunk_size=4) as rec:
        rec.add("u", SOMA_U, (3,))
        for i in range(6):
            rec.append("u", torch.full((3,), float(i), device="cuda"), float(i))
        assert rec._monitors["u"].buffer.device.type == "cuda"
    with open_recording(tmp_path / "rec.h5") as f:
        assert f.read("exc/soma/u").values[:, 0].tolist() == list(range(6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_capture_restore_cuda():
    state = capture_rng_state()
    assert set(state["cuda"]) == {str(i) for i in range(torch.cuda.device_count())}
    first = torch.rand(4, device="cuda").tolist()
    restore_rng_state(state)
    assert torch.rand(4, device="cuda").tolist() == first


def test_annotate_rewrites_changed_attrs_only(tmp_path):
    """Every run of a simulation annotates its recording again: unchanged values are not
    rewritten, while changed ones are, tensors and arrays changed in place included."""
    from neurosim.io import Recorder
    from neurosim.io.attrs import read_attrs
    with Recorder(tmp_path / "a.h5", attrs={"w": torch.tensor([1.0, 2.0]), "n": 3}) as rec:
        rec.annotate({"w": torch.tensor([1.0, 2.0]), "n": 3})        # the same: no error
        values = np.array([1.0, 2.0])
        rec.annotate({"a": values})
        values[0] = 9.0                                                # changed in place
        rec.annotate({"a": values, "n": 4, "s": torch.tensor(1.0)})
        rec.annotate({"s": torch.tensor(1, dtype=torch.int64)})       # equal, another dtype
        stored = read_attrs(rec._file)
    np.testing.assert_array_equal(stored["a"], [9.0, 2.0])
    assert stored["n"] == 4
    assert np.asarray(stored["s"]).dtype == np.int64
    np.testing.assert_array_equal(stored["w"], [1.0, 2.0])
