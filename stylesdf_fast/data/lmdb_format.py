"""The official StyleSDF LMDB layout (docs/official.md section 5) and an atomic writer for it.

An LMDB environment (a directory holding data.mdb and lock.mdb) with
    "{size}-{index:05d}"  PNG-encoded RGB image `index` at size x size (e.g. b"1024-00042")
    "length"              the image count as a decimal string
and, in files this package writes, optional extra keys the official loader ignores:
    "meta-{index:05d}"    JSON about image `index` (the synthetic dataset stores its camera angles)
    "dataset-info"        JSON about the whole file (what wrote it, with which settings)

The writer builds the environment under a temporary name beside the destination and renames it into
place only when every record and "length" are committed, so an interrupted run never leaves a
half-written dataset under the final name.
"""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

from PIL import Image

from .._atomic import fsync_path

__all__ = [
    "LENGTH_KEY", "INFO_KEY", "image_key", "meta_key", "resize_and_center_crop", "encode_png",
    "LmdbWriter", "is_lmdb_dir", "parse_sizes",
]

LENGTH_KEY = b"length"
INFO_KEY = b"dataset-info"
MAP_SIZE = 1024 ** 4        # 1 TiB of address space, as the official writer (the file grows as needed)
COMMIT_EVERY = 256          # records per write transaction: bounds the writer's memory
_PARTIAL_MARK = ".incomplete-"

PathLike = Union[str, os.PathLike]


def image_key(size: int, index: int) -> bytes:
    """The official record key: image `index` at `size` pixels -> b"{size}-{index:05d}"."""
    return f"{size}-{index:05d}".encode("utf-8")


def meta_key(index: int) -> bytes:
    """Our extra per-image key (ignored by the official loader) -> b"meta-{index:05d}"."""
    return f"meta-{index:05d}".encode("utf-8")


def is_lmdb_dir(path: PathLike) -> bool:
    """True for a directory holding an LMDB environment (data.mdb)."""
    return (Path(path) / "data.mdb").is_file()


def parse_sizes(sizes: Union[str, int, Iterable[int]], *, name: str = "sizes") -> tuple:
    """"64,256,1024" or 256 or (64, 256) -> a sorted tuple of distinct positive ints."""
    if isinstance(sizes, str):
        parts = [part.strip() for part in sizes.split(",") if part.strip()]
        try:
            values = [int(part) for part in parts]
        except ValueError:
            raise ValueError(f"{name} must be comma-separated integers such as 64,256,1024, got {sizes!r}") from None
    elif isinstance(sizes, int) and not isinstance(sizes, bool):
        values = [sizes]
    else:
        values = list(sizes)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"{name} must hold ints, got {sizes!r}")
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be one or more positive image sizes, got {sizes!r}")
    return tuple(sorted(set(values)))


# --- image conversion, exactly as the official prepare_data.py (torchvision resize + center_crop) ----

def resize_and_center_crop(image: Image.Image, size: int, resample: int = Image.LANCZOS) -> Image.Image:
    """Shorter side resized to `size` (the longer side to int(size * long / short), torchvision's
    rule), then the central size x size crop (offsets int(round((extent - size) / 2)))."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    image = image.resize(new_size, resample)   # PIL returns a copy when the size is unchanged
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (the official record encoding)."""
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


# --- atomic writer -----------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True


def _remove_stale_partials(destination: Path) -> None:
    """Delete temporary directories that an interrupted writer of `destination` left behind."""
    for candidate in destination.parent.glob(destination.name + _PARTIAL_MARK + "*"):
        pid = candidate.name.rsplit("-", 1)[-1]
        if candidate.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)


class LmdbWriter:
    """Writes an official-format LMDB at `path` atomically.

        with LmdbWriter(out) as writer:
            writer.put_image(size, index, png_bytes)   # any order; indices must end up 0..n-1
            writer.put_meta(index, {...})              # optional
        # on a clean exit: "length" = number of distinct indices written, then rename into place

    `overwrite=False` refuses an existing destination before any work starts. An exception inside
    the block deletes the temporary directory and leaves the destination untouched.
    """

    def __init__(self, path: PathLike, *, overwrite: bool = False, info: Optional[Dict] = None):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists; choose another output path or pass "
                                  f"overwrite=True (--overwrite) to replace it")
        self._info = info
        self._env = None
        self._txn = None
        self._pending = 0
        self._indices = set()
        self._temp = self.path.parent / f"{self.path.name}{_PARTIAL_MARK}{os.getpid()}"

    def __enter__(self) -> "LmdbWriter":
        import lmdb

        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.path)
        shutil.rmtree(self._temp, ignore_errors=True)
        self._env = lmdb.open(str(self._temp), map_size=MAP_SIZE, readahead=False, meminit=False)
        self._txn = self._env.begin(write=True)
        return self

    def put(self, key: bytes, value: bytes) -> None:
        """One raw record; committed in batches of COMMIT_EVERY."""
        self._txn.put(key, value)
        self._pending += 1
        if self._pending >= COMMIT_EVERY:
            self._txn.commit()
            self._txn = self._env.begin(write=True)
            self._pending = 0

    def put_image(self, size: int, index: int, png: bytes) -> None:
        self.put(image_key(size, index), png)
        self._indices.add(index)

    def put_meta(self, index: int, meta: Dict) -> None:
        self.put(meta_key(index), json.dumps(meta, sort_keys=True).encode("utf-8"))

    @property
    def count(self) -> int:
        return len(self._indices)

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise

    def _finish(self) -> None:
        count = len(self._indices)
        if self._indices != set(range(count)):
            raise ValueError(f"LmdbWriter: image indices must be 0..{count - 1} without gaps")
        if self._info is not None:
            self._txn.put(INFO_KEY, json.dumps(self._info, sort_keys=True).encode("utf-8"))
        self._txn.put(LENGTH_KEY, str(count).encode("utf-8"))
        self._txn.commit()
        self._txn = None
        self._env.sync(True)
        self._env.close()
        self._env = None
        self._replace_destination()

    def _replace_destination(self) -> None:
        """Rename the finished temporary directory to the destination (an existing one, allowed by
        overwrite=True, is moved aside first and deleted after)."""
        old = None
        if self.path.exists():
            old = self.path.parent / f"{self.path.name}.replaced-{os.getpid()}"
            os.replace(self.path, old)
        os.replace(self._temp, self.path)
        fsync_path(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()

    def _abort(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        if self._env is not None:
            self._env.close()
            self._env = None
        shutil.rmtree(self._temp, ignore_errors=True)
