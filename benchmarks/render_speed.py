"""Speed, peak memory and bandwidth of the fused volume renderer (`sdf_volume_render`, impl="kernel")
against its pure-PyTorch reference (impl="reference"), on StyleSDF-sized work, with pass/fail targets.
The models end to end are timed by model_speed.py; correctness is the tests' job.

    python benchmarks/render_speed.py [--device cpu|cuda] [--quick] [--cases train_stage1,slice_call,...]
                                      [--repeats N] [--reference-repeats N] [--json PATH] [--threads N]

Cases (float32; the inputs are the tests' builder, tests/_inputs.py, packed as the network's output
raw [..., S, 4 + C] = (rgb, sdf, features); S samples per ray, C feature channels):
  train_stage1  4 x 64x64 rays, S=24, C=256: the first training stage. raw and beta require grad;
                forward (graph recorded) and forward + backward (gradients of raw and beta from fixed
                random cotangents on the rgb and feature maps). Kernel: sdf_volume_render_raw(raw);
                reference: the official slicing of raw.
  video         1 x 64x64 rays, S=64, C=256, force_background, forward under no_grad.
  surface       128x128 rays, S=128, no features, force_background, forward under no_grad.
  slice_call    2 x 64x64 rays, S=24, C=256, forward + backward, both impl="kernel": the slice call
                sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:], ...) against the raw call.

Each row: median wall time of rounds that alternate the two rows in rotating order (load from other
processes falls on both alike), speedup, peak memory of one step (and beyond what the step returns),
achieved GB/s by the minimal-traffic byte model of docs/kernels.md section 1.10, and that as a
percentage of the copy bandwidth measured in the same run. The report also says whether large CPU
tensors sat on transparent huge pages (compare THP_MEM_ALLOC_ENABLE=1 and =0 runs).

Targets (printed, never an exit status; not evaluated with --quick), on train_stage1 forward + backward:
  cpu:  kernel >= 8x the reference; reference peak memory beyond the returned tensors >= 3x the
        kernel's; kernel >= 50% of the copy bandwidth.
  cuda: kernel >= 70% of the copy bandwidth and >= 3x the reference.
  both: slice call time <= 1.10 x raw call time.
"""
from __future__ import annotations

import argparse
import gc
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
for folder in (Path(__file__).resolve().parent, ROOT / "tests"):   # bench/ and the tests' input builders
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

from bench import machine, memory, report, run, timing  # noqa: E402

run.use_this_checkout(ROOT)
from stylesdf_fast.ops import sdf_volume_render, sdf_volume_render_raw  # noqa: E402

from _inputs import pack_raw, volume_render_inputs  # noqa: E402

CPU_SPEEDUP_TARGET = 8.0
SLICE_RATIO_TARGET = 1.10


@dataclass
class Case:
    name: str
    lead: Tuple[int, ...]  # ray dims
    samples: int
    channels: int  # 0: features=None
    train: bool  # inputs require grad: forward records the graph, forward + backward is timed too
    force_background: bool
    slice_call: bool = False  # rows: the slice call and the raw call (both kernel), forward + backward only

    @property
    def rays(self) -> int:
        return math.prod(self.lead)

    @property
    def passes(self) -> Tuple[str, ...]:
        if self.slice_call:
            return ("forward_backward",)
        return ("forward", "forward_backward") if self.train else ("forward",)

    @property
    def rows(self) -> Tuple[Tuple[str, str, str], ...]:
        """(label, impl, call) of the measured row and of its baseline."""
        if self.slice_call:
            return ("slice call", "kernel", "slices"), ("raw call", "kernel", "raw")
        return ("kernel", "kernel", "raw"), ("reference", "reference", "raw")

    def describe(self) -> str:
        what = "fwd (graph) and fwd+bwd" if self.train else "no_grad forward"
        if self.slice_call:
            what = "fwd+bwd, slice call vs raw call"
        rays = " x ".join(str(n) for n in self.lead)
        return (f"[{rays}] rays, S={self.samples}, C={self.channels}{', force_background' if self.force_background else ''}"
                f", {what}")


def make_cases(quick: bool) -> List[Case]:
    if quick:
        return [Case("train_stage1", (2, 8, 8), 8, 16, True, False), Case("video", (1, 8, 8), 16, 16, False, True),
                Case("surface", (16, 16), 16, 0, False, True), Case("slice_call", (1, 8, 8), 8, 16, True, False, True)]
    return [Case("train_stage1", (4, 64, 64), 24, 256, True, False), Case("video", (1, 64, 64), 64, 256, False, True),
            Case("surface", (128, 128), 128, 0, False, True),
            Case("slice_call", (2, 64, 64), 24, 256, True, False, True)]


def bytes_model(case: Case) -> Dict[str, int]:
    """Minimal float32 traffic of each pass (docs/kernels.md section 1.10)."""
    s, c = case.samples, case.channels
    forward = s * (c + 5) + (c + 3)
    backward = (c + 3) + s * (c + 5) + s * (c + 4)
    scale = 4 * case.rays
    return {"forward": forward * scale, "forward_backward": (forward + backward) * scale}


