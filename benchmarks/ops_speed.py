"""Speed, peak memory and bandwidth of the compiled ops (impl="kernel") against the pure-PyTorch
reference (impl="reference"), on StyleGAN2-sized work, with pass/fail targets.

    python benchmarks/ops_speed.py [--device cpu|cuda] [--repeats N] [--json PATH] [--quick]

Cases (float32, NCHW contiguous; k = make_kernel([1, 3, 3, 1])):
  upsample    upsample2d(x [4, 256, 64, 64], k, 2): k * 4, up 2, pads (2, 1) -> [4, 256, 128, 128]
  blur        blur2d(x [4, 64, 256, 256], k, (2, 2)) -> [4, 64, 257, 257] (the blur before a 3x3
              stride-2 conv; the main blur case)
  blur_p11    blur2d(x [4, 64, 256, 256], k, (1, 1)) -> [4, 64, 255, 255] (the blur after a transposed
              conv; nearly the same work as `blur`, reported for completeness, no target; forward
              only unless --cases names it, to keep the default run short)
  downsample  downsample2d(x [4, 128, 128, 128], k, 2): pads (1, 1) -> [4, 128, 64, 64]
  bias_act    fused_leaky_relu(x [4, 512, 64, 64], bias [512])
  film_siren  film_siren(x_lin [1, 98304, 256], gamma [1, 256], beta [1, 256]): one FiLM-SIREN layer of
              one image of the official stage-1 step (64 x 64 rays x 24 samples, width 256); gamma
              ~ 15 N(0, 1) + 30 as the renderer's, and gamma takes the "bias" role below (its
              gradient is computed with x's)

Passes (each timed as one step):
  forward           out = op(x); inputs do not require grad (no graph is recorded)
  forward_backward  x (and bias) require grad; out = op(x); autograd.grad(out, (x[, bias]), cot) with a
                    fixed random cotangent `cot`
  double_backward   the R1 / path-length pattern: g = autograd.grad(out, x, cot, create_graph=True);
                    (g * w).sum().backward() with a fixed random `w`. The cotangent is a leaf that
                    requires grad (as in a network, where it depends on later layers' parameters):
                    upfirdn2d is linear and bias_act's gradient is piecewise constant in x, so
                    d(sum(g * w))/dx is identically zero and, with a constant cotangent, g would not
                    even require grad for upfirdn2d (backward() would raise). With cot requiring grad,
                    the second backward runs the op's double backward (gradient with respect to cot).
                    Leaf .grad fields are cleared before every step (untimed).

Numbers per row: median wall time over the repeats (after warm-up; at least 3 repeats, fewer than
--repeats when a measurement exceeds --max-seconds; on CPU the profiled memory call is the first
warm-up call and, for steps slower than 1 s, the only one), speedup = reference median / kernel median,
peak memory (see benchmarks/bench/memory.py: CUDA allocator peak, or on CPU the peak of the running sum of
the profiler's allocation events, both above what was held before the step), achieved GB/s from a
minimal-traffic byte model and that as % of the copy bandwidth measured in the same run (median of a
large tensor clone, read + write bytes).

Byte model (minimal traffic, the op's passes only; the (g * w).sum() of double_backward is not counted):
  upfirdn2d: forward reads the input and writes the output once (in + out bytes); its backward is
             one upfirdn2d the other way (out + in bytes); the double backward one more forward.
             forward = 1 x (in + out), forward_backward = 2 x, double_backward = 3 x.
  bias_act:  forward reads x, writes y (8 B/element fp32); backward reads dy and y, writes dx
             (12 B/element); double backward reads ddx and y, writes ddy (12 B/element).
             forward = 8, forward_backward = 20, double_backward = 32 B/element.
  film_siren: forward reads x_lin, writes y (8 B/element); backward reads dy and x_lin, writes dx
             (12); double backward reads ddx, dy and x_lin, writes d(dy) and d(x_lin) (20).
             forward = 8, forward_backward = 20, double_backward = 40 B/element.

Targets (reported, never an exit status):
  cpu:  bias_act forward_backward speedup >= 2x; upsample and downsample forward_backward >= 1.5x;
        blur forward_backward >= 1.0x; kernel peak memory <= reference peak memory in every row.
  cuda: bias_act (forward and forward_backward) >= 70% of copy bandwidth; kernel faster than the
        reference (speedup > 1) in every row.
"""
from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

