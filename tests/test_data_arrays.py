"""Tests of user array files (.npz, HDF5), the [data] table entry point and the validation
split. Everything runs on small synthetic files in tmp_path."""
from __future__ import annotations

import subprocess
import sys
import types

import h5py
import numpy as np
import pytest
import torch

from neurosim.data import (DataError, dataset_from_spec, load_array_file,
                           validation_split)
from neurosim.data import loading
from neurosim.errors import ConfigError

RNG = np.random.default_rng(0)
TRAIN_X = RNG.random((12, 5))
TRAIN_Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
TEST_X = RNG.random((4, 5))
TEST_Y = np.array([3, 0, 1, 2])          # the highest class only in the test set


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def write_h5(path, **arrays):
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array)
    return path


WRITERS = {"npz": write_npz, "h5": write_h5, "hdf5": write_h5}


@pytest.fixture(params=sorted(WRITERS))
def save(request, tmp_path):
    """save(**arrays) -> a file of the parametrised format holding ``arrays``."""
    suffix = request.param
    return lambda **arrays: WRITERS[suffix](tmp_path / f"data.{suffix}", **arrays)


# ---------------------------------------------------------------- round trips

def test_labeled_with_test_set(save):
    path = save(train_x=TRAIN_X, train_y=TRAIN_Y, test_x=TEST_X, test_y=TEST_Y)
    d = load_array_file(path)
    assert torch.equal(d.train_x, torch.from_numpy(TRAIN_X).float())
    assert torch.equal(d.test_x, torch.from_numpy(TEST_X).float())
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == TRAIN_Y.tolist() and d.test_y.tolist() == TEST_Y.tolist()
    assert d.n_classes == 4 and d.input_shape == (5,) and d.normalization == "none"
    assert d.name == str(path)


def test_unlabeled_without_test_set(save):
    d = load_array_file(save(train_x=TRAIN_X), dtype=torch.float64)
    assert torch.equal(d.train_x, torch.from_numpy(TRAIN_X))
    assert d.train_y is d.test_x is d.test_y is d.n_classes is None
    text = repr(d)
    assert "train=(12, 5)" in text and "test=None" in text and "n_classes=None" in text
    moved = d.to(torch.float32, "cpu")
    assert moved.train_x.dtype == torch.float32 and moved.test_x is None


def test_unlabeled_with_test_set_and_labeled_without(save):
    d = load_array_file(save(train_x=TRAIN_X, test_x=TEST_X))
    assert d.test_x.shape == (4, 5) and d.train_y is None and d.test_y is None
    d = load_array_file(save(train_x=TRAIN_X, train_y=TRAIN_Y))
    assert d.test_x is None and d.test_y is None and d.n_classes == 3
    assert d.to(torch.float64).train_y.dtype == torch.int64


def test_inputs_are_flattened_and_converted(save):
    images = RNG.integers(0, 256, (6, 1, 3, 3)).astype(np.uint16)
    labels = np.array([0, 1, 0, 1, 0, 1], dtype=np.uint8)
    path = save(train_x=images, train_y=labels, test_x=images.reshape(6, 9).astype(">f8"),
                test_y=labels.astype(np.int32))
    d = load_array_file(path, dtype=torch.float64)
    assert d.train_x.shape == (6, 9) and d.input_shape == (1, 3, 3)
    assert torch.equal(d.train_x, d.test_x) and d.train_x.dtype == torch.float64
    assert d.train_y.dtype == d.test_y.dtype == torch.int64 and d.n_classes == 2
    assert load_array_file(save(train_x=images > 100)).train_x.max() == 1


# ---------------------------------------------------------------- content errors

X = TRAIN_X
Y = TRAIN_Y
NAN = X.copy()
NAN[3, 2] = np.nan
INF = TEST_X.copy()
INF[1, 0] = -np.inf