def output_bytes(case: Case, pass_name: str) -> int:
    """Bytes of what one step returns: the maps and weights, or the gradients of raw and beta."""
    r, s, c = case.rays, case.samples, case.channels
    if pass_name == "forward":
        return 4 * r * (3 + c + s)
    return 4 * (r * s * (4 + c) + 1)


def make_inputs(case: Case, device) -> Dict[str, object]:
    """raw [..., S, 4 + C] and beta [1] (both leaves requiring grad for training cases), z_vals
    [..., S], ray_norm [...], and fixed cotangents for the rgb [..., 3] and feature [..., C] maps."""
    parts = volume_render_inputs(case.lead, case.samples, case.channels or None, torch.float32, device, beta=0.1)
    generator = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(*case.lead, 3, generator=generator).to(device)]
    if case.channels:
        cotangents.append(torch.randn(*case.lead, case.channels, generator=generator).to(device))
    return {"raw": pack_raw(parts).requires_grad_(case.train), "beta": parts["beta"].requires_grad_(case.train),
            "z_vals": parts["z_vals"], "ray_norm": parts["ray_norm"], "cotangents": cotangents}


def render(case: Case, inputs: Dict[str, object], impl: str, call: str):
    """sdf_volume_render_raw(raw, ...), or (call="slices") sdf_volume_render on the three slices of raw,
    sliced inside the step as StyleSDF's volume_integration does."""
    raw, rest = inputs["raw"], (inputs["z_vals"], inputs["ray_norm"], inputs["beta"])
    if call == "slices":
        features = raw[..., 4:] if case.channels else None
        return sdf_volume_render(raw[..., 3], raw[..., :3], features, *rest,
                                 force_background=case.force_background, impl=impl)
    return sdf_volume_render_raw(raw, *rest, force_background=case.force_background, impl=impl)


def make_step(case: Case, pass_name: str, impl: str, call: str, inputs) -> Callable[[], object]:
    if pass_name == "forward" and case.train:
        return lambda: render(case, inputs, impl, call)
    if pass_name == "forward":
        def step():
            with torch.no_grad():
                return render(case, inputs, impl, call)
        return step

    def step():
        out = render(case, inputs, impl, call)
        maps = [out.rgb] + ([out.features] if case.channels else [])
        return torch.autograd.grad(maps, (inputs["raw"], inputs["beta"]), inputs["cotangents"])
    return step


def measure_pass(case: Case, pass_name: str, inputs, args, device, copy) -> List[Dict[str, object]]:
    """The two rows of one pass: warm-up and peak memory one row at a time, then the interleaved times."""
    rows, steps, repeats = {}, {}, {}
    for label, impl, call in case.rows:
        row = {"case": case.name, "pass": pass_name, "impl": label, "call": call, "rays": case.rays,
               "lead_shape": list(case.lead), "samples": case.samples, "channels": case.channels,
               "force_background": case.force_background, "description": case.describe(),
               "bytes_model": bytes_model(case)[pass_name], "output_bytes": output_bytes(case, pass_name)}
        rows[label] = row
        step = make_step(case, pass_name, impl, call, inputs)
        try:
            row["peak_bytes"] = timing.warm_up_with_peak_memory(step, device=device, warmup=args.warmup)
        except Exception as error:  # noqa: BLE001  (a row that cannot run is reported, and fails the run)
            row["error"] = f"{type(error).__name__}: {error}"
            continue
        row["peak_mib"] = row["peak_bytes"] / memory.MIB
        row["extra_mib"] = max(0, row["peak_bytes"] - row["output_bytes"]) / memory.MIB
        steps[label] = step
        repeats[label] = args.repeats if impl == "kernel" else min(args.repeats, args.reference_repeats)
        gc.collect()
    if steps:
        measured = timing.time_interleaved_unequal(steps, repeats, device=device, max_seconds=args.max_seconds)
        for label, result in measured.items():
            add_bandwidth(rows[label], result, copy)
    for row in rows.values():
        status = row.get("error") or f"{row['median_ms']:.2f} ms ({row['repeats']} repeats)"
        print(f"  {case.name:<12} {pass_name:<16} {row['impl']:<11} {status}", flush=True)
    measured_row, baseline_row = rows.values()
    compare_rows(case, measured_row, baseline_row)
    return [measured_row, baseline_row]


def add_bandwidth(row: Dict[str, object], result: Dict[str, object], copy) -> None:
    row.update(result)
    row["gb_per_s"] = row["bytes_model"] / (row["median_ms"] * 1e-3) / 1e9
    row["pct_copy_bw"] = 100.0 * row["gb_per_s"] / copy["gb_per_s"]
    row["pct_copy_bw_preallocated"] = 100.0 * row["gb_per_s"] / copy["copy_"]["gb_per_s"]


def compare_rows(case: Case, measured: Dict[str, object], baseline: Dict[str, object]) -> None:
    if case.slice_call:
        if "median_ms" in measured and "median_ms" in baseline:
            measured["slice_over_raw"] = measured["median_ms"] / baseline["median_ms"]
        return
    report.compare_to_reference(measured, baseline)
    if "extra_mib" in measured and "extra_mib" in baseline:
        measured["extra_mem_ratio"] = baseline["extra_mib"] / measured["extra_mib"] if measured["extra_mib"] else math.inf


