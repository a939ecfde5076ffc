"""Wall time of benchmark steps: one step repeated after warm-up (`time_step`), several steps in
alternating rounds so that load changes on a shared machine fall on all alike (`time_interleaved`),
and time plus peak memory of one step (`measure_step`). CUDA is synchronised around every call."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from .memory import MIB, peak_memory

__all__ = ["default_device", "synchronize", "summarize", "timed_call", "time_step", "time_interleaved", "time_interleaved_unequal",
           "warm_up_with_peak_memory", "measure_step"]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def summarize(times_ms: List[float]) -> Dict[str, object]:
    """median/min/mean/max (ms), the number of timed calls and every time, from times in ms."""
    return {"median_ms": statistics.median(times_ms), "min_ms": min(times_ms), "mean_ms": statistics.fmean(times_ms),
            "max_ms": max(times_ms), "repeats": len(times_ms), "times_ms": list(times_ms)}


def timed_call(step: Callable[[], object], setup: Optional[Callable[[], None]], device) -> float:
    """Seconds of one call of `step()` (after `setup()`, untimed), the device synchronised around it."""
    if setup is not None:
        setup()
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


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
        if timed_call(step, setup, device) > 1.0:
            break
    times: List[float] = []
    spent = 0.0
    for _ in range(max(repeats, 1)):
        elapsed = timed_call(step, setup, device)
        times.append(elapsed)
        spent += elapsed
        if max_seconds is not None and spent >= max_seconds and len(times) >= min_repeats:
            break
    return summarize([t * 1e3 for t in times])


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
            elapsed = timed_call(steps[name], setups.get(name), device)
            times[name].append(elapsed)
            spent += elapsed
        if max_seconds is not None and spent >= max_seconds and round_index + 1 >= min_repeats:
            break
    return {name: summarize([x * 1e3 for x in t]) for name, t in times.items()}


def warm_up_with_peak_memory(step: Callable[[], object], *, device, warmup: int = 2,
                             setup: Optional[Callable[[], None]] = None) -> int:
    """Warm-up calls of one step, one of them measuring its peak memory (bytes, bench.memory).
    CPU: the profiled peak-memory call comes first and counts as the first warm-up call; when it took
    longer than 1 s no other is made (slow CPU references would otherwise dominate the run).
    CUDA: `warmup` calls, then the peak-memory call."""
    device = torch.device(device)
    if device.type == "cpu":
        start = time.perf_counter()
        peak = peak_memory(step, device=device, setup=setup)
        more = 0 if time.perf_counter() - start > 1.0 else max(warmup - 1, 0)
    else:
        more, peak = max(warmup, 1), None
    for _ in range(more):
        if setup is not None:
            setup()
        step()
    if peak is None:
        synchronize(device)
        peak = peak_memory(step, device=device, setup=setup)
    return peak


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
    """warm_up_with_peak_memory, then time_step: {"median_ms", ..., "peak_bytes", "peak_mib"}."""
    peak = warm_up_with_peak_memory(step, device=device, warmup=warmup, setup=setup)
    timing = time_step(step, device=device, repeats=repeats, warmup=0, setup=setup,
                       max_seconds=max_seconds, min_repeats=min_repeats)
    return {**timing, "peak_bytes": peak, "peak_mib": peak / MIB}


def time_interleaved_unequal(
    steps: Dict[str, Callable[[], object]],
    repeats: Dict[str, int],
    *,
    device,
    max_seconds: Optional[float] = None,
) -> Dict[str, Dict[str, object]]:
    """time_interleaved for steps that want different numbers of timed calls (a fast kernel timed 10
    times against a slow reference timed 5): as many rounds as the fewest repeats asked for, and a
    step that wants more is called that many times more per round. Returns {name: time_step's dict
    + "rounds"}; stops early once the rounds took `max_seconds` per step and 3 were made."""
    rounds = max(1, min(repeats.values()))
    copies = {name: max(1, -(-repeats[name] // rounds)) for name in steps}
    expanded = {f"{name}#{k}": step for name, step in steps.items() for k in range(copies[name])}
    timings = time_interleaved(expanded, device=device, repeats=rounds, min_repeats=min(3, rounds),
                               max_seconds=None if max_seconds is None else max_seconds * len(steps))
    results = {}
    for name in steps:
        times = [t for k in range(copies[name]) for t in timings[f"{name}#{k}"]["times_ms"]]
        results[name] = {**summarize(times), "rounds": len(times) // copies[name]}
    return results