from bench import machine, report, run, timing  # noqa: E402

run.use_this_checkout(ROOT)
from stylesdf_fast.ops import blur2d, downsample2d, film_siren, fused_leaky_relu, make_kernel, upsample2d  # noqa: E402

PASSES = ("forward", "forward_backward", "double_backward")
IMPLS = ("kernel", "reference")


@dataclass
class Case:
    name: str
    kind: str  # "upfirdn2d" | "bias_act" | "film_siren"
    shape: Tuple[int, ...]
    description: str
    op: Callable  # op(x, bias, impl) -> tensor
    note: str = ""
    default_passes: Tuple[str, ...] = PASSES  # all passes run when --cases names the case


def make_cases(quick: bool, device) -> List[Case]:
    kernel = make_kernel([1, 3, 3, 1]).to(device)
    shapes = {
        "upsample": (1, 8, 16, 16) if quick else (4, 256, 64, 64),
        "blur": (1, 4, 32, 32) if quick else (4, 64, 256, 256),
        "downsample": (1, 8, 32, 32) if quick else (4, 128, 128, 128),
        "bias_act": (2, 16, 16, 16) if quick else (4, 512, 64, 64),
        "film_siren": (1, 512, 32) if quick else (1, 64 * 64 * 24, 256),
    }
    film_beta = torch.randn(shapes["film_siren"][0], shapes["film_siren"][-1],
                            generator=torch.Generator().manual_seed(1)).to(device)
    return [
        Case("upsample", "upfirdn2d", shapes["upsample"], "upsample2d(x, k, 2): k*4, up 2, pad (2, 1)",
             lambda x, b, impl: upsample2d(x, kernel, 2, impl=impl)),
        Case("blur", "upfirdn2d", shapes["blur"], "blur2d(x, k, (2, 2))",
             lambda x, b, impl: blur2d(x, kernel, (2, 2), impl=impl),
             note="pad (2, 2): the blur before a 3x3 stride-2 conv (main blur case)"),
        Case("blur_p11", "upfirdn2d", shapes["blur"], "blur2d(x, k, (1, 1))",
             lambda x, b, impl: blur2d(x, kernel, (1, 1), impl=impl),
             note="pad (1, 1): the blur after a transposed conv; same work as `blur` within ~1.6%, no target; "
                  "forward only by default (--cases blur_p11 runs every pass)",
             default_passes=("forward",)),
        Case("downsample", "upfirdn2d", shapes["downsample"], "downsample2d(x, k, 2): down 2, pad (1, 1)",
             lambda x, b, impl: downsample2d(x, kernel, 2, impl=impl)),
        Case("bias_act", "bias_act", shapes["bias_act"], "fused_leaky_relu(x, bias[C], 0.2, sqrt(2))",
             lambda x, b, impl: fused_leaky_relu(x, b, impl=impl)),
        Case("film_siren", "film_siren", shapes["film_siren"], "film_siren(x_lin, gamma[B, C], beta[B, C])",
             lambda x, b, impl: film_siren(x, b, film_beta, impl=impl),
             note="one FiLM-SIREN layer of one image of the official stage-1 step; no target"),
    ]


