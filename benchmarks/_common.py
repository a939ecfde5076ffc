"""Helpers shared by the benchmark scripts (ops_speed.py, and later render_speed.py etc.).

- timing:          `time_step` (median wall time over repeats, after warm-up; CUDA is synchronised)
                   and `measure_step` (time_step + peak_memory, ordered to spend little on slow steps)
- peak memory:     `peak_memory` (bytes allocated by torch during one step, above what was held before)
- copy bandwidth:  `copy_bandwidth` (the machine's reference GB/s, measured in the same run)
- reporting:       `print_table`, `environment_metadata`, `write_json`
- extension:       `extension_file_info` (which compiled library was measured), `torch_op_available`
- profiling:       `profile_top_ops` (one step under torch.profiler: the ops with the most self CPU time,
                   on a GPU the most self GPU time)

Peak-memory method
------------------
CUDA: `torch.cuda.reset_peak_memory_stats()`, then `max_memory_allocated() - memory_allocated()`
      taken before the step (the caching allocator's own bookkeeping; cached-but-free blocks do not count).
CPU:  torch has no allocator statistics on CPU, so the step runs once under
      `torch.profiler.profile(activities=[CPU], profile_memory=True)`. Every allocation and free of
      the CPU allocator is recorded as a "[memory]" event with a signed byte count. The raw (kineto)
      events are sorted by start time and summed; the peak of that running sum is the largest amount
      of memory the step held at once above what was allocated before it started (tensors freed
      during the step that were allocated before it make the sum go down, as on CUDA).
      Note: `prof.events()` is not usable for this, because it folds the allocation events into the
      op that made them (only their total survives, not their order), so we read the raw events.
      `check_cpu_peak_memory_method()` verifies the method on a known allocation pattern; the
      benchmark records its result. Memory allocated outside torch's allocator (std::vector scratch
      inside kernels, BLAS/oneDNN workspaces that bypass c10) is not seen by either method.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

MIB = 2**20


# --- device ---------------------------------------------------------------------------------------

def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --- timing ---------------------------------------------------------------------------------------

def time_step(
    step: Callable[[], object],
    *,
    device,
    repeats: int,
    warmup: int = 2,
    setup: Optional[Callable[[], None]] = None,
    max_seconds: Optional[float] = None,
    min_repeats: int = 3,
) -> Dict[str, object]:
    """Wall time of `step()` (seconds), with `setup()` (untimed) before every call.

    Runs up to `warmup` untimed calls (stopping after one that took longer than 1 s), then
    `repeats` timed calls; with `max_seconds`, stops early once that much time has been spent in
    timed calls and at least `min_repeats` were made. Returns median/min/mean/max in ms, the number
    of timed calls and every time.
    """
    for _ in range(max(warmup, 0)):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if time.perf_counter() - start > 1.0:
            break
    times: List[float] = []
    spent = 0.0
    for _ in range(max(repeats, 1)):
        if setup is not None:
            setup()
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        spent += elapsed
        if max_seconds is not None and spent >= max_seconds and len(times) >= min_repeats:
            break
    return {
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "mean_ms": statistics.fmean(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "repeats": len(times),
        "times_ms": [t * 1e3 for t in times],
    }


def time_interleaved(
    steps: Dict[str, Callable[[], object]],
    *,
    device,
    repeats: int,
    max_seconds: Optional[float] = None,
    min_repeats: int = 3,
    setups: Optional[Dict[str, Callable[[], None]]] = None,
) -> Dict[str, Dict[str, object]]:
    """time_step for several steps at once, in rounds: each round times one call of every step, in
    an order that rotates from round to round, so that a change in the machine's load (other
    processes on a shared machine move CPU times by 15%) falls on every step alike. The steps
    should be warmed up already; setups[name], when given, runs untimed before each call of that
    step. Returns {name: time_step's dict}; with `max_seconds`, stops once the rounds took that
    long and `min_repeats` were made."""
    setups = setups or {}
    names = list(steps)
    times: Dict[str, List[float]] = {name: [] for name in names}
    spent = 0.0
    for round_index in range(max(repeats, 1)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if setups.get(name) is not None:
                setups[name]()
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent += elapsed
        if max_seconds is not None and spent >= max_seconds and round_index + 1 >= min_repeats:
            break
    return {name: {"median_ms": statistics.median(t) * 1e3, "min_ms": min(t) * 1e3,
                   "mean_ms": statistics.fmean(t) * 1e3, "max_ms": max(t) * 1e3, "repeats": len(t),
                   "times_ms": [x * 1e3 for x in t]} for name, t in times.items()}


# --- peak memory ----------------------------------------------------------------------------------

def _cpu_memory_events(prof) -> List[tuple]:
    """(start_ns, signed bytes) of the CPU allocator events recorded by a profile_memory=True run."""
    events = []
    for event in prof.profiler.kineto_results.events():
        if event.name() != "[memory]":
            continue
        if event.device_type() != torch.autograd.DeviceType.CPU:
            continue
        events.append((event.start_ns(), event.nbytes()))
    events.sort(key=lambda item: item[0])
    return events


def _peak_of_running_sum(events: Sequence[tuple]) -> int:
    total = peak = 0
    for _, nbytes in events:
        total += nbytes
        peak = max(peak, total)
    return peak


def peak_memory(step: Callable[[], object], *, device, setup: Optional[Callable[[], None]] = None) -> int:
    """Peak bytes allocated by torch during one call of `step()`, above what was allocated before it.
    The step's return value is dropped inside the measured region, so its outputs count while alive."""
    device = torch.device(device)
    if setup is not None:
        setup()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = step()
        del result
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = step()
            del result
        return _peak_of_running_sum(_cpu_memory_events(prof))
    raise ValueError(f"peak_memory: unsupported device {device}")


def check_cpu_peak_memory_method() -> Dict[str, object]:
    """Runs the CPU method on a known pattern: with 8 MiB held before, allocate 40 MiB, free it,
    allocate 24 + 12 MiB, free 24 MiB, free the 8 MiB held before, return 12 MiB (then dropped).
    The expected peak is 40 MiB (the 36 MiB later never exceeds it)."""
    held = torch.empty(8 * MIB, dtype=torch.uint8)
    holder = [held]
    del held

    def step():
        a = torch.ones(40 * MIB, dtype=torch.uint8)
        del a
        b = torch.ones(24 * MIB, dtype=torch.uint8)
        c = torch.ones(12 * MIB, dtype=torch.uint8)
        del b
        holder.clear()
        return c

    expected = 40 * MIB
    try:
        measured = peak_memory(step, device="cpu")
    except Exception as error:  # noqa: BLE001 (the benchmark reports it, it does not stop)
        return {"ok": False, "expected_bytes": expected, "measured_bytes": None, "error": repr(error)}
    return {"ok": measured == expected, "expected_bytes": expected, "measured_bytes": measured}


def measure_step(
    step: Callable[[], object],
    *,
    device,
    repeats: int,
    warmup: int = 2,
    setup: Optional[Callable[[], None]] = None,
    max_seconds: Optional[float] = None,
    min_repeats: int = 3,
) -> Dict[str, object]:
    """time_step + peak_memory of one step: {"median_ms", ..., "peak_bytes", "peak_mib"}.

    CUDA: warm-up, then the timed calls, then one call for the peak memory.
    CPU: the profiled peak-memory call comes first and counts as the first warm-up call; when it took
    longer than 1 s no other warm-up is made (slow CPU references would otherwise dominate the run).
    """
    device = torch.device(device)
    if device.type == "cpu":
        start = time.perf_counter()
        peak = peak_memory(step, device=device, setup=setup)
        first_call_s = time.perf_counter() - start
        more_warmup = 0 if first_call_s > 1.0 else max(warmup - 1, 0)
        timing = time_step(step, device=device, repeats=repeats, warmup=more_warmup, setup=setup,
                           max_seconds=max_seconds, min_repeats=min_repeats)
    else:
        timing = time_step(step, device=device, repeats=repeats, warmup=max(warmup, 1), setup=setup,
                           max_seconds=max_seconds, min_repeats=min_repeats)
        peak = peak_memory(step, device=device, setup=setup)
    return {**timing, "peak_bytes": peak, "peak_mib": peak / MIB}


# --- profiler breakdown ---------------------------------------------------------------------------

def profile_top_ops(
    step: Callable[[], object],
    *,
    device,
    setup: Optional[Callable[[], None]] = None,
    row_limit: int = 10,
    group_substrings: Sequence[str] = (),
) -> Dict[str, object]:
    """One call of `step()` (after `setup()`, untimed) under torch.profiler (CPU activity, plus CUDA on a
    GPU; no memory or shape recording): the `row_limit` ops with the most self CPU time, or on a GPU
    the most self GPU time ("ranked_by": "self_device"; rows then also carry "self_device_pct").

    Returns {"wall_ms" (the profiled call, profiler overhead included), "total_self_cpu_ms" (the sum
    over all ops: the CPU time the step's ops spent, on the calling and autograd threads), "ops" (the
    number of distinct op names), "top_self_cpu_pct" (the share of the rows), "rows": [{"op", "calls",
    "self_cpu_ms", "self_cpu_pct", "cpu_total_ms"} (+ "self_device_ms" on CUDA)], "groups": {prefix:
    {"self_cpu_ms", "self_cpu_pct", "calls"}} for each of `group_substrings` (the ops whose name contains it)}.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    if setup is not None:
        setup()
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        result = step()
        del result
        synchronize(device)
    wall = time.perf_counter() - start
    averages = list(prof.key_averages())
    total = sum(event.self_cpu_time_total for event in averages)  # microseconds

    def pct(value):
        return 100.0 * value / total if total else None

    def self_device_us(event):
        for name in ("self_device_time_total", "self_cuda_time_total"):
            value = getattr(event, name, None)
            if value is not None:
                return value
        return None

    # on a GPU the host mostly waits (cudaDeviceSynchronize tops the CPU ranking), so rank by GPU time
    device_total = sum(self_device_us(event) or 0.0 for event in averages) if device.type == "cuda" else 0.0
    ranked_by = "self_device" if device_total > 0 else "self_cpu"
    if ranked_by == "self_device":
        ranked = sorted(averages, key=lambda event: self_device_us(event) or 0.0, reverse=True)
    else:
        ranked = sorted(averages, key=lambda event: event.self_cpu_time_total, reverse=True)
    rows: List[Dict[str, object]] = []
    for event in ranked[:max(row_limit, 0)]:
        row: Dict[str, object] = {
            "op": event.key, "calls": event.count, "self_cpu_ms": event.self_cpu_time_total / 1e3,
            "self_cpu_pct": pct(event.self_cpu_time_total), "cpu_total_ms": event.cpu_time_total / 1e3,
        }
        if device.type == "cuda":
            value = self_device_us(event)
            row["self_device_ms"] = None if value is None else value / 1e3
            row["self_device_pct"] = 100.0 * value / device_total if value is not None and device_total else None
        rows.append(row)
    groups: Dict[str, object] = {}
    for text in group_substrings:
        members = [event for event in averages if text in event.key]
        self_us = sum(event.self_cpu_time_total for event in members)
        groups[text] = {"self_cpu_ms": self_us / 1e3, "self_cpu_pct": pct(self_us),
                          "calls": sum(event.count for event in members)}
    return {
        "wall_ms": wall * 1e3,
        "total_self_cpu_ms": total / 1e3,
        "ops": len(averages),
        "top_self_cpu_pct": pct(sum(event.self_cpu_time_total for event in ranked[:max(row_limit, 0)])),
        "ranked_by": ranked_by,
        "total_self_device_ms": device_total / 1e3 if device.type == "cuda" else None,
        "rows": rows,
        "groups": groups,
    }


# --- copy bandwidth -------------------------------------------------------------------------------

def copy_bandwidth(device, *, size_mib: int = 256, repeats: int = 10, max_seconds: float = 10.0) -> Dict[str, object]:
    """GB/s (1e9 bytes/s, read + write counted) of copying a `size_mib` MiB float32 tensor:
    - "clone": x.clone() (allocates its output each time, as the ops do; on CPU that includes the
      first-touch page faults of a fresh large allocation): the reference bandwidth of the benchmarks;
    - "copy_": y.copy_(x) into a preallocated tensor (pure streaming copy, for comparison)."""
    numel = size_mib * MIB // 4
    x = torch.rand(numel, device=device)
    y = torch.empty_like(x)
    moved = 2 * x.numel() * x.element_size()
    result: Dict[str, object] = {"size_mib": size_mib, "bytes_per_copy": moved}
    for name, step in (("clone", lambda: x.clone()), ("copy_", lambda: y.copy_(x))):
        timing = time_step(step, device=device, repeats=repeats, warmup=2, max_seconds=max_seconds)
        result[name] = {"median_ms": timing["median_ms"], "repeats": timing["repeats"],
                        "gb_per_s": moved / (timing["median_ms"] * 1e-3) / 1e9}
    result["gb_per_s"] = result["clone"]["gb_per_s"]
    del x, y
    return result


# --- compiled extension ---------------------------------------------------------------------------

def extension_file_info(module: str = "stylesdf_fast._C") -> Dict[str, object]:
    """Which compiled library was measured: path, modification time (UTC) and SHA-256 of `module`'s
    file (the extension can be rebuilt in place between or during runs). {"file": None} when absent."""
    import hashlib
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        return {"file": None}
    path = Path(spec.origin)
    try:
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return {"file": str(path)}
    mtime = _dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
    return {"file": str(path), "file_mtime": mtime, "file_sha256": digest}


def torch_op_available(namespace: str, name: str) -> bool:
    """Whether torch.ops.<namespace>.<name> is registered in this process (False, never an error,
    when the namespace or the op is missing)."""
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


# --- environment ----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def git_info(path: Optional[os.PathLike] = None) -> Dict[str, object]:
    """Commit hash (None when there is no repository or no commit yet) and whether the tree is dirty."""
    cwd = str(path or Path(__file__).resolve().parent)

    def git(*args):
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None or commit is None else bool(status)}


def _read_text(path: str) -> Optional[str]:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def environment_metadata(device) -> Dict[str, object]:
    device = torch.device(device)
    meta: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # large CPU tensors on transparent huge pages (benchmarks/_allocator.py) or glibc's default
        "thp_mem_alloc_enable_env": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "transparent_hugepage": _read_text("/sys/kernel/mm/transparent_hugepage/enabled"),
        # other processes competing for the cores make every number noisier
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["device_name"] = props.name
        meta["device_memory_gib"] = props.total_memory / 2**30
        meta["device_capability"] = f"{props.major}.{props.minor}"
    else:
        meta["device_name"] = meta["cpu_model"]
    meta["git"] = git_info()
    return meta


# --- reporting ------------------------------------------------------------------------------------

def format_cell(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec or ".3g")
    return str(value)


def print_table(rows: Sequence[Dict[str, object]], columns: Sequence[tuple], *, file=None) -> None:
    """columns: (key, header, format spec) triples; a row's missing or None value prints as "-".
    Numbers are right-aligned, text left-aligned."""
    cells = [[format_cell(row.get(key), spec) for key, _, spec in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    numeric = [all(isinstance(row.get(key), (int, float)) or row.get(key) is None for row in rows)
               for key, _, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    print(line(headers), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for c in cells:
        print(line(c), file=file)


def write_json(path: os.PathLike, payload: Dict[str, object], *, device) -> Path:
    """Writes payload with an "environment" entry (environment_metadata) added, creating parent folders."""
    from stylesdf_fast._atomic import write_text   # a killed run leaves the last good file

    document = {"environment": environment_metadata(device), **payload}
    return write_text(path, json.dumps(document, indent=2, default=str) + "\n")


def report_peak_memory_method(device) -> Optional[Dict[str, object]]:
    """Prints how peak memory is measured on `device`; on CPU also self-checks the profiler method
    on a known allocation pattern and returns that check (None on CUDA)."""
    if device.type != "cpu":
        print("peak-memory method: torch.cuda.max_memory_allocated after reset, minus memory allocated before")
        return None
    check = check_cpu_peak_memory_method()
    print(f"peak-memory method (profiler allocation events, running-sum peak) self-check: "
          f"{'ok' if check['ok'] else 'FAILED'} (expected {check['expected_bytes']} B, "
          f"measured {check['measured_bytes']} B)")
    return check


def use_this_checkout(repo_root) -> None:
    """Import stylesdf_fast from the repository this benchmark belongs to (its Python code as it is
    now); its kernels come from its own in-place build or, when it has none, from the installed
    package if that was built from the same csrc/ (otherwise impl="kernel" raises and says why)."""
    import sys

    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))


prefer_installed_package = use_this_checkout   # the former name


def allocator_note(env: Dict[str, object]) -> str:
    """One line saying how large CPU tensors were allocated (it changes CPU times by up to 1.5x)."""
    flag = env.get("thp_mem_alloc_enable_env")
    mode = "transparent huge pages" if flag == "1" else "glibc default (page by page)"
    return (f"CPU allocator for large tensors: {mode} (THP_MEM_ALLOC_ENABLE={flag}; "
            f"system setting: {env.get('transparent_hugepage')})")


def begin_run(tool: str, args, extension_note: str = ""):
    """The preamble every benchmark prints and records: device and threads, which compiled extension
    is measured, the peak-memory method and the machine's copy bandwidth. Returns a dict with
    device, env, ext (extension status), ext_file, memory_check and copy, or None when --device cuda
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
    copy = copy_bandwidth(device, size_mib=args.copy_mib, repeats=args.repeats)
    print(f"copy bandwidth ({args.copy_mib} MiB float32, read + write): clone {copy['clone']['gb_per_s']:.2f} GB/s "
          f"(reference for %), copy_ into a preallocated tensor {copy['copy_']['gb_per_s']:.2f} GB/s")
    return {"device": device, "env": env, "ext": ext, "ext_file": ext_file, "memory_check": memory_check,
            "copy": copy}


def compare_to_reference(kernel_row: Dict[str, object], reference_row: Dict[str, object]) -> None:
    """Adds to the kernel row: speedup = reference median / kernel median, and mem_ratio = reference
    peak / kernel peak when both rows measured their peak (inf for a kernel peak of 0)."""
    if "median_ms" in kernel_row and "median_ms" in reference_row:
        kernel_row["speedup"] = reference_row["median_ms"] / kernel_row["median_ms"]
    if kernel_row.get("peak_bytes") is not None and reference_row.get("peak_bytes") is not None:
        kernel_row["mem_ratio"] = (reference_row["peak_bytes"] / kernel_row["peak_bytes"]
                                   if kernel_row["peak_bytes"] > 0 else float("inf"))


def print_table_and_errors(rows: List[Dict[str, object]], columns) -> None:
    """The result table, then one line per row that could not run."""
    print_table(rows, columns)
    for r in rows:
        if r.get("error"):
            print(f"error: {r['case']} {r['pass']} {r['impl']}: {r['error']}")
