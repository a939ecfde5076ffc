"""Folder of images -> official-format LMDB (what `python -m stylesdf_fast.prepare_data` runs), and the
cache that lets training take a plain image folder as its dataset.

Conversion, as the official prepare_data.py: every image file under the folder (nested folders
allowed), in sorted path order, is converted to RGB, its shorter side resized to each size (LANCZOS
by default), centre-cropped and PNG-encoded under "{size}-{index:05d}". Unlike the official script,
images may sit directly in the folder, files that cannot be decoded are skipped and reported instead
of aborting the run, and the LMDB is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from PIL import Image

from .dataset import DatasetError
from .lmdb_format import LmdbWriter, encode_png, is_lmdb_dir, parse_sizes, resize_and_center_crop

__all__ = [
    "IMAGE_EXTENSIONS", "RESAMPLE_FILTERS", "PrepareReport", "list_image_files", "convert_image",
    "prepare_dataset", "default_cache_dir", "resolve_dataset",
]

# torchvision ImageFolder's extensions (case-insensitive)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
RESAMPLE_FILTERS = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR}
_CHUNK = 16   # images per worker task

PathLike = Union[str, os.PathLike]


@dataclass
class PrepareReport:
    """What `prepare_dataset` did."""
    path: Path                                  # the LMDB written
    count: int                                  # images stored (indices 0 .. count - 1)
    sizes: Tuple[int, ...]                      # sizes stored per image
    skipped: List[Tuple[Path, str]] = field(default_factory=list)   # (file, why) not stored
    ignored: int = 0                            # files without an image extension


def list_image_files(root: PathLike) -> Tuple[List[Path], int]:
    """All files with an image extension under `root` (recursively, following links), sorted by
    path string as the official script sorts them -> (files, number of other files ignored)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root} is not a directory")
    files, ignored = [], 0
    for directory, _, names in os.walk(root, followlinks=True):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(Path(directory) / name)
            elif not name.startswith("."):
                ignored += 1
    files.sort(key=str)
    return files, ignored


def convert_image(path: PathLike, sizes: Sequence[int], resample: int = Image.LANCZOS) -> List[bytes]:
    """One image file -> its PNG records, one per size (raises on an unreadable file)."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    return [encode_png(resize_and_center_crop(image, size, resample)) for size in sizes]


def _convert_task(task) -> List[Tuple[str, Optional[List[bytes]], str]]:
    """Worker: a chunk of files -> [(file, records or None, error message)]."""
    paths, sizes, resample = task
    results = []
    for path in paths:
        try:
            results.append((path, convert_image(path, sizes, resample), ""))
        except Exception as error:  # noqa: BLE001  (any decode failure: skip the file, report it)
            results.append((path, None, f"{type(error).__name__}: {error}"))
    return results


def _converted(files: List[Path], sizes, resample, workers: int) -> Iterator:
    """(file, records or None, error) for every file, in order; in a process pool when workers > 1."""
    tasks = [([str(p) for p in files[i:i + _CHUNK]], sizes, resample) for i in range(0, len(files), _CHUNK)]
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield from _convert_task(task)
        return
    context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
    with context.Pool(workers) as pool:
        for chunk in pool.imap(_convert_task, tasks):
            yield from chunk


def prepare_dataset(in_dir: PathLike, out: PathLike, sizes=(64, 256, 1024), *, workers: Optional[int] = None,
                    resample: str = "lanczos", overwrite: bool = False, progress: bool = True) -> PrepareReport:
    """Convert every image under `in_dir` into an official-format LMDB at `out`.

    sizes: "64,256,1024" or ints; workers: processes (default: all CPUs); resample: "lanczos" or
    "bilinear". Files that cannot be decoded are skipped and listed in the report; the indices of the
    stored images are consecutive. Raises DatasetError if the folder holds no readable image.
    """
    from tqdm import tqdm

    sizes = parse_sizes(sizes, name="sizes")
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {resample!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    files, ignored = list_image_files(in_dir)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {in_dir}")
    report = PrepareReport(path=Path(out), count=0, sizes=sizes, ignored=ignored)
    info = {"writer": "stylesdf_fast.prepare_data", "source": str(Path(in_dir).resolve()),
            "sizes": list(sizes), "resample": resample}
    with LmdbWriter(out, overwrite=overwrite, info=info) as writer:
        stream = _converted(files, sizes, RESAMPLE_FILTERS[resample], workers)
        for path, records, error in tqdm(stream, total=len(files), desc="prepare_data", unit="img",
                                         disable=not progress):
            if records is None:
                report.skipped.append((Path(path), error))
                continue
            for size, png in zip(sizes, records):
                writer.put_image(size, report.count, png)
            report.count += 1
        if report.count == 0:
            raise DatasetError(f"none of the {len(files)} image files under {in_dir} could be read; "
                               f"first error: {report.skipped[0][1]}")
    return report


# --- image folders as training datasets ------------------------------------------------------------

def default_cache_dir() -> Path:
    """$STYLESDF_FAST_CACHE, else $XDG_CACHE_HOME/stylesdf_fast, else ~/.cache/stylesdf_fast."""
    if os.environ.get("STYLESDF_FAST_CACHE"):
        return Path(os.environ["STYLESDF_FAST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stylesdf_fast"


def _folder_fingerprint(files: List[Path], sizes, resample: str) -> str:
    """Hash of the file list (paths, sizes, mtimes) and the conversion settings: a changed folder
    gets a new cache entry instead of a stale one."""
    digest = hashlib.sha256(repr((tuple(sizes), resample)).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def resolve_dataset(path: PathLike, sizes=(64, 256), *, cache_dir: Optional[PathLike] = None,
                    workers: Optional[int] = None, progress: bool = True) -> Path:
    """A dataset argument -> the LMDB to read.

    An LMDB directory is returned as is. A folder of images is converted once (at `sizes`) into
    `cache_dir` (default `default_cache_dir()`) under a name fingerprinting its files, and the cached
    copy is reused while the folder is unchanged. Anything else is a DatasetError.
    """
    path = Path(path)
    if is_lmdb_dir(path):
        return path
    if not path.exists():
        raise DatasetError(f"dataset not found: {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path} is neither an LMDB dataset directory nor a folder of images")
    sizes = parse_sizes(sizes)
    files, _ = list_image_files(path)
    if not files:
        raise DatasetError(f"{path} is neither an LMDB dataset (no data.mdb) nor a folder of images "
                           f"(no {', '.join(IMAGE_EXTENSIONS)} files under it)")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    size_tag = "_".join(str(s) for s in sizes)
    cached = cache_root / "datasets" / f"{path.resolve().name}-{size_tag}-{_folder_fingerprint(files, sizes, 'lanczos')}"
    if is_lmdb_dir(cached):
        return cached
    if progress:
        print(f"converting the image folder {path} into {cached} (once; reused while the folder is unchanged)")
    report = prepare_dataset(path, cached, sizes, workers=workers, progress=progress)
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file(s), e.g. {report.skipped[0][0]}: {report.skipped[0][1]}")
    return cached
