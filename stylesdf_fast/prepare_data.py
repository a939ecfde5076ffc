"""`python -m stylesdf_fast.prepare_data --out PATH --size 64,256,1024 [--workers N] IN_DIR`

Converts a folder of images (nested folders allowed) into the official StyleSDF LMDB format, which
both this package and the official code read. `--out_path` and `--n_worker` are accepted as the
official script's spellings. `--synthetic` writes the built-in synthetic dataset instead of
converting a folder.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .data.dataset import DatasetError
from .data.lmdb_format import parse_sizes
from .data.prepare import RESAMPLE_FILTERS, prepare_dataset

__all__ = ["main", "build_parser"]

_MAX_LISTED_SKIPS = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stylesdf_fast.prepare_data",
        description="Convert a folder of images into an official-format StyleSDF LMDB dataset.")
    parser.add_argument("path", nargs="?", metavar="IN_DIR",
                        help="folder of images (searched recursively; sorted path order gives the indices)")
    parser.add_argument("--out", "--out_path", dest="out", required=True, help="LMDB directory to create")
    parser.add_argument("--size", default="64,256,1024",
                        help="comma-separated square sizes to store (default 64,256,1024; training reads "
                             "--size and 64 for the volume renderer)")
    parser.add_argument("--workers", "--n_worker", dest="workers", type=int, default=None,
                        help="conversion processes (default: all CPUs)")
    parser.add_argument("--resample", choices=sorted(RESAMPLE_FILTERS), default="lanczos",
                        help="resize filter (default lanczos, as the official script)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--synthetic", type=int, metavar="N", default=None,
                        help="instead of converting IN_DIR, write N images of the built-in synthetic dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    return parser


def _print_skipped(skipped) -> None:
    print(f"skipped {len(skipped)} file(s) that could not be read as images:", file=sys.stderr)
    for path, reason in skipped[:_MAX_LISTED_SKIPS]:
        print(f"  {path}: {reason}", file=sys.stderr)
    if len(skipped) > _MAX_LISTED_SKIPS:
        print(f"  ... and {len(skipped) - _MAX_LISTED_SKIPS} more", file=sys.stderr)


def _run(args) -> int:
    sizes = parse_sizes(args.size, name="--size")
    if args.synthetic is not None:
        from .data.synthetic import SyntheticConfig, build_synthetic_dataset

        if args.path is not None:
            raise ValueError("give either IN_DIR or --synthetic N, not both")
        config = SyntheticConfig(num_images=args.synthetic, sizes=sizes, seed=args.seed)
        build_synthetic_dataset(args.out, config, overwrite=args.overwrite)
        print(f"wrote {args.synthetic} synthetic images at {', '.join(map(str, sizes))} px to {args.out}")
        return 0
    if args.path is None:
        raise ValueError("IN_DIR is required (the folder of images to convert)")
    report = prepare_dataset(args.path, args.out, sizes, workers=args.workers, resample=args.resample,
                             overwrite=args.overwrite)
    print(f"wrote {report.count} images at {', '.join(map(str, report.sizes))} px to {report.path}")
    if report.ignored:
        print(f"ignored {report.ignored} file(s) without an image extension")
    if report.skipped:
        _print_skipped(report.skipped)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (DatasetError, ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.out}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
