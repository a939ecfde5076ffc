"""Peak memory of one benchmark step (bytes allocated by torch above what was held before it).

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

import gc
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["MIB", "peak_memory", "check_cpu_peak_memory_method", "report_peak_memory_method"]

MIB = 2**20


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