CONTENT_ERRORS = [
    (dict(train_x=NAN), r"train_x holds 1 non-finite values \(NaN or infinity\), the first "
                        r"in row 3"),
    (dict(train_x=X, test_x=INF), "test_x holds 1 non-finite values.*row 1"),
    (dict(train_x=X, train_y=Y[:9]), "train_y has 9 labels but train_x has 12 rows"),
    (dict(train_x=X, train_y=Y, test_x=TEST_X, test_y=TEST_Y[:3]),
     "test_y has 3 labels but test_x has 4 rows"),
    (dict(train_x=X, train_y=Y.astype(float)), "train_y has dtype float64; labels must be "
                                               "integer class indices"),
    (dict(train_x=X, train_y=Y > 0), "train_y has dtype bool; labels must be integer"),
    (dict(train_x=X, train_y=Y - 1), r"train_y holds label -1 \(row 0\); labels must be "
                                     r"class indices 0..C-1"),
    (dict(train_x=X, train_y=np.eye(3, dtype=int)[Y]), r"train_y has shape \(12, 3\); labels "
                                                       r"must be 1-D.*argmax"),
    (dict(train_x=X, train_y=Y, test_x=TEST_X[:, :4], test_y=TEST_Y),
     r"test_x has 4 features per row \(shape \(4, 4\)\) but train_x has 5"),
    (dict(train_x=X, train_y=Y, test_y=TEST_Y), "test_y is given without test_x"),
    (dict(train_x=X, test_x=TEST_X, test_y=TEST_Y), "test_y is given without train_y"),
    (dict(train_x=X, train_y=Y, test_x=TEST_X), "train_y is given but test_y is not"),
    (dict(X=X, y=Y), r"no array named train_x \(the file holds X, y\)"),
    (dict(train_x=X, test_X=TEST_X), 'array "test_X" looks like test_x but is not named so; '
                                     "rename it to test_x"),
    (dict(X_train=X, y_train=Y), 'array "X_train" looks like train_x'),
    (dict(train_x=X[:, 0]), r"train_x has shape \(12,\); inputs must be \(samples, features\)"),
    (dict(train_x=X[:0]), r"train_x is empty \(shape \(0, 5\)\)"),
    (dict(train_x=np.array([[b"a", b"b"]])), r"train_x has dtype \|S1; inputs must be numbers"),
    (dict(train_x=X * 1e6), "train_x has values too large for torch.float16"),
]


@pytest.mark.parametrize("arrays, message", CONTENT_ERRORS)
def test_content_errors_name_the_file_and_array(save, arrays, message):
    path = save(**arrays)
    dtype = torch.float16 if "float16" in message else torch.float32
    with pytest.raises(DataError, match=message) as info:
        load_array_file(path, dtype=dtype, where="m.toml [data]")
    assert str(info.value).startswith(f"m.toml [data]: {path}: ")


def test_extra_arrays_are_ignored(save):
    d = load_array_file(save(train_x=X, train_x_mean=X.mean(0), description_of_data=np.arange(3)))
    assert d.train_x.shape == (12, 5) and d.train_y is None


# ---------------------------------------------------------------- file errors

def test_object_arrays_are_refused(tmp_path):
    path = write_npz(tmp_path / "o.npz", train_x=np.array([[1, "a", None]], dtype=object))
    with pytest.raises(DataError, match="train_x holds Python objects.*not loaded because "
                                        "unpickling can run code"):
        load_array_file(path)


