"""Tests of CIFAR-100 ("cifar100": 100 fine labels, "cifar100-coarse": 20 superclasses). They
never download: every test runs against synthetic files in tmp_path, pickled with the official
layout, with the network sources replaced; the full-data test uses the real archive or an
existing cache and is skipped where neither is present."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.cli import main
from neurosim.data import DataError, available_datasets, data_root, fetch_dataset, load_dataset
from neurosim.data import cifar, fetch, loading, registry
from neurosim.data.cli import cli_fetch, cli_list

REAL_ROOT = data_root()  # resolved before any test isolates $HOME and $NEUROSIM_DATA
REAL_ARCHIVE = Path(os.environ.get(
    "NEUROSIM_CIFAR100_ARCHIVE", REAL_ROOT / "test-assets" / "cifar-100-python.tar.gz"))
NAMES = ["train", "test"]
ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Hide the real cache and $NEUROSIM_DATA; make every network source fail the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEUROSIM_DATA", raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use a network source")

    for source in ("_npm_pack", "_apt_download", "_download"):
        monkeypatch.setattr(fetch, source, refuse)


# ---------------------------------------------------------------- helpers

def py2_pickle(obj) -> bytes:
    """Pickle dicts, strings, lists, ints (floats) and uint8 arrays the way the official CIFAR files
    were written (Python 2 cPickle, protocol 2, numpy 1.x): strings as BINSTRING, arrays
    through numpy.core.multiarray._reconstruct (as tests/test_data.py does)."""
    out = bytearray(b"\x80\x02")

    def string(s):
        s = s.encode("latin1") if isinstance(s, str) else bytes(s)
        out.extend(b"U" + bytes([len(s)]) if len(s) < 256 else b"T" + struct.pack("<I", len(s)))
        out.extend(s)

    def integer(i):
        out.extend(b"J" + struct.pack("<i", i))

    def put(o):
        if isinstance(o, (bytes, str)):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                put(v)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        else:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            integer(0)
            out.extend(b"\x85")
            string("b")
            out.extend(b"\x87R(")
            integer(1)
            out.extend(b"(")
            for n in o.shape:
                integer(n)
            out.extend(b"tcnumpy\ndtype\n")
            string("u1")
            integer(0)
            integer(1)
            out.extend(b"\x87R(")
            integer(3)
            string("|")
            out.extend(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.extend(b"tb\x89")
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")

    put(obj)
    out.extend(b".")
    return bytes(out)


def batch(images: np.ndarray, fine: list[int], coarse: list[int], name: str, **changes) -> bytes:
    """One file in the official layout (keys in the official order); ``changes`` replace or,
    with value None, remove keys."""
    content = {"filenames": [f"img_{i}.png" for i in range(len(images))],
               "batch_label": f"{name} batch 1 of 1", "fine_labels": fine,
               "coarse_labels": coarse, "data": images.reshape(len(images), 3072)}
    content.update(changes)
    return py2_pickle({k: v for k, v in content.items() if v is not None})


def cifar100_files(n_train: int = 12, n_test: int = 5) -> tuple[dict[str, bytes], dict]:
    """Fake train/test/meta files and their contents. Train image 0 has constant planes R=0,
    G=128, B=255; fine labels include 0 and 99, coarse 0 and 19 (fine // 5 here, not the
    official mapping)."""
    rng = np.random.default_rng(2)
    files, contents = {}, {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        fine[:2] = [0, 99]
        coarse = [f // 5 for f in fine]
        if name == "train":
            images[0] = np.array([0, 128, 255], dtype=np.uint8)[:, None, None]
        contents[name] = (images, fine, coarse)
        files[name] = batch(images, fine, coarse, name)
    files["meta"] = py2_pickle({"fine_label_names": [f"f{i}" for i in range(100)],
                                "coarse_label_names": [f"c{i}" for i in range(20)]})
    return files, contents


def make_tar(path: Path, files: dict[str, bytes], prefix: str = "cifar-100-python/") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"{prefix}{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def write_files(directory: Path, files: dict[str, bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def accept(monkeypatch, files: dict[str, bytes], archive: bytes | None = None):
    """Make the registry treat ``files`` (and ``archive``) as CIFAR-100's official ones, for
    both label sets: the same digests and algorithms, sizes of the given bytes."""
    for name in ("cifar100", "cifar100-coarse"):
        info = registry.DATASETS[name]
        specs = tuple(dataclasses.replace(s, digest=hashlib.new(s.algorithm, files[s.name])
                                          .hexdigest()) for s in info.files)
        changes = dict(files=specs)
        if archive is not None:
            changes["archive"] = dataclasses.replace(
                info.archive, digest=hashlib.new(info.archive.algorithm, archive).hexdigest(),
                size=len(archive))
        monkeypatch.setitem(registry.DATASETS, name, dataclasses.replace(info, **changes))


def archive_of(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, bytes]:
    path = make_tar(tmp_path / "src" / "cifar-100-python.tar.gz", files)
    return path, path.read_bytes()


# ---------------------------------------------------------------- registry

def test_registry_entries():
    fine, coarse = registry.get_info("cifar100"), registry.get_info("cifar100_coarse")
    assert registry.get_info("CIFAR-100") is fine
    assert registry.get_info("cifar-100-coarse") is coarse
    assert (fine.n_classes, fine.label_key, coarse.n_classes, coarse.label_key) == \
        (100, "fine_labels", 20, "coarse_labels")
    for info in (fine, coarse):
        assert info.kind == "cifar" and info.input_shape == (3, 32, 32)
        assert (info.n_train, info.n_test) == (50000, 10000)
        assert info.directory == "cifar100" and not info.standardize
        assert [s.name for s in info.files] == NAMES
        assert info.archive == registry.FileSpec(
            "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "md5", 169001437)
        assert info.urls == ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",)
    assert registry.get_info("cifar10").directory == "cifar10"


# ---------------------------------------------------------------- loading

def test_fetch_archive_then_load_fine_labels(tmp_path, monkeypatch):
    files, contents = cifar100_files()
    archive, archive_bytes = archive_of(tmp_path, files)
    accept(monkeypatch, files, archive_bytes)
    dest = fetch_dataset("cifar100", source_path=archive, root=tmp_path / "r", progress=False)
    assert dest == tmp_path / "r" / "cifar100"
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]   # no meta, no temp
    assert all((dest / n).read_bytes() == files[n] for n in NAMES)

    d = load_dataset("cifar100", root=tmp_path / "r")
    assert d.name == "cifar100" and d.n_classes == 100 and d.input_shape == (3, 32, 32)
    assert d.train_x.shape == (12, 3072) and d.test_x.shape == (5, 3072)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == contents["train"][1]
    assert d.test_y.tolist() == contents["test"][1]
    assert d.normalization == "default"
    for x, (images, _, _) in ((d.train_x, contents["train"]), (d.test_x, contents["test"])):
        assert 0 <= x.min() and x.max() <= 1
        assert torch.equal(x, torch.from_numpy(images.reshape(len(images), 3072)).float() / 255)
    first = d.train_x[0].view(3, 1024)                 # R=0, G=128, B=255, CHW order
    assert torch.equal(first, torch.tensor([0, 128 / 255, 1.0])[:, None].expand(3, 1024))
    unit = load_dataset("cifar100", root=tmp_path / "r", normalization="unit",
                        dtype=torch.float64)
    assert unit.train_x.dtype == torch.float64
    assert torch.allclose(unit.train_x.float(), d.train_x)


def test_coarse_labels_share_the_files(tmp_path, monkeypatch):
    files, contents = cifar100_files()
    accept(monkeypatch, files)
    write_files(tmp_path / "r" / "cifar100", {n: files[n] for n in NAMES})
    fine = load_dataset("cifar100", root=tmp_path / "r")
    coarse = load_dataset("cifar100_coarse", root=tmp_path / "r")
    assert coarse.name == "cifar100-coarse" and coarse.n_classes == 20
    assert coarse.train_y.tolist() == contents["train"][2]
    assert coarse.test_y.tolist() == contents["test"][2]
    assert coarse.train_y.max() == 19 and fine.train_y.max() == 99
    assert torch.equal(coarse.train_x, fine.train_x) and torch.equal(coarse.test_x, fine.test_x)
    # the coarse name fetches into the same directory
    src = write_files(tmp_path / "src" / "cifar-100-python", files)
    dest = fetch_dataset("cifar100-coarse", source_path=src, root=tmp_path / "r2",
                         progress=False)
    assert dest == tmp_path / "r2" / "cifar100"
    assert load_dataset("cifar100", root=tmp_path / "r2").train_y.tolist() == \
        contents["train"][1]


def test_dataset_from_spec_names_cifar100(tmp_path, monkeypatch):
    files, contents = cifar100_files()
    accept(monkeypatch, files)
    write_files(tmp_path / "r" / "cifar100", {n: files[n] for n in NAMES})
    d = loading.dataset_from_spec({"dataset": "cifar100_coarse", "root": str(tmp_path / "r"),
                                   "normalization": "unit"}, where="m.toml [data]")
    assert d.n_classes == 20 and d.test_y.tolist() == contents["test"][2]


# ---------------------------------------------------------------- refusing bad files

def test_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    info = registry.get_info("cifar100")

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = pickle.dumps({b"data": Exploit(), b"fine_labels": []}, protocol=4)
    with pytest.raises(DataError, match=r"train: refusing to load (posix|os)\.system") as err:
        cifar.read_batch(payload, "train", info)
    assert not marker.exists()
    assert "not an official batch" in str(err.value)
    assert "cifar-100-python.tar.gz" in str(err.value)
    with pytest.raises(DataError, match="refusing to load builtins.eval"):
        cifar.read_batch(pickle.dumps(eval, protocol=4), "test", info)
    # numpy 2 pickles name numpy._core, which no official file does
    with pytest.raises(DataError, match=r"refusing to load numpy\._core"):
        cifar.read_batch(pickle.dumps({"data": np.zeros((1, 3072), np.uint8)}, protocol=4),
                         "test", info)


def test_malformed_batches_are_refused(tmp_path):
    info = registry.get_info("cifar100")
    coarse = registry.get_info("cifar100-coarse")
    images = np.zeros((2, 3, 32, 32), np.uint8)
    good = batch(images, [1, 2], [0, 0], "test")
    assert cifar.read_batch(good, "test", info)[1].tolist() == [1, 2]
    cases = [
        (batch(images, [1, 100], [0, 0], "test"), info,
         "label 100 in 'fine_labels' is outside 0..99"),
        (batch(images, [1, -1], [0, 0], "test"), info, "label -1 in 'fine_labels'"),
        (batch(images, [1, 2], [0, 20], "test"), coarse,
         "label 20 in 'coarse_labels' is outside 0..19"),
        (batch(images, [1, 2], [0, 0], "test", fine_labels=None), info,
         "'fine_labels', a list of N ints"),
        (batch(images, [1, 2.0], [0, 0], "test"), info, "'fine_labels', a list of N ints"),
        (batch(images, [1, 2, 3], [0, 0], "test"), info, "not a CIFAR-100 batch"),
        (batch(images, [1, 2], [0, 0], "test", data=np.zeros((2, 3071), np.uint8)), info,
         "uint8 array (N, 3072)"),
        (py2_pickle({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]}), info,
         "not a CIFAR-100 batch"),                                   # a CIFAR-10 batch
        (good[:-3], info, "not a valid CIFAR-100 batch"),
    ]
    for data, which, message in cases:
        with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
            cifar.read_batch(data, "test", which)


def test_wrong_archive_is_refused_with_md5_and_size(tmp_path, monkeypatch):
    files, _ = cifar100_files()
    archive, archive_bytes = archive_of(tmp_path, files)
    with pytest.raises(DataError) as err:             # the real registry: size differs
        fetch_dataset("cifar100", source_path=archive, root=tmp_path / "r", progress=False)
    message = str(err.value)
    assert "Size mismatch for cifar-100-python.tar.gz" in message
    assert f"expected 169,001,437 bytes, got {len(archive_bytes):,}" in message
    assert str(archive) in message and "Download the official archive again" in message
    # right size, wrong content: the md5 is named
    info = registry.DATASETS["cifar100"]
    monkeypatch.setitem(registry.DATASETS, "cifar100", dataclasses.replace(
        info, archive=dataclasses.replace(info.archive, size=len(archive_bytes))))
    with pytest.raises(DataError) as err:
        fetch_dataset("cifar100", source_path=archive, root=tmp_path / "r", progress=False)
    message = str(err.value)
    assert "Checksum mismatch for cifar-100-python.tar.gz" in message
    assert "md5 eb9058c3a382ffc7106e4002c42a8d85" in message
    assert hashlib.md5(archive_bytes).hexdigest() in message
    assert not (tmp_path / "r" / "cifar100").exists()


def test_unofficial_extracted_files_are_refused(tmp_path):
    files, _ = cifar100_files()
    src = write_files(tmp_path / "src" / "cifar-100-python", files)
    with pytest.raises(DataError, match="Checksum mismatch for train") as err:
        fetch_dataset("cifar100", source_path=src, root=tmp_path / "r", progress=False)
    assert "md5 16019d7e3df5f24257cddd939b257f8d" in str(err.value)
    assert not (tmp_path / "r" / "cifar100").exists()


def test_missing_data_and_missing_file(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", root=tmp_path / "r")
    message = str(err.value)
    assert "CIFAR-100 not found in" in message and str(tmp_path / "r" / "cifar100") in message
    assert "cifar-100-python.tar.gz" in message and "extracted cifar-100-python/" in message
    assert "`neurosim data fetch cifar100 --from PATH`" in message
    with pytest.raises(DataError, match="`neurosim data fetch cifar100-coarse --from PATH`"):
        load_dataset("cifar100-coarse")

    files, _ = cifar100_files()
    accept(monkeypatch, files)
    write_files(tmp_path / "r" / "cifar100", {"train": files["train"]})
    with pytest.raises(DataError, match="lacks test"):
        load_dataset("cifar100", root=tmp_path / "r")
    src = write_files(tmp_path / "src", {"train": files["train"], "meta": files["meta"]})
    with pytest.raises(DataError, match=r"CIFAR-100: test not found in"):
        fetch_dataset("cifar100", source_path=src, root=tmp_path / "r2", progress=False)
    archive, archive_bytes = archive_of(tmp_path / "a", {"train": files["train"]})
    accept(monkeypatch, files, archive_bytes)
    with pytest.raises(DataError, match=r"CIFAR-100: test not found in"):
        fetch_dataset("cifar100", source_path=archive, root=tmp_path / "r2", progress=False)
    assert not (tmp_path / "r2" / "cifar100").exists()


# ---------------------------------------------------------------- CLI

def test_cli_fetch_from_archive_and_directory(tmp_path, monkeypatch, capsys):
    files, contents = cifar100_files()
    archive, archive_bytes = archive_of(tmp_path, files)
    accept(monkeypatch, files, archive_bytes)
    text = cli_fetch("cifar100", source=archive, root=tmp_path / "a")
    assert text == f"CIFAR-100: 2 verified files in {tmp_path / 'a' / 'cifar100'}"
    assert load_dataset("cifar100", root=tmp_path / "a").train_y.tolist() == \
        contents["train"][1]

    extracted = write_files(tmp_path / "x" / "cifar-100-python", files)
    for source, root in ((extracted, "b"), (extracted.parent, "c")):   # or one level up
        assert main(["data", "--root", str(tmp_path / root), "fetch", "cifar100",
                     "--from", str(source)]) == 0
        assert "2 verified files in" in capsys.readouterr().out
        assert load_dataset("cifar100-coarse", root=tmp_path / root).test_y.tolist() == \
            contents["test"][2]

    assert main(["data", "--root", str(tmp_path / "d"), "fetch", "cifar100", "--from",
                 str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err

    rows = {r["name"]: r for r in available_datasets(tmp_path / "a")}
    assert rows["cifar100"]["present"] and rows["cifar100-coarse"]["present"]
    assert rows["cifar100"]["location"] == str(tmp_path / "a" / "cifar100")
    assert "md5 verified" in rows["cifar100"]["detail"]
    table = cli_list(tmp_path / "e")
    assert "neurosim data fetch cifar100 --from PATH" in table
    assert "neurosim data fetch cifar100-coarse --from PATH" in table


# ---------------------------------------------------------------- model files

@pytest.mark.parametrize("model, pepita", [("pepita_cifar100_fc", None),
                                           ("bp_cifar100_fc", "pepita_cifar100_fc"),
                                           ("fa_cifar100_fc", "pepita_cifar100_fc")])
def test_model_files_build(model, pepita):
    """The CIFAR-100 model files build (no data needed): 3072-1024-100, the CIFAR-10 files'
    settings, and the baselines share PEPITA's graph, initial weights, data and run options."""
    from neurosim.training import Trainer

    trainer = Trainer.from_model_file(MODELS / f"{model}.toml", progress=False)
    assert [p.size for p in trainer.network.populations] == [3072, 1024, 100]
    assert trainer.protocol.name == {"pepita": "pepita", "bp": "backprop",
                                     "fa": "feedback_alignment"}[model.split("_")[0]]
    assert trainer.protocol.dropout == 0.1
    assert trainer._data["dataset"] == "cifar100"
    ten = Trainer.from_model_file(MODELS / f"{model.replace('cifar100', 'cifar10')}.toml",
                                  progress=False)
    mine, theirs = trainer.config.as_dict(), ten.config.as_dict()
    assert mine == theirs                    # epochs, batch, schedule, seed: as CIFAR-10
    assert mine["epochs"] == 100 and mine["batch_size"] == 64
    if pepita is None:
        return
    other = Trainer.from_model_file(MODELS / f"{pepita}.toml", progress=False)
    for name, w in other.net.weights.items():
        assert torch.equal(trainer.net.weights[name], w), name
    assert trainer._data == other._data
    mine, theirs = trainer.config.as_dict(), other.config.as_dict()
    mine.pop("metrics"), theirs.pop("metrics")      # PEPITA's angle_F needs its F
    assert mine == theirs


