"""Flags and checks shared by the generate, render_video and evaluate command lines, so the three
spell every common option the same way and refuse bad input the same way (before any work)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from .._extension import IMPLS, status as extension_status

__all__ = ["new_parser", "start", "output_folder", "add_common_arguments", "check_common_arguments",
           "prepare_outdir", "pick_device", "fail", "load_or_fail"]


def new_parser(command: str, description: str, *, truncation: float, outdir_root: str) -> argparse.ArgumentParser:
    """A command's parser with the shared flags; its outputs go to <outdir_root>/<checkpoint name> by default."""
    parser = argparse.ArgumentParser(prog=f"python -m stylesdf_fast.{command}", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=extension_status().describe())
    add_common_arguments(parser, truncation=truncation,
                         outdir_help=f"output folder (default: {outdir_root}/<checkpoint name>)")
    parser.set_defaults(outdir_root=outdir_root)
    return parser


def start(parser: argparse.ArgumentParser, argv, check):
    """Parse and check the arguments (check(parser, args) exits with a usage error on bad input), pick
    the device, load the checkpoint: (args, device, LoadedModel)."""
    args = parser.parse_args(argv)
    check(parser, args)
    device = pick_device(parser, args.device)
    if args.impl != "reference":
        print(extension_status().describe())
    return args, device, load_or_fail(parser, args, device)


def output_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    return prepare_outdir(parser, args.outdir, Path(args.outdir_root) / Path(args.ckpt).stem, args.overwrite)


def add_common_arguments(parser: argparse.ArgumentParser, *, truncation: float, outdir_help: str) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint: an official StyleSDF .pt or one of ours "
                        "(final.pt, volume_renderer.pt, checkpoints/*.pt)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the identities and views (official: 1234)")
    parser.add_argument("--truncation", type=float, default=truncation,
                        help=f"truncation psi in [0, 1]; 1 disables it (default {truncation})")
    parser.add_argument("--outdir", default=None, help=outdir_help)
    parser.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty --outdir")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4,
                        help="images per generator call")
    parser.add_argument("--impl", default="auto", choices=IMPLS,
                        help="our kernels (kernel), the pure-PyTorch ops (reference), or kernels when built (auto)")


def fail(parser: argparse.ArgumentParser, message: str):
    parser.error(message)   # prints usage + message, exits with status 2


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not os.path.isfile(args.ckpt):
        fail(parser, f"--ckpt: no such checkpoint file: {args.ckpt}")
    if not 0 <= args.truncation <= 1:
        fail(parser, f"--truncation must be in [0, 1], got {args.truncation}")
    if args.batch_size < 1:
        fail(parser, f"--batch-size must be >= 1, got {args.batch_size}")


def pick_device(parser: argparse.ArgumentParser, name) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        fail(parser, f"--device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(parser, f"--device {name}: no CUDA device is available here (use --device cpu)")
    return device


def prepare_outdir(parser: argparse.ArgumentParser, outdir, default: Path, overwrite: bool) -> Path:
    """The output folder: refused if it exists and is not empty, unless --overwrite (then its files
    are replaced as they are written; nothing else in it is deleted)."""
    path = Path(outdir) if outdir is not None else default
    if path.exists() and not path.is_dir():
        fail(parser, f"--outdir {path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        fail(parser, f"--outdir {path} exists and is not empty; pass --overwrite to write into it, or choose "
                     f"another --outdir")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_or_fail(parser: argparse.ArgumentParser, args: argparse.Namespace, device: torch.device):
    """The checkpoint's g_ema, or a usage error naming the file and what is wrong with it."""
    from .sampling import load_model

    try:
        return load_model(args.ckpt, device, impl=args.impl)
    except (FileNotFoundError, ValueError) as error:
        fail(parser, f"--ckpt: {error}")
