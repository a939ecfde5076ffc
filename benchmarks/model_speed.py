"""The StyleSDF generator end to end with every fused op as our kernels (impl="kernel") against the
pure-PyTorch reference ops (impl="reference"): speed, peak memory, and where the time goes. The ops
alone are timed by render_speed.py and ops_speed.py; correctness is the tests' job.

    python benchmarks/model_speed.py [--device cpu|cuda] [--quick] [--cases e2e_stage1_step,...]
                                     [--batch B] [--repeats N] [--json PATH] [--threads N]

Both generators have identical weights (the reference loads the kernel one's state_dict, noise buffers
included) and get the same z [B, 256] and training-distribution cameras at the renderer's 64 px. B =
--batch: default 1 on CPU (a stage-1 step at 4 images takes ~45 s and > 20 GB on 2 cores), 4 on CUDA
(the official per-GPU batch). Cases (64x64 rays, S = 24, SIREN depth 8 width 256, as official):
  e2e_stage1_step    one stage-1 generator step in train mode: forward with the SDF and the eikonal
                     term, loss = mean(thumb^2) (a stand-in for the adversarial term) + 0.1 eikonal +
                     0.05 minimal surface, backward (through the eikonal double backward). Untimed
                     before each step: zero_grad and torch.manual_seed (both draw the same jitter).
  e2e_generate_256   full-pipeline generation at 256 px, eval, no_grad, static_viewdirs,
                     force_background, perturb 0, randomize_noise=False.
  e2e_generate_1024  the same at 1024 px (batch 1 on CPU): images/s is the frame rate.
  e2e_mesh_128       marching-cubes mesh as `python -m stylesdf_fast.generate` extracts it: the SDF at
                     128x128 rays x 128 samples, frustum-to-box resampling, marching cubes at 128^3 (of
                     the SDF's median level: a random network's SDF rarely crosses 0). Recorded only.
--quick: the same cases at tiny shapes (8x8 rays, S = 8, SIREN depth 2 width 32, 16/32 px, 16^3).

Each row: median wall time of rounds alternating kernel and reference (load changes fall on both
alike), speedup, images/s, peak memory of one step and its ratio. e2e_stage1_step and
e2e_generate_256 are also profiled once (kernel impl): the top ops by self time, and the share of our
fused ops. Targets (printed, never an exit status; not with --quick): kernel >= 1.3x the reference on
e2e_stage1_step, e2e_generate_256 and e2e_generate_1024.
"""
from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

from bench import machine, memory, profiling, report, run, timing  # noqa: E402

run.use_this_checkout(ROOT)
from stylesdf_fast.generation import CameraSettings, LoadedModel, extract_mesh, render_surface  # noqa: E402
from stylesdf_fast.models import Generator, generate_camera_params  # noqa: E402

IMPLS = ("kernel", "reference")
CASE_NAMES = ("e2e_stage1_step", "e2e_generate_256", "e2e_generate_1024", "e2e_mesh_128")
SPEEDUP_TARGET = 1.3
TARGET_CASES = ("e2e_stage1_step", "e2e_generate_256", "e2e_generate_1024")
MESH_CPU_REPEATS = 2  # one 128^3 extraction takes tens of seconds on a 2-core CPU
STEP_SEED = 1234  # torch.manual_seed before every stage-1 step: both impls draw the same depth jitter
PROFILE_ROWS = 10
FUSED_OP_MARK = "stylesdf_fast"  # our ops ("stylesdf_fast::<op>") and their autograd nodes
# the stand-in stage-1 loss: the adversarial term is replaced by mean(thumbnail^2)
EIKONAL_WEIGHT, MIN_SURFACE_WEIGHT, MIN_SURFACE_SCALE = 0.1, 0.05, 100.0


