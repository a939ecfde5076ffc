"""`MultiResolutionDataset`: the official StyleSDF LMDB reader, with clear errors.

Returns what the official `dataset.MultiResolutionDataset` returns: (image [3, res, res], thumbnail
[3, nerf_res, nerf_res]), float32 in [-1, 1]. The image is flipped horizontally with probability 0.5
(hflip=True), then the thumbnail is made from the (flipped) image with PIL HAMMING, and both go
through ToTensor + Normalize(0.5, 0.5): (x / 255 - 0.5) / 0.5.

The LMDB environment is opened lazily in the process that reads (and reopened after a fork), so the
dataset is safe in multi-worker DataLoaders and with DistributedSampler. The flip draws from torch's
RNG, which DataLoader seeds per worker, so a fixed torch seed gives fixed flips.
"""
from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .lmdb_format import INFO_KEY, LENGTH_KEY, image_key, is_lmdb_dir, meta_key

__all__ = ["DatasetError", "MultiResolutionDataset", "stored_resolutions", "image_to_tensor"]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_damage(raw: bytes) -> Optional[str]:
    """What is wrong with PNG bytes (a chunk cut short, a chunk failing its CRC, no IEND chunk), or
    None. PIL checks this itself, except where some code has set ImageFile.LOAD_TRUNCATED_IMAGES:
    then it decodes a cut or corrupt PNG into a partly grey image without a word."""
    data, offset = memoryview(raw), len(_PNG_SIGNATURE)
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        end = offset + 12 + length
        kind = bytes(data[offset + 4:offset + 8])
        if end > len(data):
            return f"truncated PNG: its {kind.decode('latin-1')!r} chunk ends past the record's {len(data)} bytes"
        if zlib.crc32(data[offset + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"corrupt PNG: its {kind.decode('latin-1')!r} chunk at byte {offset} fails its CRC"
        if kind == b"IEND":
            return None
        offset = end
    return f"truncated PNG: no IEND chunk in its {len(data)} bytes"


class DatasetError(ValueError):
    """A dataset file that is missing, corrupt, or does not hold what was asked for."""


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB image -> [3, H, W] float32 in [-1, 1], bit-identical to torchvision's
    ToTensor() + Normalize((0.5,) * 3, (0.5,) * 3)."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # [C, H, W] uint8
    return tensor.float().div(255).sub_(0.5).div_(0.5)


def _open_env(path: Path):
    """Read-only environment, or DatasetError naming the path."""
    import lmdb

    if not path.exists():
        raise DatasetError(f"dataset not found: {path} does not exist")
    if not is_lmdb_dir(path):
        raise DatasetError(f"{path} is not an LMDB dataset (no data.mdb inside); convert a folder of "
                           f"images with `python -m stylesdf_fast.prepare_data --out OUT --size 64,256 {path}`")
    try:
        return lmdb.open(str(path), max_readers=126, readonly=True, lock=False, readahead=False,
                         meminit=False)
    except lmdb.Error as error:
        raise DatasetError(f"cannot open the LMDB dataset {path}: {error}") from error


# py-lmdb refuses to open one environment twice in a process, and an environment inherited through
# fork() must not be used in the child. So every reader shares one environment per (process, file):
# resolved path -> (pid that opened it, data.mdb inode, environment).
_SHARED_ENVS: Dict[str, Tuple[int, int, object]] = {}


def _shared_env(path: Path, *, refresh: bool = False):
    """The process's read-only environment for `path` (absolute), opened on first use and reopened after a fork
    (and, with refresh=True, when the file was replaced since it was opened)."""
    key = str(path)
    entry = _SHARED_ENVS.get(key)
    if entry is not None:
        pid, inode, env = entry
        if pid == os.getpid() and not (refresh and _inode(path) != inode):
            return env
        env.close()   # stale, or inherited from the parent: closing it here does not touch the parent's
        del _SHARED_ENVS[key]
    env = _open_env(path)
    _SHARED_ENVS[key] = (os.getpid(), _inode(path), env)
    return env


def _inode(path: Path) -> int:
    try:
        return (path / "data.mdb").stat().st_ino
    except OSError:
        return -1


def stored_resolutions(path: Union[str, os.PathLike]) -> List[int]:
    """The image sizes an official-format LMDB holds (from its "{size}-{index}" keys), sorted."""
    return _scan_resolutions(_shared_env(Path(path).resolve(), refresh=True))


def _scan_resolutions(env) -> List[int]:
    """Every size s with a key "s-00000" (a key scan that reads no values)."""
    sizes = set()
    with env.begin(write=False) as txn:
        cursor = txn.cursor()
        for key in cursor.iternext(keys=True, values=False):
            head, _, tail = bytes(key).partition(b"-")
            if tail == b"00000" and head.isdigit():
                sizes.add(int(head))
    return sorted(sizes)


def _read_length(env, path: Path) -> int:
    with env.begin(write=False) as txn:
        raw = txn.get(LENGTH_KEY)
    if raw is None:
        raise DatasetError(f"{path}: the LMDB has no 'length' key, so it is not a complete StyleSDF dataset "
                           f"(was its conversion interrupted?)")
    try:
        length = int(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DatasetError(f"{path}: key 'length' holds {bytes(raw)[:40]!r}, not an image count") from None
    if length < 0:
        raise DatasetError(f"{path}: key 'length' holds a negative count {length}")
    return length


class MultiResolutionDataset(Dataset):
    """Official-format LMDB -> (image [3, resolution, resolution], thumbnail [3, nerf_resolution,
    nerf_resolution]), float32 in [-1, 1].

    Args:
        path: the LMDB directory (written by `python -m stylesdf_fast.prepare_data` or the official
            prepare_data.py).
        resolution: which stored size to read ("{resolution}-{index:05d}" keys); an error lists the
            sizes the file holds if it has no such records.
        nerf_resolution: thumbnail size (PIL HAMMING resize of the image), 64 in StyleSDF.
        hflip: flip each image horizontally with probability 0.5, as the official loader.
    """

    def __init__(self, path: Union[str, os.PathLike], resolution: int = 256, nerf_resolution: int = 64,
                 hflip: bool = True):
        for name, value in (("resolution", resolution), ("nerf_resolution", nerf_resolution)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MultiResolutionDataset: {name} must be a positive int, got {value!r}")
        self.path = Path(path).resolve()
        self.resolution = resolution
        self.nerf_resolution = nerf_resolution
        self.hflip = bool(hflip)
        env = _shared_env(self.path, refresh=True)
        self.length = _read_length(env, self.path)
        self._check_resolution(env)
        self.info = self._read_info(env)

    # --- construction-time checks ------------------------------------------------------------------
    def _check_resolution(self, env) -> None:
        if self.length == 0:
            return
        with env.begin(write=False) as txn:
            present = (txn.get(image_key(self.resolution, 0)) is not None
                       and txn.get(image_key(self.resolution, self.length - 1)) is not None)
        if not present:
            held = _scan_resolutions(env)
            held_text = ", ".join(str(s) for s in held) if held else "none"
            raise DatasetError(f"{self.path} holds no {self.resolution}x{self.resolution} images "
                               f"(keys '{self.resolution}-NNNNN'); it holds resolutions: {held_text}. "
                               f"Ask for one of those, or rebuild it with --size including {self.resolution}")

    def _read_info(self, env) -> Dict:
        with env.begin(write=False) as txn:
            raw = txn.get(INFO_KEY)
        return {} if raw is None else json.loads(bytes(raw).decode("utf-8"))

    # --- lazy, fork-safe environment: looked up per read, so a DataLoader worker opens its own ----
    def _environment(self):
        return _shared_env(self.path)

    # --- records -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.length

    def _record(self, key: bytes) -> Optional[bytes]:
        with self._environment().begin(write=False) as txn:
            raw = txn.get(key)
        return None if raw is None else bytes(raw)

    def read_image(self, index: int) -> Image.Image:
        """The stored RGB image `index` at `resolution`, as PIL (no flip)."""
        if not 0 <= index < self.length:
            raise IndexError(f"MultiResolutionDataset: index {index} out of range for {self.length} images")
        key = image_key(self.resolution, index)
        raw = self._record(key)
        if raw is None:
            raise DatasetError(f"{self.path}: record {key.decode()} is missing")
        damage = _png_damage(raw) if raw.startswith(_PNG_SIGNATURE) else None
        if damage is not None:
            raise DatasetError(f"{self.path}: record {key.decode()} is a {damage}")
        try:
            image = Image.open(io.BytesIO(raw))
            image.load()
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DatasetError(f"{self.path}: record {key.decode()} is not a decodable image ({error})") from error
        return image.convert("RGB") if image.mode != "RGB" else image

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        flip = self.hflip and torch.rand(()).item() > 0.5
        return self.item(int(index), flip)

    def item(self, index: int, flip: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(image, thumbnail) of record `index`, flipped or not as asked (training decides flips itself
        so that they are reproducible across workers and resumes)."""
        image = self.read_image(index)
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        thumbnail = image.resize((self.nerf_resolution, self.nerf_resolution), Image.HAMMING)
        return image_to_tensor(image), image_to_tensor(thumbnail)

    def meta(self, index: int) -> Optional[Dict]:
        """The JSON stored under "meta-{index:05d}" (the synthetic dataset's camera angles), or None."""
        raw = self._record(meta_key(index))
        return None if raw is None else json.loads(raw.decode("utf-8"))

    def camera_angles(self) -> Optional[torch.Tensor]:
        """[N, 2] (azimuth, elevation) in radians of every image, when the file stores them
        (the built-in synthetic dataset does); None otherwise."""
        rows = []
        for index in range(self.length):
            meta = self.meta(index)
            if meta is None or "azimuth" not in meta:
                return None
            rows.append((meta["azimuth"], meta["elevation"]))
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)

    def __repr__(self) -> str:
        return (f"MultiResolutionDataset({str(self.path)!r}, resolution={self.resolution}, "
                f"nerf_resolution={self.nerf_resolution}, hflip={self.hflip}, length={self.length})")