def bytes_model(case: Case, out_shape, element_size: int) -> Dict[str, int]:
    numel_in = 1
    for s in case.shape:
        numel_in *= s
    if case.kind in ("bias_act", "film_siren"):
        per_element = ({"forward": 8, "forward_backward": 20, "double_backward": 32} if case.kind == "bias_act"
                       else {"forward": 8, "forward_backward": 20, "double_backward": 40})
        return {p: numel_in * per_element[p] * element_size // 4 for p in PASSES}
    numel_out = 1
    for s in out_shape:
        numel_out *= s
    unit = (numel_in + numel_out) * element_size
    return {"forward": unit, "forward_backward": 2 * unit, "double_backward": 3 * unit}


def make_step(case: Case, pass_name: str, impl: str, tensors: Dict[str, torch.Tensor]):
    """(step, setup) closures for one (case, pass, impl)."""
    x, bias, cot, w = tensors["x"], tensors.get("bias"), tensors["cot"], tensors["w"]
    if pass_name == "forward":
        def step():
            return case.op(x, bias, impl)
        return step, None

    x_leaf = x.detach().clone().requires_grad_(True)
    bias_leaf = None if bias is None else bias.detach().clone().requires_grad_(True)
    leaves = [t for t in (x_leaf, bias_leaf) if t is not None]

    if pass_name == "forward_backward":
        def step():
            out = case.op(x_leaf, bias_leaf, impl)
            return torch.autograd.grad(out, leaves, cot)
        return step, None

    cot_leaf = cot.detach().clone().requires_grad_(True)
    all_leaves = leaves + [cot_leaf]

    def setup():
        for t in all_leaves:
            t.grad = None

    def step():
        out = case.op(x_leaf, bias_leaf, impl)
        (g,) = torch.autograd.grad(out, x_leaf, cot_leaf, create_graph=True)
        (g * w).sum().backward()
        return None
    return step, setup


def run_case(case: Case, args, device, copy_gbps: float, passes=PASSES) -> List[Dict[str, object]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device)
    bias = None
    if case.kind == "bias_act":
        bias = torch.randn(case.shape[1], generator=generator).to(device)
    elif case.kind == "film_siren":   # gamma [B, C], at the renderer's scale
        bias = (15 * torch.randn(case.shape[0], case.shape[-1], generator=generator) + 30).to(device)
    with torch.no_grad():
        out_shape = tuple(case.op(x, bias, "reference").shape)
    tensors = {
        "x": x,
        "bias": bias,
        "cot": torch.randn(out_shape, generator=generator).to(device),
        "w": torch.randn(case.shape, generator=generator).to(device),
    }
    model = bytes_model(case, out_shape, x.element_size())
    rows = []
    for pass_name in passes:
        for impl in IMPLS:
            row: Dict[str, object] = {
                "case": case.name, "pass": pass_name, "impl": impl, "input_shape": list(case.shape),
                "output_shape": list(out_shape), "description": case.description, "bytes_model": model[pass_name],
            }
            try:
                step, setup = make_step(case, pass_name, impl, tensors)
                measured = timing.measure_step(step, device=device, repeats=args.repeats, warmup=args.warmup,
                                               setup=setup, max_seconds=args.max_seconds)
                row.update(measured)
                row["gb_per_s"] = model[pass_name] / (measured["median_ms"] * 1e-3) / 1e9
                row["pct_copy_bw"] = 100.0 * row["gb_per_s"] / copy_gbps if copy_gbps else None
                del step, setup
            except Exception as error:  # noqa: BLE001 (a failing row is reported, the run goes on)
                row["error"] = f"{type(error).__name__}: {error}"
            gc.collect()
            rows.append(row)
            status = row.get("error") or f"{row['median_ms']:.2f} ms ({row['repeats']} repeats)"
            print(f"  {case.name:<10} {pass_name:<16} {impl:<9} {status}", flush=True)
        report.compare_to_reference(rows[-2], rows[-1])
    del tensors, x, bias
    gc.collect()
    return rows


def evaluate_targets(rows: List[Dict[str, object]], device_type: str) -> report.Targets:
    """The targets of the full-size work, written onto the kernel rows they judge."""
    by_key = {(r["case"], r["pass"], r["impl"]): r for r in rows}
    targets = report.Targets()
    kernels = [r for r in rows if r["impl"] == "kernel"]
    if device_type == "cpu":
        for case, threshold in (("bias_act", 2.0), ("upsample", 1.5), ("downsample", 1.5), ("blur", 1.0)):
            kernel = by_key.get((case, "forward_backward", "kernel"))
            if kernel is not None:
                targets.check(f"{case} forward_backward speedup >= {threshold}x", kernel, "speedup", threshold,
                              f"speed>={threshold:g}x")
        for kernel in kernels:
            reference = by_key.get((kernel["case"], kernel["pass"], "reference"))
            limit = None if reference is None else reference.get("peak_bytes")
            targets.check(f"{kernel['case']} {kernel['pass']} kernel peak memory <= reference", kernel, "peak_bytes",
                          limit if limit is not None else float("-inf"), "mem", at_most=True)
    elif device_type == "cuda":
        for pass_name in ("forward", "forward_backward"):
            kernel = by_key.get(("bias_act", pass_name, "kernel"))
            if kernel is not None:
                targets.check(f"bias_act {pass_name} >= 70% of copy bandwidth", kernel, "pct_copy_bw", 70.0, "bw>=70%")
        for kernel in kernels:
            targets.check(f"{kernel['case']} {kernel['pass']} kernel faster than reference", kernel, "speedup", 1.0,
                          "faster")
    return targets


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_arguments(parser, "ops_speed", repeats=10, quick_repeats=3, max_seconds=3.0,
                             cases=("upsample", "blur", "blur_p11", "downsample", "bias_act", "film_siren"), bandwidth=True)
    args = run.finish_arguments(parser.parse_args(argv))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    preamble = run.begin_run("ops_speed", args)
    if preamble is None:
        return 2
    device, env, ext = preamble["device"], preamble["env"], preamble["ext"]
    ext_file, memory_check, copy = preamble["ext_file"], preamble["memory_check"], preamble["copy"]
    copy_gbps = copy["gb_per_s"]

    cases = make_cases(args.quick, device)
    if args.cases:
        wanted = run.selected([c.name for c in cases], args.cases)
        cases = [c for c in cases if c.name in wanted]
    rows: List[Dict[str, object]] = []
    for case in cases:
        passes = PASSES if args.cases else case.default_passes
        rows.extend(run_case(case, args, device, copy_gbps, passes))

    # the targets are defined for the full-size work; a --quick smoke run only checks that it all runs
    targets = report.Targets() if args.quick else evaluate_targets(rows, device.type)
    ext_file_after = machine.extension_file_info()
    extension_changed = ext_file_after.get("file_sha256") != ext_file.get("file_sha256")
    if extension_changed:
        print("warning: the compiled extension file changed on disk during the run (rebuilt?); this process "
              "kept the library it loaded at start, whose hash is the one recorded")

    print()
    columns = [
        ("case", "case", ""), ("pass", "pass", ""), ("impl", "impl", ""), ("median_ms", "median ms", ".2f"),
        ("speedup", "speedup", ".2f"), ("peak_mib", "peak MiB", ".1f"), ("gb_per_s", "GB/s", ".2f"),
        ("pct_copy_bw", "% copy bw", ".1f"), ("repeats", "n", ""), ("targets", "targets", ""),
    ]
    report.print_table_and_errors(rows, columns)
    for case in cases:
        if case.note:
            print(f"note: {case.name}: {case.note}")

    print()
    targets.print(f"targets ({device.type}{', not evaluated: --quick run' if args.quick else ''})")

    payload = {
        "benchmark": "ops_speed",
        "load_average_at_start": env["load_average_1_5_15"],
        "settings": {"device": str(device), "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
                     "max_seconds": args.max_seconds, "dtype": "float32", "cases": [c.name for c in cases]},
        "extension": {"loaded": ext.loaded, "cuda": ext.cuda, "built_with_torch": ext.built_with_torch,
                      "reason": ext.reason, **ext_file},
        "extension_file_changed_during_run": extension_changed,
        "peak_memory_method": (
            "cpu: peak of the running sum of torch.profiler(profile_memory=True) '[memory]' allocation events "
            "(raw kineto events, sorted by time) during one step" if device.type == "cpu" else
            "cuda: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus memory_allocated() before"),
        "peak_memory_selfcheck": memory_check,
        "byte_model": {
            "upfirdn2d": "forward: in + out bytes; forward_backward: 2 x; double_backward: 3 x",
            "bias_act": "forward 8, forward_backward 20, double_backward 32 bytes per element (fp32)",
        },
        "copy_bandwidth": copy,
        "cases": [{"name": c.name, "kind": c.kind, "input_shape": list(c.shape), "description": c.description,
                   "note": c.note} for c in cases],
        "results": rows,
        "targets": targets.results,
        "targets_met": targets.met,
        "targets_total": len(targets.results),
    }
    path = report.write_json(args.json, payload, device=device)
    print(f"\nwrote {path}")
    # a missed target is a finding, a row that could not run is a breakage
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
