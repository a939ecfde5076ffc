"""Speed, peak memory and bandwidth of the fused volume renderer `sdf_volume_render` (impl="kernel")
against its pure-PyTorch reference (impl="reference"), on StyleSDF-sized work, with pass/fail targets.

    python benchmarks/render_speed.py [--device cpu|cuda] [--repeats N] [--json PATH] [--quick]
                                      [--cases train_stage1,video,surface] [--threads N] [--max-seconds S]

This is the op-level section. An end-to-end section (the StyleSDF models rendering and training with
the fused op against the reference) will be added later.

Cases (float32; R rays, S samples per ray, C feature channels):
  train_stage1  4 images of 64x64 rays (R = 16384), S = 24, C = 256: the first training stage.
                The SDF network's packed output raw [4, 64, 64, 24, 4 + C] (rgb = raw[..., :3],
                sdf = raw[..., 3], features = raw[..., 4:]) requires grad, and so does beta. Both
                implementations take raw, as StyleSDF's volume_integration does: the kernel through
                sdf_volume_render_raw, the reference by slicing it.
                Passes: forward (graph recorded, as in training) and forward_backward.
  video         1 image of 64x64 rays, S = 64, C = 256, force_background=True, forward only under
                torch.no_grad() (rendering a video / inference).
  surface       128x128 rays, S = 128, features=None (C = 0), force_background=True, forward only under
                torch.no_grad() (high-resolution surface / depth rendering).
  video and surface take their inputs from the same raw layout [..., S, 4 + C] (C = 0 for surface).
  z_vals are stratified depths in [0.88, 1.12] (StyleSDF's near / far), ray_norm in [1, 1.1],
  beta = 0.1 (StyleSDF's initial value), the sdf channel crosses zero mid-ray.

Passes (each timed as one step):
  forward           out = sdf_volume_render_raw(raw, ...) (under no_grad for video and surface)
  forward_backward  out = sdf_volume_render_raw(raw, ...); torch.autograd.grad((out.rgb, out.features),
                    (raw, beta), (g_rgb, g_features)) with fixed random cotangents on the rgb and
                    features outputs (none on the weights). The gradient is taken with respect to the
                    raw tensor (the network's output), which is what training back-propagates: the
                    reference's gradients of sdf, rgb and features are assembled into it by autograd
                    (the views' backward: one raw-sized zero-filled tensor per slice, then summed),
                    while the kernel writes the raw gradient once. Both are in the timed step.

Numbers per row: median wall time over the repeats (after warm-up; at least 3 repeats, fewer than
--repeats when a measurement exceeds --max-seconds, and at most --reference-repeats for the slow
reference; on CPU the profiled memory call is the first warm-up call and, for steps slower than 1 s,
the only one), speedup = reference median / kernel median, peak extra memory of one step (memory
allocated during the step above what was held before it, the step's own outputs included while alive;
see benchmarks/_common.py: CUDA allocator peak, or on CPU the peak of the running sum of the
profiler's allocation events), mem ratio = reference peak / kernel peak, extra mem ratio = the same
for the peak beyond the tensors the step returns (the outputs and gradients every implementation
must allocate: for train_stage1 the 390 MiB raw gradient), achieved GB/s from the
byte model below and that as % of the copy bandwidth measured in the same run (median of a large
tensor clone, read + write bytes; the copy_-into-a-preallocated-tensor figure is printed too and its
percentage stored in the JSON). Before timing, each case runs both implementations once on the same
inputs and records the largest |kernel - reference| of every output (and gradient).

Byte model (KERNELS.md section 1: minimal traffic per ray, fp32):
  forward           4 * [S (C + 5) + (C + 3)] bytes  (sdf, rgb, features, z read per sample;
                                                      rgb and features maps written per ray)
  backward          4 * [(C + 3) + S (C + 5) + S (C + 4)] bytes  (cotangents read, inputs re-read,
                                                      the raw gradient [S, 4 + C] written)
  forward_backward  the sum of the two.
  (The weights output and ray_norm are not counted, as in KERNELS.md; they matter only when C is
  small, e.g. `surface`, whose GB/s is therefore a slight underestimate.)

Targets (reported, never an exit status), all on train_stage1 forward_backward:
  cpu:  kernel >= 4x faster than the reference; reference peak extra memory (beyond the returned
        tensors) >= 3x the kernel's;
        kernel achieved bandwidth >= 50% of the copy (clone) bandwidth.
  cuda: kernel achieved bandwidth >= 70% of the copy (clone) bandwidth; kernel >= 3x faster than
        the reference.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
for _path in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch  # noqa: E402

import _common  # noqa: E402

try:
    from stylesdf_fast.ops import sdf_volume_render_raw  # noqa: E402
    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as _error:  # noqa: BLE001 (reported by main with a hint)
    sdf_volume_render_raw = None
    _IMPORT_ERROR = _error

PASSES = ("forward", "forward_backward")
IMPLS = ("kernel", "reference")
NEAR, FAR = 0.88, 1.12
BETA = 0.1


@dataclass
class Case:
    name: str
    lead: Tuple[int, ...]  # leading (ray) dims
    samples: int
    channels: int  # 0: features=None
    train: bool  # inputs require grad (forward records the graph; forward_backward is run)
    force_background: bool
    description: str
    note: str = ""

    @property
    def rays(self) -> int:
        return math.prod(self.lead)

    @property
    def passes(self) -> Tuple[str, ...]:
        return PASSES if self.train else ("forward",)


def make_cases(quick: bool) -> List[Case]:
    if quick:
        return [
            Case("train_stage1", (2, 8, 8), 8, 16, True, False, "[2, 8, 8] rays, S=8, C=16, fwd+bwd (quick)"),
            Case("video", (1, 8, 8), 16, 16, False, True, "[1, 8, 8] rays, S=16, C=16, no_grad (quick)"),
            Case("surface", (16, 16), 16, 0, False, True, "[16, 16] rays, S=16, C=0, no_grad (quick)"),
        ]
    return [
        Case("train_stage1", (4, 64, 64), 24, 256, True, False,
             "4 x 64x64 rays, S=24, C=256, views of raw [..., 4+C], fwd (graph) and fwd+bwd",
             note="forward is timed with the autograd graph recorded (inputs require grad), as in training"),
        Case("video", (1, 64, 64), 64, 256, False, True,
             "1 x 64x64 rays, S=64, C=256, force_background, no_grad"),
        Case("surface", (128, 128), 128, 0, False, True,
             "128x128 rays, S=128, features=None, force_background, no_grad",
             note="C = 0: the byte model leaves out the weights output (1 of 6 floats per sample here), "
                  "so GB/s is an underestimate"),
    ]


def bytes_model(case: Case, element_size: int = 4) -> Dict[str, int]:
    s, c = case.samples, case.channels
    per_ray_forward = s * (c + 5) + (c + 3)
    per_ray_backward = (c + 3) + s * (c + 5) + s * (c + 4)
    scale = case.rays * element_size
    return {"forward": per_ray_forward * scale, "backward": per_ray_backward * scale,
            "forward_backward": (per_ray_forward + per_ray_backward) * scale}


def output_bytes(case: Case, pass_name: str, element_size: int = 4) -> int:
    """Bytes of what one step returns (counted in its peak memory while alive)."""
    r, s, c = case.rays, case.samples, case.channels
    if pass_name == "forward":
        return r * (3 + c + s) * element_size
    return (r * s * (4 + c) + 1) * element_size  # gradients of raw [..., S, 4 + C] and beta


def make_inputs(case: Case, device) -> Dict[str, object]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    lead, s, c = case.lead, case.samples, case.channels
    raw = torch.randn(*lead, s, 4 + c, generator=generator)
    crossing = torch.linspace(0.3, -0.3, s)  # the surface lies mid-ray
    raw[..., 3] = crossing + 0.05 * torch.randn(*lead, s, generator=generator)
    jitter = torch.rand(*lead, s, generator=generator)
    z_vals = NEAR + (FAR - NEAR) * (torch.arange(s, dtype=torch.float32) + jitter) / s  # stratified, increasing
    ray_norm = 1.0 + 0.1 * torch.rand(*lead, generator=generator)
    g_rgb = torch.randn(*lead, 3, generator=generator)
    g_features = torch.randn(*lead, c, generator=generator) if c else None

    raw = raw.to(device).requires_grad_(case.train)
    beta = torch.full((1,), BETA, device=device).requires_grad_(case.train)
    return {
        "raw": raw,
        "rgb": raw[..., :3],
        "sdf": raw[..., 3],
        "features": raw[..., 4:] if c else None,
        "z_vals": z_vals.to(device),
        "ray_norm": ray_norm.to(device),
        "beta": beta,
        "g_rgb": g_rgb.to(device),
        "g_features": None if g_features is None else g_features.to(device),
    }


def render(case: Case, inputs: Dict[str, object], impl: str):
    return sdf_volume_render_raw(inputs["raw"], inputs["z_vals"], inputs["ray_norm"], inputs["beta"],
                                 force_background=case.force_background, impl=impl)


def make_step(case: Case, pass_name: str, impl: str, inputs: Dict[str, object]):
    if pass_name == "forward":
        if case.train:
            return lambda: render(case, inputs, impl)

        def step():
            with torch.no_grad():
                return render(case, inputs, impl)
        return step

    wrt = [inputs["raw"], inputs["beta"]]  # the network's output and the learnable beta
    outputs = ["rgb"] + (["features"] if inputs["features"] is not None else [])
    cotangents = [inputs["g_" + name] for name in outputs]

    def step():
        out = render(case, inputs, impl)
        return torch.autograd.grad([getattr(out, name) for name in outputs], wrt, cotangents)
    return step


def _max_abs_diff(a, b) -> Optional[float]:
    if a is None or b is None:
        return None
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def _relative(entry: Dict[str, object]) -> float:
    diff, scale = entry.get("max_abs_diff"), entry.get("max_abs_reference")
    if diff is None:
        return 0.0
    return diff / scale if scale else diff


def compare_impls(case: Case, inputs: Dict[str, object]) -> Dict[str, object]:
    """One run of each implementation on the same inputs: max |kernel - reference| per output (and per
    gradient for training cases), with the largest |reference| for scale."""
    result: Dict[str, object] = {}
    try:
        with torch.no_grad():
            outs = {impl: render(case, inputs, impl) for impl in IMPLS}
        for name in ("rgb", "features", "weights"):
            k, r = getattr(outs["kernel"], name), getattr(outs["reference"], name)
            if r is not None:
                result[f"forward.{name}"] = {"max_abs_diff": _max_abs_diff(k, r),
                                             "max_abs_reference": r.abs().max().item()}
        del outs
        if case.train:
            grads = {impl: make_step(case, "forward_backward", impl, inputs)() for impl in IMPLS}
            names = ("raw", "beta")
            for name, k, r in zip(names, grads["kernel"], grads["reference"]):
                result[f"grad.{name}"] = {"max_abs_diff": _max_abs_diff(k, r),
                                          "max_abs_reference": r.abs().max().item()}
            del grads
    except Exception as error:  # noqa: BLE001 (reported, the timing goes on)
        result["error"] = f"{type(error).__name__}: {error}"
    gc.collect()
    return result


def run_case(case: Case, args, device, copy: Dict[str, object], passes) -> Tuple[List[Dict[str, object]], Dict]:
    inputs = make_inputs(case, device)
    model = bytes_model(case)
    check = compare_impls(case, inputs)
    if "error" in check:
        print(f"  {case.name:<12} check: {check['error']}", flush=True)
    else:
        worst = max(check.items(), key=lambda item: _relative(item[1]))
        print(f"  {case.name:<12} check: largest max |kernel - reference| relative to max |reference|: "
              f"{_relative(worst[1]):.3g} ({worst[0]}: {worst[1]['max_abs_diff']:.3g} of "
              f"{worst[1]['max_abs_reference']:.3g})", flush=True)
    rows: List[Dict[str, object]] = []
    for pass_name in passes:
        for impl in IMPLS:
            row: Dict[str, object] = {
                "case": case.name, "pass": pass_name, "impl": impl, "rays": case.rays, "lead_shape": list(case.lead),
                "samples": case.samples, "channels": case.channels, "force_background": case.force_background,
                "grad_mode": case.train, "description": case.description, "bytes_model": model[pass_name],
                "output_bytes": output_bytes(case, pass_name),
            }
            repeats = args.repeats if impl == "kernel" else min(args.repeats, args.reference_repeats)
            try:
                step = make_step(case, pass_name, impl, inputs)
                timing = _common.measure_step(step, device=device, repeats=repeats, warmup=args.warmup,
                                              max_seconds=args.max_seconds)
                row.update(timing)
                # what the step held beyond the tensors it returns (its workspace), for comparison
                row["peak_excluding_outputs_mib"] = max(0, timing["peak_bytes"] - row["output_bytes"]) / _common.MIB
                row["gb_per_s"] = model[pass_name] / (timing["median_ms"] * 1e-3) / 1e9
                row["pct_copy_bw"] = 100.0 * row["gb_per_s"] / copy["gb_per_s"] if copy["gb_per_s"] else None
                prealloc = copy["copy_"]["gb_per_s"]
                row["pct_copy_bw_preallocated"] = 100.0 * row["gb_per_s"] / prealloc if prealloc else None
                del step
            except Exception as error:  # noqa: BLE001 (a failing row is reported, the run goes on)
                row["error"] = f"{type(error).__name__}: {error}"
            gc.collect()
            rows.append(row)
            status = row.get("error") or f"{row['median_ms']:.2f} ms ({row['repeats']} repeats)"
            print(f"  {case.name:<12} {pass_name:<16} {impl:<9} {status}", flush=True)
        kernel_row, reference_row = rows[-2], rows[-1]
        if "median_ms" in kernel_row and "median_ms" in reference_row:
            kernel_row["speedup"] = reference_row["median_ms"] / kernel_row["median_ms"]
        if kernel_row.get("peak_bytes") is not None and reference_row.get("peak_bytes") is not None:
            kernel_row["mem_ratio"] = (reference_row["peak_bytes"] / kernel_row["peak_bytes"]
                                       if kernel_row["peak_bytes"] > 0 else float("inf"))
            kernel_extra = kernel_row["peak_excluding_outputs_mib"]
            kernel_row["extra_mem_ratio"] = (reference_row["peak_excluding_outputs_mib"] / kernel_extra
                                             if kernel_extra > 0 else float("inf"))
    del inputs
    gc.collect()
    return rows, check


def evaluate_targets(rows: List[Dict[str, object]], device_type: str) -> List[Dict[str, object]]:
    """Each target: {"name", "case", "pass", "metric", "value", "threshold", "passed"}; also writes a short
    "targets" string onto the kernel rows involved."""
    by_key = {(r["case"], r["pass"], r["impl"]): r for r in rows}
    targets: List[Dict[str, object]] = []
    case, pass_name = "train_stage1", "forward_backward"
    kernel = by_key.get((case, pass_name, "kernel"))
    if kernel is None:
        return targets

    def add(metric, threshold, label, description):
        value = kernel.get(metric)
        passed = value is not None and value >= threshold
        targets.append({"name": f"{case} {pass_name} {description}", "case": case, "pass": pass_name,
                        "metric": metric, "value": value, "threshold": threshold, "passed": bool(passed)})
        text = f"{label} {'PASS' if passed else 'FAIL'}"
        kernel["targets"] = f"{kernel['targets']}; {text}" if kernel.get("targets") else text

    if device_type == "cpu":
        add("speedup", 4.0, "speed>=4x", "kernel >= 4x faster than reference")
        add("extra_mem_ratio", 3.0, "extra mem>=3x",
            "kernel peak extra memory (beyond the returned tensors) >= 3x smaller than reference")
        add("pct_copy_bw", 50.0, "bw>=50%", "kernel >= 50% of copy bandwidth")
    elif device_type == "cuda":
        add("pct_copy_bw", 70.0, "bw>=70%", "kernel >= 70% of copy bandwidth")
        add("speedup", 3.0, "speed>=3x", "kernel >= 3x faster than reference")
    return targets


def max_rss_mib() -> Optional[float]:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=_common.default_device())
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 10, 3 with --quick)")
    parser.add_argument("--reference-repeats", type=int, default=5,
                        help="at most this many timed repeats for the reference (default 5; it is slow and, "
                             "on CPU at the train_stage1 shape, allocates about a GB per call)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    parser.add_argument("--max-seconds", type=float, default=3.0,
                        help="stop timing a measurement after this many seconds once 3 repeats are done "
                             "(default 3; keeps slow CPU references short)")
    parser.add_argument("--json", default=None, help="output path (default benchmarks/render_speed_<device>.json)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--cases", default=None, help="comma-separated subset of train_stage1,video,surface")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="size of the copy-bandwidth tensor (default 256 MiB, 8 with --quick)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.copy_mib is None:
        args.copy_mib = 8 if args.quick else 256
    if args.json is None:
        args.json = str(Path(__file__).resolve().parent / f"render_speed_{args.device}.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if _IMPORT_ERROR is not None:
        print(f"render_speed: importing stylesdf_fast failed ({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}). "
              f"If the compiled extension is stale or being rebuilt, rebuild it, or set "
              f"STYLESDF_FAST_DISABLE_KERNELS=1 to import without it (the kernel rows then report errors)",
              file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("render_speed: --device cuda was asked for but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from stylesdf_fast import _extension

    ext = _extension.status()
    op_available = _common.torch_op_available("stylesdf_fast", "sdf_volume_render")
    env = _common.environment_metadata(device)
    print(f"render_speed: device {device} ({env['device_name']}), torch {env['torch']}, "
          f"{env['torch_threads']} threads, {'quick' if args.quick else 'full'} run, "
          f"load average at start {env['load_average_1_5_15']}")
    ext_file = _common.extension_file_info()
    print(f"extension: loaded={ext.loaded} cuda={ext.cuda} built_with_torch={ext.built_with_torch} "
          f"sdf_volume_render op={'yes' if op_available else 'MISSING'} file mtime {ext_file.get('file_mtime')} "
          f"sha256 {str(ext_file.get('file_sha256'))[:12]} {ext.reason}")

    memory_check = None
    if device.type == "cpu":
        memory_check = _common.check_cpu_peak_memory_method()
        print(f"peak-memory method (profiler allocation events, running-sum peak) self-check: "
              f"{'ok' if memory_check['ok'] else 'FAILED'} (expected {memory_check['expected_bytes']} B, "
              f"measured {memory_check['measured_bytes']} B)")
    else:
        print("peak-memory method: torch.cuda.max_memory_allocated after reset, minus memory allocated before")

    copy = _common.copy_bandwidth(device, size_mib=args.copy_mib, repeats=args.repeats)
    print(f"copy bandwidth ({args.copy_mib} MiB float32, read + write): clone {copy['clone']['gb_per_s']:.2f} GB/s "
          f"(reference for %), copy_ into a preallocated tensor {copy['copy_']['gb_per_s']:.2f} GB/s")

    cases = make_cases(args.quick)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {c.name for c in cases})
        if unknown:
            print(f"render_speed: unknown case(s) {unknown}; choose from {[c.name for c in cases]}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    rows: List[Dict[str, object]] = []
    checks: Dict[str, object] = {}
    for case in cases:
        case_rows, checks[case.name] = run_case(case, args, device, copy, case.passes)
        rows.extend(case_rows)

    # the targets are defined for the full-size work; a --quick smoke run only checks that it all runs
    targets = [] if args.quick else evaluate_targets(rows, device.type)
    ext_file_after = _common.extension_file_info()
    extension_changed = ext_file_after.get("file_sha256") != ext_file.get("file_sha256")
    if extension_changed:
        print("warning: the compiled extension file changed on disk during the run (rebuilt?); this process "
              "kept the library it loaded at start, whose hash is the one recorded")

    print()
    columns = [
        ("case", "case", ""), ("pass", "pass", ""), ("impl", "impl", ""), ("median_ms", "median ms", ".2f"),
        ("speedup", "speedup", ".2f"), ("peak_mib", "peak MiB", ".1f"), ("mem_ratio", "mem ratio", ".2f"),
        ("peak_excluding_outputs_mib", "extra MiB", ".1f"), ("extra_mem_ratio", "extra ratio", ".2f"),
        ("gb_per_s", "GB/s", ".2f"), ("pct_copy_bw", "% copy bw", ".1f"), ("repeats", "n", ""),
        ("targets", "targets", ""),
    ]
    _common.print_table(rows, columns)
    for r in rows:
        if r.get("error"):
            print(f"error: {r['case']} {r['pass']} {r['impl']}: {r['error']}")
    for case in cases:
        print(f"case {case.name}: {case.description}; byte model " + ", ".join(
            f"{p} {bytes_model(case)[p] / 1e6:.1f} MB" for p in case.passes))
        if case.note:
            print(f"note: {case.name}: {case.note}")
        check = checks[case.name]
        if "error" in check:
            print(f"  check: {check['error']}")
        else:
            print("  check max |kernel - reference|: " + ", ".join(
                f"{name} {c['max_abs_diff']:.2g}" for name, c in check.items()))
    print("peak MiB includes what the step returns, while alive (forward: the maps and weights; forward_backward: "
          "the gradients of raw and beta): "
          + ", ".join(f"{c.name} {p} {output_bytes(c, p) / _common.MIB:.1f} MiB" for c in cases for p in c.passes))
    if hasattr(os, "getloadavg"):
        print(f"load average at end {list(os.getloadavg())} (other processes on the cores make every number "
              f"noisier; compare with the load at start)")
    rss = max_rss_mib()
    if rss is not None:
        print(f"process peak resident memory: {rss / 1024:.2f} GiB")

    print()
    print(f"targets ({device.type}):")
    if not targets:
        print("  (not evaluated: --quick run)" if args.quick else "  (none defined for this device / selection)")
    for t in targets:
        value = t["value"]
        if value is None:
            shown = "n/a"
        elif t["metric"] in ("speedup", "mem_ratio", "extra_mem_ratio"):
            shown = f"{value:.2f}x"
        else:
            shown = f"{value:.1f}%"
        print(f"  [{'PASS' if t['passed'] else 'FAIL'}] {t['name']}: {shown}")
    passed = sum(t["passed"] for t in targets)
    print(f"  {passed}/{len(targets)} targets met")

    payload = {
        "benchmark": "render_speed",
        "section": "op",  # an end-to-end section with the models will be added later
        "load_average_at_start": env["load_average_1_5_15"],
        "settings": {"device": str(device), "quick": args.quick, "repeats": args.repeats,
                     "reference_repeats": args.reference_repeats, "warmup": args.warmup,
                     "max_seconds": args.max_seconds, "dtype": "float32", "cases": [c.name for c in cases]},
        "extension": {"loaded": ext.loaded, "cuda": ext.cuda, "built_with_torch": ext.built_with_torch,
                      "reason": ext.reason, "sdf_volume_render_op": op_available, **ext_file},
        "extension_file_changed_during_run": extension_changed,
        "peak_memory_method": (
            "cpu: peak of the running sum of torch.profiler(profile_memory=True) '[memory]' allocation events "
            "(raw kineto events, sorted by time) during one step" if device.type == "cpu" else
            "cuda: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() before"),
        "peak_memory_selfcheck": memory_check,
        "process_max_rss_mib": rss,
        "byte_model": {
            "forward": "4 * [S (C + 5) + (C + 3)] bytes per ray",
            "backward": "4 * [(C + 3) + S (C + 5) + S (C + 4)] bytes per ray",
            "forward_backward": "forward + backward",
        },
        "copy_bandwidth": copy,
        "cases": [{"name": c.name, "lead_shape": list(c.lead), "rays": c.rays, "samples": c.samples,
                   "channels": c.channels, "force_background": c.force_background, "grad": c.train,
                   "passes": list(c.passes), "description": c.description, "note": c.note,
                   "bytes_model": bytes_model(c), "check": checks[c.name]} for c in cases],
        "results": rows,
        "targets": targets,
        "targets_met": passed,
        "targets_total": len(targets),
    }
    path = _common.write_json(args.json, payload, device=device)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
