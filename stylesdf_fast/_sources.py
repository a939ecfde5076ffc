"""The fingerprint of the kernel sources that a compiled `stylesdf_fast._C` was built from.

`setup.py` writes it beside the extension it builds (`_C.sources`); the loader (`_extension.py`)
compares it with a source checkout's `csrc/` to decide whether that checkout may use an installed
extension. Standard library only: setup.py loads this file by path, before the package can be
imported.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

SIDECAR_NAME = "_C.sources"   # beside _C.<suffix>, holds "sha256:<hex>"
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu")
EXCLUDED_DIRS = ("tests",)    # csrc/tests is the C++ unit test, not part of the extension


def kernel_sources(csrc: Path) -> list:
    """The files of csrc/ that go into the extension, sorted by their path relative to csrc/."""
    files = [p for p in csrc.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
             and p.relative_to(csrc).parts[0] not in EXCLUDED_DIRS]
    return sorted(files, key=lambda p: p.relative_to(csrc).as_posix())


def sources_fingerprint(csrc: Path) -> str:
    """"sha256:<hex>" over every kernel source's relative path and bytes (line endings normalised,
    so a checkout with CRLF files matches one with LF files)."""
    csrc = Path(csrc)
    digest = hashlib.sha256()
    for path in kernel_sources(csrc):
        digest.update(path.relative_to(csrc).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return "sha256:" + digest.hexdigest()


def read_sidecar(extension_path: Path) -> str:
    """The fingerprint recorded beside a built extension, or "" when there is none."""
    sidecar = Path(extension_path).with_name(SIDECAR_NAME)
    try:
        return sidecar.read_text().strip()
    except OSError:
        return ""