def test_corrupt_and_foreign_npz(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, train_x=RNG.random((50, 20)))
    data = bytearray(good.read_bytes())
    (tmp_path / "short.npz").write_bytes(data[: len(data) // 2])
    data[200:260] = bytes(60)
    (tmp_path / "member.npz").write_bytes(data)
    (tmp_path / "text.npz").write_text("train_x = 1, 2, 3")
    np.save(tmp_path / "single.npy", X)
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    for name, message in [("short", "not a readable .npz archive.*damaged"),
                          ("member", "cannot read train_x .*the file is damaged"),
                          ("text", "not a readable .npz archive"),
                          ("single", r"holds a single unnamed array \(.npy format\)")]:
        with pytest.raises(DataError, match=message):
            load_array_file(tmp_path / f"{name}.npz")


def test_corrupt_and_odd_hdf5(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 20)
    good = write_h5(tmp_path / "good.h5", train_x=X)
    (tmp_path / "short.h5").write_bytes(good.read_bytes()[:1000])
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("train_x").create_dataset("data", data=X)
    for name, message in [("junk", "not a readable HDF5 file"),
                          ("short", "not a readable HDF5 file.*damaged"),
                          ("group", "train_x is a group, not an array")]:
        with pytest.raises(DataError, match=message):
            load_array_file(tmp_path / f"{name}.h5")


def test_path_and_argument_errors(tmp_path):
    write_npz(tmp_path / "d.npz", train_x=X)
    (tmp_path / "d.csv").write_text("1,2\n")
    (tmp_path / "dir.npz").mkdir()
    for path, message in [(tmp_path / "absent.npz", "no such file"),
                          (tmp_path / "dir.npz", "not a file"),
                          (tmp_path / "d.csv", 'unsupported file type ".csv"')]:
        with pytest.raises(DataError, match=message):
            load_array_file(path)
    with pytest.raises(DataError, match="floating torch dtype"):
        load_array_file(tmp_path / "d.npz", dtype=torch.int64)


# ---------------------------------------------------------------- the [data] table

def test_spec_with_a_path_resolves_against_base_dir_then_cwd(tmp_path, monkeypatch):
    models, work = tmp_path / "models", tmp_path / "work"
    models.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    write_npz(models / "d.npz", train_x=X[:3])
    write_npz(work / "d.npz", train_x=X)
    write_npz(work / "only_here.npz", train_x=X[:7])
    spec = {"path": "d.npz", "validation": 0.2}
    assert len(dataset_from_spec(spec, where="w", base_dir=models).train_x) == 3
    assert len(dataset_from_spec(spec, where="w").train_x) == 12
    found = dataset_from_spec({"path": "only_here.npz"}, where="w", base_dir=models)
    assert found.name == str(work / "only_here.npz") and len(found.train_x) == 7
    absolute = dataset_from_spec({"path": str(models / "d.npz")}, where="w", base_dir=work)
    assert len(absolute.train_x) == 3
    mapping = types.MappingProxyType({"path": "d.npz"})
    assert dataset_from_spec(mapping, where="w", dtype=torch.float64).train_x.dtype == \
        torch.float64
    with pytest.raises(DataError, match=f'm.toml \\[data\\]: path = "nope.npz" not found '
                                        f"\\(looked for {models / 'nope.npz'} and "
                                        f"{work / 'nope.npz'}\\)"):
        dataset_from_spec({"path": "nope.npz"}, where="m.toml [data]", base_dir=models)
    write_npz(work / "bad.npz", train_x=NAN)
    with pytest.raises(DataError, match=r"^w: .*bad.npz: train_x holds 1 non-finite"):
        dataset_from_spec({"path": "bad.npz"}, where="w")


def test_spec_with_a_dataset_name_passes_root_and_normalization(monkeypatch):
    calls = []

    def fake(name, root=None, dtype=torch.float32, normalization="default"):
        calls.append((name, root, dtype, normalization))
        if name == "missing":
            raise DataError("MNIST not found. Run `neurosim data fetch mnist`.")
        return "loaded"

    monkeypatch.setattr(loading, "load_dataset", fake)
    spec = {"dataset": "mnist", "root": "/data", "normalization": "unit", "validation": 100}
    assert dataset_from_spec(spec, where="w", dtype=torch.float64) == "loaded"
    assert dataset_from_spec({"dataset": "digits"}, where="w") == "loaded"
    assert calls == [("mnist", "/data", torch.float64, "unit"),
                     ("digits", None, torch.float32, "default")]
    with pytest.raises(DataError, match=r"^m.toml \[data\]: MNIST not found"):
        dataset_from_spec({"dataset": "missing"}, where="m.toml [data]")


def test_spec_of_a_real_named_dataset():
    with pytest.raises(DataError, match=r'^w: Unknown dataset "mnsit". Did you mean "mnist"'):
        dataset_from_spec({"dataset": "mnsit"}, where="w")


@pytest.mark.parametrize("spec, message", [
    ({"pth": "d.npz"}, 'w: unknown key "pth". Did you mean "path"?'),
    ({"dataset": "digits", "normalisation": "unit"}, 'Did you mean "normalization"?'),
    ({"dataset": "digits", "path": "d.npz"}, "give exactly one of dataset.*both are given"),
    ({"validation": 0.1}, "give exactly one of dataset.*neither is given"),
    ({"path": "d.npz", "root": "/data"}, "root only applies to named datasets"),
    ({"path": "d.npz", "normalization": "unit"}, "normalization only applies to named"),
    ({"path": 3}, "path must be a non-empty string, got int 3"),
    ({"path": ""}, "path must be a non-empty string"),
    ({"dataset": ["mnist"]}, "dataset must be a non-empty string, got list"),
    ({"dataset": "mnist", "root": 1}, "root must be a non-empty string"),
    (["path", "d.npz"], "w: expected a table, got list"),
])
def test_spec_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        dataset_from_spec(spec, where="w")


# ---------------------------------------------------------------- validation split

@pytest.mark.parametrize("n, size, count", [
    (10, 0.3, 3), (10, 3, 3), (10, np.int64(9), 9), (7, 0.5, 4), (1000, 0.1, 100),
    (2, 1, 1), (2, 0.5, 1), (100, np.float32(0.25), 25)])
def test_split_sizes_and_properties(n, size, count):
    train, val = validation_split(n, size, seed=3)
    assert train.dtype == val.dtype == torch.int64
    assert len(val) == count and len(train) == n - count
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(n))
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)