@dataclass
class Case:
    name: str
    kind: str  # "train_step", "generate" or "mesh"
    batch: int
    config: Dict[str, object]  # Generator keyword arguments besides impl
    description: str
    profile: bool = False
    surface_res: Optional[int] = None  # mesh: rays per side and samples per ray of the surface render

    @property
    def render_res(self) -> int:
        return self.surface_res or int(self.config.get("renderer_spatial_output_dim", 64))


def make_cases(quick: bool, device_type: str, batch: int) -> List[Case]:
    generate = dict(perturb=0.0, static_viewdirs=True, force_background=True)
    shape = dict(renderer_spatial_output_dim=8, depth=2, width=32, n_samples=8) if quick else {}
    sizes = (16, 32) if quick else (256, 1024)
    batch_large = 1 if quick or device_type == "cpu" else batch
    mesh_res = 16 if quick else 128
    rays = "8x8 rays, S=8, SIREN depth 2 width 32" if quick else "64x64 rays, S=24"
    return [
        Case("e2e_stage1_step", "train_step", batch, dict(full_pipeline=False, perturb=1.0, **shape),
             f"stage-1 generator step: {batch} x {rays}, forward + eikonal + backward of the stand-in loss",
             profile=True),
        Case("e2e_generate_256", "generate", batch, dict(size=sizes[0], **shape, **generate),
             f"generation at {sizes[0]} px: {batch} x ({rays} + decoder), no_grad", profile=True),
        Case("e2e_generate_1024", "generate", batch_large, dict(size=sizes[1], **shape, **generate),
             f"generation at {sizes[1]} px: {batch_large} x ({rays} + decoder), no_grad"),
        Case("e2e_mesh_128", "mesh", 1, dict(full_pipeline=False, **shape, **generate),
             f"mesh: SDF at {mesh_res}^2 rays x {mesh_res} samples, marching cubes at {mesh_res}^3",
             surface_res=mesh_res),
    ]


def build_generators(case: Case, device) -> Dict[str, Generator]:
    """Kernel and reference generators with identical weights and noise buffers."""
    torch.manual_seed(0)
    models = {impl: Generator(**case.config, impl=impl) for impl in IMPLS}
    models["reference"].load_state_dict(models["kernel"].state_dict())
    for model in models.values():
        model.to(device).train(case.kind == "train_step")
    return models


