"""Finding, reading, checking and atomically writing dataset files."""
from __future__ import annotations

import gzip
import hashlib
import os
import secrets
import zlib
from pathlib import Path

from .dataset import DataError
from .registry import DatasetInfo, FileSpec


def digest(data: bytes | bytearray, algorithm: str = "sha256") -> str:
    """Hex digest of ``data``."""
    return hashlib.new(algorithm, data).hexdigest()


def gunzip(data: bytes | bytearray, where: str) -> bytearray:
    """Decompress gzip ``data``; ``where`` names it in the error if it is corrupt."""
    try:
        return bytearray(gzip.decompress(data))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: cannot decompress ({exc}); the file is truncated or "
                        f"corrupt. Delete it or get a fresh copy.") from None


def find_file(directory: Path, name: str) -> Path | None:
    """``directory/name``, else ``directory/name.gz``, else None."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_raw(path: Path) -> bytearray:
    """The bytes of ``path`` as stored, in a writable buffer."""
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(data)
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    return data


def read_file(path: Path) -> bytearray:
    """The uncompressed bytes of ``path`` (gunzipped when it ends in .gz), writable."""
    data = read_raw(path)
    return gunzip(data, str(path)) if path.suffix == ".gz" else data


def verify(spec: FileSpec, data: bytes | bytearray, origin: str, fix: str) -> None:
    """Raise DataError unless ``data`` has ``spec``'s size (where given) and digest; ``origin``
    says where it came from."""
    if spec.size is not None and len(data) != spec.size:
        raise DataError(f"Size mismatch for {spec.name} (from {origin}): expected "
                        f"{spec.size:,} bytes, got {len(data):,}. The file is truncated, corrupt "
                        f"or not the official one. {fix}")
    actual = digest(data, spec.algorithm)
    if actual != spec.digest:
        raise DataError(f"Checksum mismatch for {spec.name} (from {origin}): expected "
                        f"{spec.algorithm} {spec.digest}, got {actual}. The file is corrupt or "
                        f"not the official one. {fix}")


def read_verified(info: DatasetInfo, directory: Path) -> dict[str, bytearray]:
    """Read and verify all of ``info``'s files from ``directory`` (each plain or .gz)."""
    out = {}
    for spec in info.files:
        path = find_file(directory, spec.name)
        if path is None:
            raise DataError(f"{info.title}: {spec.name} is missing from {directory}. "
                            f"{info.fetch_hint}")
        out[spec.name] = data = read_file(path)
        verify(spec, data, str(path),
               f"Delete {path} and run `neurosim data fetch {info.name}`.")
    return out


def atomic_write(path: Path, data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` via a fsynced temporary file in the same directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # created with the umask's permissions
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
