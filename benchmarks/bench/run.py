"""What every benchmark script does first: import the package of this checkout, take the common
flags, and print and record the run's preamble (device, extension, memory method, copy bandwidth)."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import torch

from .machine import allocator_note, copy_bandwidth, environment_metadata, extension_file_info
from .memory import report_peak_memory_method
from .timing import default_device

__all__ = ["use_this_checkout", "add_common_arguments", "finish_arguments", "selected", "begin_run"]


def add_common_arguments(parser: argparse.ArgumentParser, tool: str, *, repeats: int, quick_repeats: int,
                         max_seconds: float, cases=None, bandwidth: bool = False,
                         warmup: bool = True) -> None:
    """The flags every benchmark takes: --device --quick --repeats --max-seconds --json --threads, and
    --cases when the tool has named cases, --copy-mib when it reports bandwidth, --warmup when it
    makes more than one untimed call; finish_arguments fills the derived defaults."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default=default_device())
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test; no targets evaluated)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed repeats or rounds per measurement (default {repeats}, {quick_repeats} with --quick)")
    parser.add_argument("--max-seconds", type=float, default=max_seconds,
                        help=f"stop timing a measurement after about this long once 3 are done (default {max_seconds:g})")
    if warmup:
        parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    if bandwidth:
        parser.add_argument("--copy-mib", type=int, default=None,
                            help="size of the copy-bandwidth tensor (default 256 MiB, 8 with --quick)")
    parser.add_argument("--json", default=None, help=f"output path (default benchmarks/{tool}_<device>.json)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    if cases is not None:
        parser.add_argument("--cases", default=None, help="comma-separated subset of " + ",".join(cases))
    parser.set_defaults(_tool=tool, _repeats=(repeats, quick_repeats))


def finish_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Derived defaults of the common flags (repeats, JSON path) once --quick and --device are known."""
    from pathlib import Path

    if args.repeats is None:
        args.repeats = args._repeats[1] if args.quick else args._repeats[0]
    if getattr(args, "copy_mib", 0) is None:
        args.copy_mib = 8 if args.quick else 256
    if args.json is None:
        args.json = str(Path(__file__).resolve().parents[1] / f"{args._tool}_{args.device}.json")
    return args


def selected(names, wanted: Optional[str]):
    """The names of a --cases list (all when None); an unknown name is an error that lists the known."""
    if not wanted:
        return list(names)
    chosen = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    return chosen


def use_this_checkout(repo_root) -> None:
    """Import stylesdf_fast from the repository this benchmark belongs to (its Python code as it is
    now); its kernels come from its own in-place build or, when it has none, from the installed
    package if that was built from the same csrc/ (otherwise impl="kernel" raises and says why)."""
    import sys

    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))


def begin_run(tool: str, args, extension_note: str = ""):
    """The preamble every benchmark prints and records: device and threads, which compiled extension
    is measured, the peak-memory method and the machine's copy bandwidth. Returns a dict with
    device, env, ext (extension status), ext_file, memory_check and copy (None without --copy-mib), or None when --device cuda
    was asked for without CUDA (the caller exits 2)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{tool}: --device cuda was asked for but CUDA is not available", file=sys.stderr)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from stylesdf_fast import _extension

    ext = _extension.status()
    env = environment_metadata(device)
    print(f"{tool}: device {device} ({env['device_name']}), torch {env['torch']}, "
          f"{env['torch_threads']} threads, {'quick' if args.quick else 'full'} run, "
          f"load average at start {env['load_average_1_5_15']}")
    print(allocator_note(env))
    ext_file = extension_file_info()
    print(f"extension: loaded={ext.loaded} cuda={ext.cuda} built_with_torch={ext.built_with_torch} "
          f"{extension_note}file mtime {ext_file.get('file_mtime')} "
          f"sha256 {str(ext_file.get('file_sha256'))[:12]} {ext.reason}")
    memory_check = report_peak_memory_method(device)
    copy = None
    if hasattr(args, "copy_mib"):
        copy = copy_bandwidth(device, size_mib=args.copy_mib, repeats=args.repeats)
        print(f"copy bandwidth ({args.copy_mib} MiB float32, read + write): clone {copy['clone']['gb_per_s']:.2f} "
              f"GB/s (reference for %), copy_ into a preallocated tensor {copy['copy_']['gb_per_s']:.2f} GB/s")
    return {"device": device, "env": env, "ext": ext, "ext_file": ext_file, "memory_check": memory_check,
            "copy": copy}