def evaluate_targets(rows: List[Dict[str, object]], device_type: str) -> report.Targets:
    by_key = {(r["case"], r["pass"], r["impl"]): r for r in rows}
    targets = report.Targets()
    kernel = by_key.get(("train_stage1", "forward_backward", "kernel"))
    if kernel is not None and device_type == "cpu":
        targets.check(f"train_stage1 fwd+bwd kernel >= {CPU_SPEEDUP_TARGET:g}x the reference", kernel, "speedup",
                      CPU_SPEEDUP_TARGET, f"speed>={CPU_SPEEDUP_TARGET:g}x")
        targets.check("train_stage1 fwd+bwd reference extra memory >= 3x the kernel's", kernel, "extra_mem_ratio",
                      3.0, "extra mem>=3x")
        targets.check("train_stage1 fwd+bwd kernel >= 50% of copy bandwidth", kernel, "pct_copy_bw", 50.0, "bw>=50%")
    elif kernel is not None:
        targets.check("train_stage1 fwd+bwd kernel >= 70% of copy bandwidth", kernel, "pct_copy_bw", 70.0, "bw>=70%")
        targets.check("train_stage1 fwd+bwd kernel >= 3x the reference", kernel, "speedup", 3.0, "speed>=3x")
    slices = by_key.get(("slice_call", "forward_backward", "slice call"))
    if slices is not None:
        targets.check(f"slice call <= {SLICE_RATIO_TARGET:.2f} x raw call time", slices, "slice_over_raw",
                      SLICE_RATIO_TARGET, f"slice/raw<={SLICE_RATIO_TARGET:.2f}", at_most=True)
    return targets


def print_report(cases: List[Case], rows: List[Dict[str, object]]) -> None:
    print()
    report.print_table_and_errors(rows, [
        ("case", "case", ""), ("pass", "pass", ""), ("impl", "impl", ""), ("median_ms", "median ms", ".2f"),
        ("speedup", "speedup", ".2f"), ("slice_over_raw", "slice/raw", ".2f"), ("peak_mib", "peak MiB", ".1f"),
        ("mem_ratio", "mem ratio", ".2f"), ("extra_mib", "extra MiB", ".1f"), ("extra_mem_ratio", "extra ratio", ".2f"),
        ("gb_per_s", "GB/s", ".2f"), ("pct_copy_bw", "% copy bw", ".1f"), ("repeats", "n", ""),
        ("targets", "targets", "")])
    for case in cases:
        print(f"case {case.name}: {case.describe()}; byte model "
              + ", ".join(f"{p} {bytes_model(case)[p] / 1e6:.1f} MB" for p in case.passes))
    print("peak MiB includes what the step returns; extra MiB is the peak beyond it (the step's workspace)")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_arguments(parser, "render_speed", repeats=10, quick_repeats=3, max_seconds=3.0,
                             cases=[c.name for c in make_cases(False)], bandwidth=True)
    parser.add_argument("--reference-repeats", type=int, default=5,
                        help="at most this many timed calls of the slow row, and so rounds (default 5)")
    args = run.finish_arguments(parser.parse_args(argv))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = run.begin_run("render_speed", args)
    if started is None:
        return 2
    device, copy = started["device"], started["copy"]
    huge_pages = machine.huge_pages_probe()
    print(machine.huge_pages_note(huge_pages))
    names = run.selected([c.name for c in make_cases(args.quick)], args.cases)
    cases = [c for c in make_cases(args.quick) if c.name in names]
    rows: List[Dict[str, object]] = []
    for case in cases:
        inputs = make_inputs(case, device)
        for pass_name in case.passes:
            rows += measure_pass(case, pass_name, inputs, args, device, copy)
        del inputs
        gc.collect()
    targets = report.Targets() if args.quick else evaluate_targets(rows, device.type)
    print_report(cases, rows)
    rss = machine.max_rss_mib()
    if rss is not None:
        print(f"process peak resident memory: {rss / 1024:.2f} GiB")
    print(machine.huge_pages_note(huge_pages))
    targets.print(f"targets ({device.type})" + (" (not evaluated: --quick run)" if args.quick else ""))
    path = report.write_json(args.json, {
        "benchmark": "render_speed", "huge_pages": huge_pages,
        "settings": {"device": str(device), "quick": args.quick, "repeats": args.repeats,
                     "reference_repeats": args.reference_repeats, "warmup": args.warmup,
                     "max_seconds": args.max_seconds, "huge_pages": huge_pages["on"], "cases": names},
        "extension": {"status": started["ext"].describe(), **started["ext_file"]},
        "peak_memory_selfcheck": started["memory_check"], "copy_bandwidth": copy,
        "byte_model": "docs/kernels.md section 1.10", "process_max_rss_mib": rss,
        "results": rows, "targets": targets.results, "targets_met": targets.met,
    }, device=device)
    print(f"wrote {path}")
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
