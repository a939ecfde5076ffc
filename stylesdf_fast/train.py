"""`python -m stylesdf_fast.train`: two-stage StyleSDF training.

    python -m stylesdf_fast.train                                   # small preset, built-in data, CPU ok
    python -m stylesdf_fast.train --preset ffhq1024 --dataset data/ffhq --run-dir runs/ffhq
    torchrun --nproc_per_node 4 -m stylesdf_fast.train --preset ffhq1024 --dataset data/ffhq
    python -m stylesdf_fast.train --resume runs/ffhq                # continue from the newest checkpoint

Every config field is a flag (`--batch1 8`, `--no-hflip`, ...; see --help). Batches are per process.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from ._extension import status as extension_status
from .data import DatasetError
from .training.config import (PRESETS, TrainConfig, add_config_arguments, config_from_args, explicit_overrides,
                              incompatible_fields, validate_config)

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stylesdf_fast.train", description=__doc__.split("\n\n")[0],
                                     epilog=extension_status().describe())
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS),
                        help="starting values of the config (default small: CPU-sized, on the built-in dataset)")
    parser.add_argument("--run-dir", default=None, help="output directory (default runs/<preset>-<time>)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its newest checkpoint (with its stored config)")
    add_config_arguments(parser)
    return parser


def _resumed_config(args) -> TrainConfig:
    run_dir = Path(args.resume)
    stored_path = run_dir / "config.json"
    if not stored_path.is_file():
        raise ValueError(f"--resume {run_dir}: no config.json there, so it is not a training run directory")
    stored = json.loads(stored_path.read_text())
    requested = explicit_overrides(args)
    conflicts = incompatible_fields(stored, requested)
    if conflicts:
        details = ", ".join(f"{name} (run: {stored[name]!r}, asked: {requested[name]!r})" for name in conflicts)
        raise ValueError(f"--resume {run_dir}: these fields cannot change when resuming: {details}")
    try:
        base = TrainConfig(**stored)
    except TypeError as error:
        raise ValueError(f"--resume {run_dir}: its config.json does not match this version's fields ({error})") from None
    return config_from_args(args, base)


def _run_dir(args, cfg: TrainConfig) -> Path:
    if args.resume is not None:
        if args.run_dir is not None and Path(args.run_dir) != Path(args.resume):
            raise ValueError("give --resume RUN_DIR alone (the run continues in its own directory)")
        return Path(args.resume)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "config.json").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --run-dir")
    return run_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = validate_config(_resumed_config(args) if args.resume else config_from_args(args))
        run_dir = _run_dir(args, cfg)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .training.loop import run_training   # imports the models only once the arguments are good

    print(f"run directory: {run_dir}")
    print(extension_status().describe())
    try:
        code = run_training(cfg, run_dir, resume=args.resume is not None)
    except (ValueError, DatasetError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if code == 0:
        print(f"finished: {run_dir} (final.pt / volume_renderer.pt, samples/, metrics.jsonl)")
    return code


if __name__ == "__main__":
    sys.exit(main())