def make_inputs(case: Case, device) -> Dict[str, object]:
    """z [B, 256] and training-distribution cameras (focal for the renderer resolution), from a fixed seed."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(case.batch, 256, generator=generator).to(device)
    cam = generate_camera_params(case.render_res, device, batch=case.batch, generator=generator)
    return {"z": z, "c2w": cam.c2w, "focal": cam.focal, "near": cam.near, "far": cam.far}


def stage1_loss(model, inputs) -> torch.Tensor:
    _, thumb, sdf, eikonal = model([inputs["z"]], inputs["c2w"], inputs["focal"], inputs["near"], inputs["far"],
                                   return_sdf=True, return_eikonal=True)
    eikonal_term = (torch.linalg.vector_norm(eikonal, dim=-1) - 1).pow(2).mean()
    min_surface = torch.exp(-MIN_SURFACE_SCALE * sdf.abs()).mean()
    return thumb.pow(2).mean() + EIKONAL_WEIGHT * eikonal_term + MIN_SURFACE_WEIGHT * min_surface


def loaded(model) -> LoadedModel:
    return LoadedModel(model, CameraSettings(), "benchmark", "")


def median_sdf_level(case: Case, model, inputs) -> float:
    """The median of the frustum SDF the mesh case meshes: a level set that exists at random weights."""
    with torch.no_grad():
        w = model.renderer_latents([inputs["z"]])[0]
        sdf = render_surface(loaded(model), w, torch.zeros(1, 2), resolution=case.surface_res,
                             samples=case.surface_res, keep_sdf=True).sdf
    return float(sdf.median())


def make_step(case: Case, model, inputs) -> Tuple[Callable[[], object], Optional[Callable[[], None]]]:
    """(step, setup): setup runs untimed before each call."""
    if case.kind == "train_step":
        def setup():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(STEP_SEED)

        def train_step():
            loss = stage1_loss(model, inputs)
            loss.backward()
            return loss.detach()
        return train_step, setup

    if case.kind == "mesh":
        def mesh_step():
            with torch.no_grad():
                w = model.renderer_latents([inputs["z"]])[0]
                return extract_mesh(loaded(model), w, resolution=case.surface_res, colors=False,
                                    level=inputs["mesh_level"])
        return mesh_step, None

    def generate_step():
        with torch.no_grad():
            return model([inputs["z"]], inputs["c2w"], inputs["focal"], inputs["near"], inputs["far"],
                         randomize_noise=False)
    return generate_step, None


def run_case(case: Case, args, device) -> Tuple[List[Dict[str, object]], Optional[Dict[str, object]]]:
    """(the kernel and reference rows, a profile of the kernel impl or None)."""
    base = {"case": case.name, "pass": case.kind, "batch": case.batch, "render_res": case.render_res,
            "description": case.description}
    rows = {impl: {**base, "impl": impl} for impl in IMPLS}
    try:
        models, inputs = build_generators(case, device), make_inputs(case, device)
        if case.kind == "mesh":
            inputs["mesh_level"] = median_sdf_level(case, models["kernel"], inputs)
    except Exception as error:  # noqa: BLE001  (a case that cannot run is reported, and fails the run)
        for row in rows.values():
            row["error"] = f"{type(error).__name__}: {error}"
        return list(rows.values()), None
    steps, setups = {}, {}
    for impl, row in rows.items():   # warm-up and peak memory one impl at a time
        try:
            step, setup = make_step(case, models[impl], inputs)
            row["peak_bytes"] = timing.warm_up_with_peak_memory(step, device=device, warmup=args.warmup, setup=setup)
            row["peak_mib"] = row["peak_bytes"] / memory.MIB
            steps[impl], setups[impl] = step, setup
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {error}"
        models[impl].zero_grad(set_to_none=True)
        gc.collect()
    repeats = min(args.repeats, MESH_CPU_REPEATS) if case.kind == "mesh" and device.type == "cpu" else args.repeats
    if steps:
        timings = timing.time_interleaved(steps, device=device, repeats=repeats, setups=setups,
                                          max_seconds=args.max_seconds * len(steps), min_repeats=min(3, repeats))
        for impl, result in timings.items():
            rows[impl].update(result, images_per_s=case.batch / (result["median_ms"] * 1e-3))
    for impl, row in rows.items():
        status = row.get("error") or f"{row['median_ms']:.1f} ms ({row['repeats']} repeats)"
        print(f"  {case.name:<18} {impl:<9} {status}", flush=True)
    report.compare_to_reference(rows["kernel"], rows["reference"])
    profile = profile_kernel(case, models["kernel"], inputs, device) if case.profile and "kernel" in steps else None
    return list(rows.values()), profile


def profile_kernel(case: Case, model, inputs, device) -> Dict[str, object]:
    try:
        step, setup = make_step(case, model, inputs)
        profile = profiling.profile_top_ops(step, device=device, setup=setup, row_limit=PROFILE_ROWS,
                                            group_substrings=(FUSED_OP_MARK,))
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {error}"}
    model.zero_grad(set_to_none=True)
    return profile


def print_profile(name: str, profile: Dict[str, object], device_type: str) -> None:
    print()
    if "error" in profile:
        print(f"profile {name} (kernel): {profile['error']}")
        return
    ranked = "self CUDA time" if profile.get("ranked_by") == "self_device" else "self CPU time"
    print(f"profile {name} (impl=kernel, one step under torch.profiler: {profile['wall_ms'] / 1e3:.3g} s wall, "
          f"{profile['total_self_cpu_ms'] / 1e3:.3g} s self CPU over {profile['ops']} ops): top ops by {ranked}")
    columns = [("op", "op", ""), ("calls", "calls", ""), ("self_cpu_ms", "self CPU ms", ".1f"),
               ("self_cpu_pct", "self CPU %", ".1f"), ("cpu_total_ms", "CPU total ms", ".1f")]
    if device_type == "cuda":
        columns += [("self_device_ms", "self CUDA ms", ".2f"), ("self_device_pct", "self CUDA %", ".1f")]
    report.print_table(profile["rows"], columns)
    fused = profile["groups"].get(FUSED_OP_MARK, {})
    print(f"  our fused ops (names containing {FUSED_OP_MARK!r}, with their autograd nodes): "
          f"{fused.get('self_cpu_pct') or 0.0:.1f}% of self CPU time ({fused.get('self_cpu_ms', 0.0):.1f} ms, "
          f"{fused.get('calls', 0)} calls)")


def evaluate_targets(rows: List[Dict[str, object]]) -> report.Targets:
    targets = report.Targets()
    by_key = {(r["case"], r["impl"]): r for r in rows}
    for name in TARGET_CASES:
        if (name, "kernel") in by_key:
            targets.check(f"{name} kernel >= {SPEEDUP_TARGET}x the reference", by_key[(name, "kernel")], "speedup",
                          SPEEDUP_TARGET, f"speed>={SPEEDUP_TARGET}x")
    return targets


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run.add_common_arguments(parser, "model_speed", repeats=3, quick_repeats=2, max_seconds=3.0, cases=CASE_NAMES)
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step (default 1 on CPU, 4 on CUDA: the official per-GPU batch)")
    args = run.finish_arguments(parser.parse_args(argv))
    if args.batch is None:
        args.batch = 4 if args.device == "cuda" else 1
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = run.begin_run("model_speed", args)
    if started is None:
        return 2
    device = started["device"]
    names = run.selected(CASE_NAMES, args.cases)
    cases = [c for c in make_cases(args.quick, device.type, args.batch) if c.name in names]
    rows: List[Dict[str, object]] = []
    profiles: Dict[str, object] = {}
    for case in cases:
        case_rows, profile = run_case(case, args, device)
        rows += case_rows
        if profile is not None:
            profiles[case.name] = profile
        gc.collect()
    targets = report.Targets() if args.quick else evaluate_targets(rows)
    print()
    report.print_table_and_errors(rows, [
        ("case", "case", ""), ("impl", "impl", ""), ("batch", "batch", ""), ("median_ms", "median ms", ".1f"),
        ("speedup", "speedup", ".2f"), ("images_per_s", "images/s", ".3g"), ("peak_mib", "peak MiB", ".1f"),
        ("mem_ratio", "mem ratio", ".2f"), ("repeats", "n", ""), ("targets", "targets", "")])
    for case in cases:
        print(f"case {case.name}: {case.description}")
    for name, profile in profiles.items():
        print_profile(name, profile, device.type)
    print()
    targets.print(f"targets ({device.type})" + (" (not evaluated: --quick run)" if args.quick else ""))
    path = report.write_json(args.json, {
        "benchmark": "model_speed",
        "settings": {"device": str(device), "quick": args.quick, "repeats": args.repeats, "batch": args.batch,
                     "warmup": args.warmup, "max_seconds": args.max_seconds, "cases": names},
        "extension": {"status": started["ext"].describe(), **started["ext_file"]},
        "stage1_loss": "mean(thumb^2) + 0.1 mean((|eikonal| - 1)^2) + 0.05 mean(exp(-100 |sdf|))",
        "cases": [{"name": c.name, "kind": c.kind, "batch": c.batch, "generator_config": c.config,
                   "description": c.description, "profile": profiles.get(c.name)} for c in cases],
        "results": rows, "targets": targets.results, "targets_met": targets.met,
        "process_max_rss_mib": machine.max_rss_mib(),
    }, device=device)
    print(f"wrote {path}")
    broken = [r for r in rows if r.get("error")] + [p for p in profiles.values() if "error" in p]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
