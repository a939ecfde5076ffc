"""Atomic file writes, the one rule every writer of the package follows.

A file either appears complete under its final name or not at all: it is written to a hidden
temporary file in the destination folder (same file system, so the final os.replace is atomic),
flushed to disk (fsync), renamed, and the folder's entry flushed too. Any error, KeyboardInterrupt
and a full disk included, removes the temporary file and leaves an older file of that name as it was.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, os.PathLike]

__all__ = ["atomic_path", "save_torch", "write_json", "write_text", "fsync_path", "stale_temporaries"]

# atomic_path's temporaries: mkstemp names ".{stem}." + 8 random characters + ".tmp{suffix}"
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[^.]+)?$")


def _default_file_mode() -> int:
    """rw for everyone minus the umask, what open() would give (mkstemp makes 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders that cannot be opened are skipped.
    A file's flush that fails raises (a write error, a full disk or quota can surface only here),
    unless the file system does not support fsync at all."""
    folder = os.path.isdir(path)
    flags = os.O_RDONLY | (os.O_DIRECTORY if folder and hasattr(os, "O_DIRECTORY") else 0)
    try:
        handle = os.open(path, flags)
    except OSError:
        if not folder:
            raise
        return
    try:
        os.fsync(handle)
    except OSError as error:
        if not folder and error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # some file systems refuse fsync on folders (or on anything)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so tools that pick a format from the
    extension still work); once the body has written it, flush it, move it onto `path` and flush the
    folder; on any exception delete it. The destination folder is created when missing."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}",
                                         dir=target.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        fsync_path(temporary)
        os.chmod(temporary, _default_file_mode())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_path(target.parent)


class _RecordingFile:
    """A binary file whose write/flush remember their OSError: torch.save's zip writer turns it into
    an opaque RuntimeError ("unexpected pos ..."), so a full disk would not say so."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def _call(self, method, *args):
        try:
            return method(*args)
        except OSError as error:
            self.error = error
            raise

    def write(self, data):
        return self._call(self.handle.write, data)

    def flush(self):
        return self._call(self.handle.flush)


def stale_temporaries(folder: PathLike) -> list:
    """The temporary files of atomic_path in `folder` (sorted): after a writer was killed (SIGKILL,
    a power cut) they stay behind; a caller that knows no writer is running may delete them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMPORARY_NAME.match(p.name) and p.is_file())


def save_torch(obj: Any, path: PathLike) -> Path:
    """torch.save, atomically; a failed write raises its OSError (ENOSPC on a full disk)."""
    import torch

    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            recording = _RecordingFile(handle)
            try:
                torch.save(obj, recording)
            except RuntimeError as error:
                if recording.error is None:
                    raise
                raise recording.error from error
    return Path(path)


def write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json(path: PathLike, payload: Any, *, indent: int = 2) -> Path:
    """JSON (sorted keys, a final newline), atomically."""
    return write_text(path, json.dumps(payload, indent=indent, sort_keys=True) + "\n")
