"""Training throughput: images per second and peak memory of one training iteration of each stage,
with our kernels (impl="kernel") vs the pure-PyTorch reference ops (impl="reference").

    python benchmarks/train_speed.py                       # CPU: the small preset (what the default run trains)
    python benchmarks/train_speed.py --shapes official      # the official shapes (GPU; very slow on CPU)
    python benchmarks/train_speed.py --quick               # smoke test at tiny shapes

Rows (one iteration = every phase due at that iteration, gradients, optimiser steps and the EMA update):
  stage1            D step (logistic + R1 + viewpoint) and G step (adversarial + viewpoint + eikonal +
                    minimal surface), batch1 images each
  stage2            D step and G step (non-saturating) at the decoder resolution, batch2 images
  stage2_lazy_reg   an iteration that also runs lazy R1 (every 16) and path-length regularisation
                    (every 4)
Variants: "kernel" (our ops: the fused FiLM-SIREN layers, the fused quadrature, the StyleGAN2 ops) and
"reference" (the eager PyTorch ops). speedup and mem ratio are against the reference row of the same case.
Timing: the variants of a case are built and warmed up together, then timed in interleaved rounds
(one iteration of each per round, rotating order), so that load changes on a shared machine fall on
every row alike; the median over rounds is reported, with every time in the JSON.
img/s = images of the G phase per second; peak = memory allocated during the iteration above what
was held before (CUDA allocator peak; on CPU the profiler's allocation events, see bench/memory.py).
Targets (issue 8, stage 1, reported, not an exit status): the kernel row >= 1.3x faster and with
>= 2x lower peak memory than the reference.
Shapes: "small" = the small preset (32x32 renderer, 16 samples, width 64, 64-px decoder, batch 4);
"official" = StyleSDF's per-GPU shapes (64x64 renderer, 24 samples, width 256, batch 4 for stage 1;
1024-px decoder, batch 8 in chunks of 2 for stage 2, as the FFHQ scripts).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

from bench import machine, memory, report, run, timing  # noqa: E402

run.use_this_checkout(Path(__file__).resolve().parent.parent)

SHAPES = {
    "small": dict(preset="small", batch1=4, chunk1=4, batch2=4, chunk2=4),
    "official": dict(preset="ffhq1024", batch1=4, chunk1=4, batch2=8, chunk2=2),
    "quick": dict(preset="small", size=32, renderer_size=16, width=32, depth=2, n_samples=8, channel_max=32,
                  d1_channel_max=32, batch1=2, chunk1=2, batch2=2, chunk2=2),
}
CASES = {"stage1": (1, 1), "stage2": (2, 1), "stage2_lazy_reg": (2, 0)}   # (stage, iteration index)
VARIANTS = ("kernel", "reference")   # the impl of every module


class _FixedReals:
    """Stands in for the data stream: the same random batch every time."""

    def __init__(self, batch: torch.Tensor):
        self.batch = batch

    def next(self) -> torch.Tensor:
        return self.batch


def _state(stage: int, shapes: dict, impl: str, device: torch.device):
    from stylesdf_fast.training.config import preset_config
    from stylesdf_fast.training.runtime import DistInfo
    from stylesdf_fast.training.stages import build_stage

    values = dict(shapes)
    cfg = preset_config(values.pop("preset"), impl=impl, **values)
    state = build_stage(stage, cfg, DistInfo(device=device))
    res = cfg.size if stage == 2 else cfg.renderer_size
    batch = cfg.batch2 if stage == 2 else cfg.batch1
    reals = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    return state, _FixedReals(reals), batch


def prepare_variant(case: str, shapes: dict, variant, device: torch.device):
    """Builds one variant's training state, warms it up and measures its peak memory; returns
    (step, row without times)."""
    from stylesdf_fast.training.loop import train_iteration

    stage, iteration = CASES[case]
    torch.manual_seed(0)
    state, stream, batch = _state(stage, shapes, variant, device)

    def step():
        train_iteration(state, iteration, stream)

    step()   # warm-up (lazy initialisation, allocator, oneDNN/cuDNN choices)
    peak = memory.peak_memory(step, device=device)
    return step, {"case": case, "impl": variant, "batch": batch, "peak_bytes": peak, "peak_mib": peak / memory.MIB}


def run_case(case: str, shapes: dict, variants, device: torch.device, repeats: int, max_seconds: float):
    """Rows of every variant of one case: peak memory one variant at a time, then the times of all
    variants interleaved round by round (bench.timing.time_interleaved), so that load changes on a shared
    machine fall on the kernel and the reference rows alike."""
    rows, steps = [], {}
    for variant in variants:
        try:
            steps[variant], row = prepare_variant(case, shapes, variant, device)
        except Exception as error:  # noqa: BLE001  (a row that cannot run is reported, and fails the run)
            row = {"case": case, "impl": variant, "error": f"{type(error).__name__}: {error}"}
        rows.append(row)
        status = row.get("error") or f"peak {row['peak_mib']:.0f} MiB"
        print(f"  {case:<16} {variant:<14} prepared: {status}", flush=True)
    if steps:
        timings = timing.time_interleaved(steps, device=device, repeats=repeats,
                                           max_seconds=max_seconds * len(steps), min_repeats=2)
        for row in rows:
            if row["impl"] in timings:
                median_ms = timings[row["impl"]]["median_ms"]
                row.update(median_ms=median_ms, images_per_s=row["batch"] / (median_ms / 1000),
                           times_ms=timings[row["impl"]]["times_ms"])
                print(f"  {case:<16} {row['impl']:<14} {median_ms:.1f} ms/iter ({len(row['times_ms'])} rounds)",
                      flush=True)
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_arguments(parser, "train_speed", repeats=7, quick_repeats=1, max_seconds=20.0, cases=CASES,
                             warmup=False)
    parser.add_argument("--shapes", choices=("small", "official"), default=None,
                        help="default: small on CPU, official on GPU")
    return run.finish_arguments(parser.parse_args(argv))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_speed: --device cuda was asked for but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape_name = "quick" if args.quick else (args.shapes or ("official" if device.type == "cuda" else "small"))
    repeats = args.repeats
    env = machine.environment_metadata(device)
    print(f"train_speed: device {device} ({env['device_name']}), torch {env['torch']}, {env['torch_threads']} threads, "
          f"shapes {shape_name}")
    print(machine.allocator_note(env))
    memory.report_peak_memory_method(device)
    rows = []
    for case in run.selected(CASES, args.cases):
        rows += run_case(case, SHAPES[shape_name], VARIANTS, device, repeats,
                         args.max_seconds)
        write_results(args, shape_name, device, rows, [])   # after every case: a run cut short keeps its rows
    references = {row["case"]: row for row in rows if row["impl"] == "reference"}
    for row in rows:
        if row["impl"] != "reference" and row["case"] in references:
            report.compare_to_reference(row, references[row["case"]])
    report.print_table(rows, [("case", "case", ""), ("impl", "impl", ""), ("batch", "batch", "d"),
                               ("median_ms", "ms/iter", ".1f"), ("images_per_s", "img/s", ".2f"),
                               ("peak_mib", "peak MiB", ".0f"), ("speedup", "speedup", ".2f"),
                               ("mem_ratio", "mem ratio", ".2f")])
    targets = report.Targets()
    if not args.quick:
        stage1 = next((r for r in rows if r["case"] == "stage1" and r["impl"] == "kernel" and "error" not in r), None)
        targets.check("stage1 kernel >= 1.3x faster than the reference", stage1, "speedup", 1.3, "speed>=1.3x")
        targets.check("stage1 kernel peak memory >= 2x lower", stage1, "mem_ratio", 2.0, "mem>=2x")
        targets.print("targets (stage 1)")
    errors = [r for r in rows if r.get("error")]
    for row in errors:
        print(f"error: {row['case']} {row['impl']}: {row['error']}")
    print(f"wrote {write_results(args, shape_name, device, rows, targets.results)}")
    return 1 if errors else 0


def write_results(args, shape_name: str, device: torch.device, rows, targets) -> str:
    return report.write_json(args.json, {"tool": "train_speed", "shapes": shape_name, "shape_values": SHAPES[shape_name],
                                          "rows": rows, "targets": targets}, device=device)


if __name__ == "__main__":
    sys.exit(main())