# ---------------------------------------------------------------- real data (if present)

def _real_root(tmp_path: Path) -> Path:
    if REAL_ARCHIVE.is_file():
        fetch_dataset("cifar100", source_path=REAL_ARCHIVE, root=tmp_path / "real",
                      progress=False)
        return tmp_path / "real"
    if all((REAL_ROOT / "cifar100" / n).is_file() for n in NAMES):
        return REAL_ROOT
    pytest.skip(f"the real CIFAR-100 is neither at {REAL_ARCHIVE} ($NEUROSIM_CIFAR100_ARCHIVE) "
                f"nor in {REAL_ROOT / 'cifar100'}; run `neurosim data fetch cifar100 --from "
                f"cifar-100-python.tar.gz`")


def test_real_cifar100(tmp_path):
    root = _real_root(tmp_path)
    fine = load_dataset("cifar100", root=root, normalization="unit")
    coarse = load_dataset("cifar100-coarse", root=root, normalization="unit")
    assert fine.train_x.shape == (50000, 3072) and fine.test_x.shape == (10000, 3072)
    assert fine.train_x.min() == 0 and fine.train_x.max() == 1
    assert torch.bincount(fine.train_y).tolist() == [500] * 100
    assert torch.bincount(fine.test_y).tolist() == [100] * 100
    assert torch.bincount(coarse.train_y).tolist() == [2500] * 20
    assert torch.bincount(coarse.test_y).tolist() == [500] * 20
    assert torch.equal(fine.train_x, coarse.train_x)
    # each fine class lies in exactly one superclass, five fine classes per superclass
    pairs = torch.unique(torch.stack([fine.train_y, coarse.train_y]), dim=1)
    assert pairs.shape == (2, 100) and torch.bincount(pairs[1]).tolist() == [5] * 20
    assert torch.equal(torch.unique(torch.stack([fine.test_y, coarse.test_y]), dim=1), pairs)
