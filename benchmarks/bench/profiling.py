"""One step under torch.profiler: the ops with the most self CPU time (on a GPU, self GPU time)."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .timing import synchronize

__all__ = ["profile_top_ops"]


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