def test_split_is_seeded_and_leaves_other_streams_alone():
    first = validation_split(100, 0.2, seed=7)
    again = validation_split(100, 0.2, seed=7)
    other = validation_split(100, 0.2, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    validation_split(100, 0.2, seed=7)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(validation_split(100, 20, seed=7)[1], first[1])
    assert len(validation_split(10, 0.5, seed=2**64 - 1)[1]) == 5


def test_split_is_the_same_in_another_process():
    code = ("from neurosim.data import validation_split; "
            "print(validation_split(50, 0.3, seed=11)[1].tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(validation_split(50, 0.3, seed=11)[1].tolist())


@pytest.mark.parametrize("n, size, seed, message", [
    (10, True, 0, "got bool True"),
    (10, 0, 0, "a validation count must be in 1..9 for 10 samples, got 0"),
    (10, -2, 0, "count must be in 1..9 for 10 samples, got -2"),
    (10, 10, 0, "count must be in 1..9"),
    (10, 1.0, 0, "a validation fraction must lie strictly between 0 and 1, got 1.0"),
    (10, 0.0, 0, "fraction must lie strictly between 0 and 1"),
    (10, -0.1, 0, "fraction must lie strictly between 0 and 1"),
    (10, float("nan"), 0, "fraction must lie strictly between 0 and 1, got nan"),
    (10, 2.5, 0, "for a count of samples use an integer in 1..9"),
    (10, 0.01, 0, "a fraction of 0.01 of 10 samples leaves 0 for validation"),
    (10, 0.99, 0, "leaves 10 for validation and 0 for training"),
    (10, "0.1", 0, "got str '0.1'"),
    (10, None, 0, "got NoneType None"),
    (1, 0.5, 0, "1 sample\\(s\\) cannot be split"),
    (10.0, 0.5, 0, "number of samples must be an integer, got float"),
    (10, 0.5, True, "seed must be an integer in 0..2\\*\\*64-1, got bool"),
    (10, 0.5, -1, "seed must be an integer"),
    (10, 0.5, 2**64, "seed must be an integer"),
    (10, 0.5, 1.5, "seed must be an integer.*got float"),
])
def test_split_errors(n, size, seed, message):
    with pytest.raises(ConfigError, match=f"^m.toml \\[data\\] validation: .*{message}"):
        validation_split(n, size, seed, where="m.toml [data] validation")
    with pytest.raises(ConfigError, match=f"^(?!:).*{message}"):
        validation_split(n, size, seed)
