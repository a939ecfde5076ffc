"""Speed, peak memory and bandwidth of the fused volume renderer `sdf_volume_render` (impl="kernel")
against its pure-PyTorch reference (impl="reference"), on StyleSDF-sized work, and end to end of the
StyleSDF generator with every fused op as kernel vs reference, with pass/fail targets.

    python benchmarks/render_speed.py [--device cpu|cuda] [--repeats N] [--json PATH] [--quick]
                                      [--cases train_stage1,video,surface,slice_call,e2e_stage1_step,...]
                                      [--no-end-to-end] [--e2e-batch B] [--e2e-repeats N]
                                      [--threads N] [--max-seconds S]

Two sections, both run by default: the op-level section (the op alone, below) and the end-to-end
section (the models, further below; --no-end-to-end skips it). --cases selects from both.
--quick runs every case at tiny shapes (a smoke test; no targets evaluated).

Op-level cases (float32; R rays, S samples per ray, C feature channels):
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
  slice_call    2 images of 64x64 rays, S = 24, C = 256 (the shape of issue 16), forward_backward only,
                both impl="kernel": the slice call sdf_volume_render(raw[..., 3], raw[..., :3],
                raw[..., 4:], ...) (sliced inside the step, as volume_integration does) against the
                raw call sdf_volume_render_raw(raw, ...), gradients with respect to raw and beta in
                both. Its rows are "slice call" and "raw call" (impl kernel, JSON field "call").
  video, surface and slice_call take their inputs from the same raw layout [..., S, 4 + C] (C = 0
  for surface).
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

Numbers per row: median wall time over the repeats, timed in alternating rounds (each round times
the kernel and the reference, in an order that rotates from round to round: _common.time_interleaved,
so that load from other processes falls on both alike); --reference-repeats rounds at most (default
5), with the kernel timed --repeats / rounds times per round (default 2: 10 kernel and 5 reference
times), at least 3 rounds and fewer once the rounds took --max-seconds per step. Before the rounds,
warm-up and the peak-memory call, one implementation at a time (on CPU the profiled memory call is
the first warm-up call and, for steps slower than 1 s, the only one; on CUDA --warmup calls, then the
memory call). speedup = reference median / kernel median (slice_call: slice/raw = slice-call median
/ raw-call median instead), peak extra memory of one step (memory
allocated during the step above what was held before it, the step's own outputs included while alive;
see benchmarks/_common.py: CUDA allocator peak, or on CPU the peak of the running sum of the
profiler's allocation events), mem ratio = reference peak / kernel peak, extra mem ratio = the same
for the peak beyond the tensors the step returns (the outputs and gradients every implementation
must allocate: for train_stage1 the 390 MiB raw gradient), achieved GB/s from the
byte model below and that as % of the copy bandwidth measured in the same run (median of a large
tensor clone, read + write bytes; the copy_-into-a-preallocated-tensor figure is printed too and its
percentage stored in the JSON). Before timing, each case runs both implementations once on the same
inputs and records the largest |kernel - reference| of every output (and gradient); slice_call the
largest |slice call - raw call| of the gradients.

Huge pages: the header and the end of the report say whether large CPU tensors were on transparent
huge pages (THP_MEM_ALLOC_ENABLE, default 1 from benchmarks/_allocator.py, and measured: the
AnonHugePages under a fresh 64 MiB tensor), recorded in the JSON as "huge_pages" and
settings.huge_pages. They change CPU times a lot, the reference's most (it allocates several raw-size
tensors per step): compare runs with THP_MEM_ALLOC_ENABLE=1 and =0.

Byte model (KERNELS.md section 1: minimal traffic per ray, fp32):
  forward           4 * [S (C + 5) + (C + 3)] bytes  (sdf, rgb, features, z read per sample;
                                                      rgb and features maps written per ray)
  backward          4 * [(C + 3) + S (C + 5) + S (C + 4)] bytes  (cotangents read, inputs re-read,
                                                      the raw gradient [S, 4 + C] written)
  forward_backward  the sum of the two.
  (The weights output and ray_norm are not counted, as in KERNELS.md; they matter only when C is
  small, e.g. `surface`, whose GB/s is therefore a slight underestimate.)

Op-level targets (reported, never an exit status), on train_stage1 forward_backward:
  cpu:  kernel >= 8x faster than the reference (issue 16); reference peak extra memory (beyond the
        returned tensors) >= 3x the kernel's;
        kernel achieved bandwidth >= 50% of the copy (clone) bandwidth.
  cuda: kernel achieved bandwidth >= 70% of the copy (clone) bandwidth; kernel >= 3x faster than
        the reference.
  and on slice_call (cpu and cuda): slice call within 10% of the raw call (slice/raw <= 1.10).

End-to-end section
------------------
`stylesdf_fast.models.Generator(..., impl="kernel")` against `impl="reference"`: the impl switches
every fused op the model uses (sdf_volume_render_raw, fused_leaky_relu, upfirdn2d) between our
kernels and the pure-PyTorch reference ops. Both generators have identical weights (built under
torch.manual_seed(0); the reference loads the kernel one's state_dict, noise buffers included) and
get the same z [B, 256] and training-distribution cameras (generate_camera_params at the renderer's
64 px, fixed seed). float32, on --device. B = --e2e-batch: default 1 on CPU (one stage-1 step at 4
images takes ~45 s and > 20 GB on a 2-core CPU), 4 on CUDA (the official per-GPU batch).

Cases (64x64 rays, S = 24 samples, SIREN depth 8 width 256, as the official models):
  e2e_stage1_step    pass train_step: one stage-1 generator training step,
                     Generator(full_pipeline=False, perturb=1.0) in train mode:
                     out = g([z], c2w, focal, near, far, return_sdf=True, return_eikonal=True);
                     loss = mean(thumb^2) (a stand-in for the adversarial term: the discriminator is
                     not part of this benchmark) + 0.1 mean((|eikonal| - 1)^2) + 0.05 mean(exp(-100 |sdf|));
                     loss.backward() (through the eikonal term's double backward). Untimed before
                     each step: zero_grad(set_to_none=True) and torch.manual_seed (both impls draw the
                     same depth jitter).
  e2e_generate_256   pass generate: full-pipeline image generation, Generator(size=256) in eval mode,
                     static_viewdirs=True, force_background=True, perturb=0, randomize_noise=False
                     (the stored noise buffers), under torch.no_grad().
  e2e_generate_1024  the same at 1024 px; batch 1 on CPU whatever --e2e-batch says. images/s is
                     the frame rate of 1024-px generation.
  e2e_mesh_128       pass mesh: stylesdf_fast.generation.extract_mesh as `python -m
                     stylesdf_fast.generate` runs it: the renderer-only Generator's SDF at 128x128 rays
                     x 128 samples (the official surface renderer), frustum-to-box resampling and
                     scikit-image marching cubes on 128^3, no vertex colours; 2 timed repeats at most
                     on CPU (one extraction takes tens of seconds there). images/s = meshes/s. The
                     generator is randomly initialised, so its SDF rarely crosses 0: the mesh is the
                     level set at the SDF's median (the same marching-cubes work).
  --quick: the same cases at tiny shapes (8x8 rays, S = 8, SIREN depth 2 width 32; images
  of 16 and 32 px; a 16^3 mesh).

Numbers per row: median wall time over --e2e-repeats timed rounds (default 3 on CPU, 10 on CUDA, 2
with --quick; --max-seconds ends a measurement early once 3 are done), each round timing one step of
kernel and reference in alternating order (_common.time_interleaved: load changes on a shared machine
fall on both alike), after warm-up (on CUDA --warmup steps; on CPU the check call of each impl and
the profiled peak-memory call, made one impl at a time before the rounds), speedup =
reference median / kernel median, images/s = B / median, peak memory of one step (same method as
above) and mem ratio = reference peak / kernel peak. Before timing, each case runs one step of each
impl and records the largest |kernel - reference| with the largest |reference| for scale:
train_step: thumbnail, sdf, eikonal term, loss, every parameter gradient (largest absolute
difference, and the parameter with the largest relative one); generate: image and thumbnail; mesh:
the 128^3 frustum SDF, and the vertex counts of both meshes.

Profile: for e2e_stage1_step and e2e_generate_256 with impl="kernel", one more step under
torch.profiler (CPU activity, + CUDA on a GPU), printed as the top 10 ops by self CPU time, on a GPU
by self CUDA time (calls, self CPU ms and %, CPU total ms; self CUDA ms and % on a GPU) with the
share of our fused ops (op names containing "stylesdf_fast": the ops and their autograd nodes). The
JSON stores these rows under end_to_end.cases[].profile.

End-to-end targets (reported, never an exit status; not evaluated with --quick):
  cpu and cuda: e2e_stage1_step, e2e_generate_256 and e2e_generate_1024: kernel >= 1.3x faster
                than the reference.
  (e2e_mesh_128 is recorded only.)
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import _allocator  # noqa: E402,F401  (before torch)
import torch  # noqa: E402

import _common  # noqa: E402

_common.prefer_installed_package(ROOT)

try:
    from stylesdf_fast.ops import sdf_volume_render, sdf_volume_render_raw  # noqa: E402
    from stylesdf_fast.models import Generator, generate_camera_params  # noqa: E402
    from stylesdf_fast.generation import CameraSettings, LoadedModel, extract_mesh, render_surface  # noqa: E402
    _IMPORT_ERROR: Optional[BaseException] = None
except Exception as _error:  # noqa: BLE001 (reported by main with a hint)
    sdf_volume_render = sdf_volume_render_raw = Generator = generate_camera_params = None
    CameraSettings = LoadedModel = extract_mesh = render_surface = None
    _IMPORT_ERROR = _error

PASSES = ("forward", "forward_backward")
IMPLS = ("kernel", "reference")
# the slice_call case (both calls impl="kernel"): sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:])
# within this factor of sdf_volume_render_raw(raw)'s time
SLICE_RATIO_TARGET = 1.10
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
    slice_call: bool = False  # compares the slice call with the raw call (both kernel), fwd+bwd only

    @property
    def rays(self) -> int:
        return math.prod(self.lead)

    @property
    def passes(self) -> Tuple[str, ...]:
        if self.slice_call:
            return ("forward_backward",)
        return PASSES if self.train else ("forward",)

    @property
    def variants(self) -> Tuple[Tuple[str, str], Tuple[str, str]]:
        """(impl, call) of the measured row and of its baseline: the kernel's raw call and the
        reference's, or the kernel's slice call and its raw call."""
        if self.slice_call:
            return ("kernel", "slices"), ("kernel", "raw")
        return ("kernel", "raw"), ("reference", "raw")


def row_label(case: Case, impl: str, call: str) -> str:
    """The row's name in the table: the impl, or for the slice_call case the call."""
    return {"slices": "slice call", "raw": "raw call"}[call] if case.slice_call else impl


def diff_label(case: Case) -> str:
    return "max |slice call - raw call|" if case.slice_call else "max |kernel - reference|"


def make_cases(quick: bool) -> List[Case]:
    if quick:
        return [
            Case("train_stage1", (2, 8, 8), 8, 16, True, False, "[2, 8, 8] rays, S=8, C=16, fwd+bwd (quick)"),
            Case("video", (1, 8, 8), 16, 16, False, True, "[1, 8, 8] rays, S=16, C=16, no_grad (quick)"),
            Case("surface", (16, 16), 16, 0, False, True, "[16, 16] rays, S=16, C=0, no_grad (quick)"),
            Case("slice_call", (1, 8, 8), 8, 16, True, False,
                 "[1, 8, 8] rays, S=8, C=16, slices vs raw call, fwd+bwd (quick)", slice_call=True),
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
        Case("slice_call", (2, 64, 64), 24, 256, True, False,
             "2 x 64x64 rays, S=24, C=256, fwd+bwd: sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:]) "
             "vs sdf_volume_render_raw(raw), both impl=kernel",
             note="both calls take the gradient with respect to raw and beta; target: slice call time <= "
                  f"{SLICE_RATIO_TARGET:.2f} x raw call time", slice_call=True),
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


def render(case: Case, inputs: Dict[str, object], impl: str, call: str = "raw"):
    """The raw call sdf_volume_render_raw(raw, ...), or (call="slices") sdf_volume_render on the three
    slices of raw, as StyleSDF's volume_integration passes them."""
    if call == "slices":  # sliced in the step, as volume_integration does
        raw = inputs["raw"]
        return sdf_volume_render(raw[..., 3], raw[..., :3], raw[..., 4:] if case.channels else None, inputs["z_vals"],
                                 inputs["ray_norm"], inputs["beta"], force_background=case.force_background,
                                 impl=impl)
    return sdf_volume_render_raw(inputs["raw"], inputs["z_vals"], inputs["ray_norm"], inputs["beta"],
                                 force_background=case.force_background, impl=impl)


def make_step(case: Case, pass_name: str, impl: str, inputs: Dict[str, object], call: str = "raw"):
    if pass_name == "forward":
        if case.train:
            return lambda: render(case, inputs, impl, call)

        def step():
            with torch.no_grad():
                return render(case, inputs, impl, call)
        return step

    wrt = [inputs["raw"], inputs["beta"]]  # the network's output and the learnable beta
    outputs = ["rgb"] + (["features"] if inputs["features"] is not None else [])
    cotangents = [inputs["g_" + name] for name in outputs]

    def step():
        out = render(case, inputs, impl, call)
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
    """One run of the measured variant and of its baseline (kernel and reference, or the slice call and
    the raw call) on the same inputs: max |difference| per output (and per gradient for training
    cases), with the largest |baseline| for scale."""
    result: Dict[str, object] = {}
    (impl_a, call_a), (impl_b, call_b) = case.variants
    try:
        if not case.slice_call:
            with torch.no_grad():
                k, r = render(case, inputs, impl_a, call_a), render(case, inputs, impl_b, call_b)
            for name in ("rgb", "features", "weights"):
                a, b = getattr(k, name), getattr(r, name)
                if b is not None:
                    result[f"forward.{name}"] = {"max_abs_diff": _max_abs_diff(a, b),
                                                 "max_abs_reference": b.abs().max().item()}
            del k, r
        if case.train:
            grads = [make_step(case, "forward_backward", impl, inputs, call)() for impl, call in case.variants]
            for name, a, b in zip(("raw", "beta"), *grads):
                result[f"grad.{name}"] = {"max_abs_diff": _max_abs_diff(a, b),
                                          "max_abs_reference": b.abs().max().item()}
            del grads
    except Exception as error:  # noqa: BLE001 (reported, the timing goes on)
        result["error"] = f"{type(error).__name__}: {error}"
    gc.collect()
    return result


def measure_variants(steps: Dict[str, Callable[[], object]], repeats: Dict[str, int], args,
                     device) -> Dict[str, Dict[str, object]]:
    """Peak memory and warm-up one step at a time, then the times in alternating rounds
    (_common.time_interleaved: each round times every step, in rotating order, so that a change in
    the machine's load falls on all of them alike). A step with more repeats than there are rounds
    (the fast kernel against the slow reference) is timed that many times more per round.

    CPU: the profiled peak-memory call is the first warm-up call, and when it took longer than 1 s
    no other is made; CUDA: --warmup calls, then the peak-memory call. Rounds: the fewest repeats
    asked for; they stop early once they took --max-seconds per step and 3 were made. Returns {name:
    measure_step's dict} or {name: {"error"}} for a step that failed."""
    results: Dict[str, Dict[str, object]] = {}
    for name, step in steps.items():
        try:
            if device.type == "cpu":
                start = time.perf_counter()
                peak = _common.peak_memory(step, device=device)
                more_warmup = 0 if time.perf_counter() - start > 1.0 else max(args.warmup - 1, 0)
                for _ in range(more_warmup):
                    step()
            else:
                for _ in range(max(args.warmup, 1)):
                    step()
                _common.synchronize(device)
                peak = _common.peak_memory(step, device=device)
            results[name] = {"peak_bytes": peak, "peak_mib": peak / _common.MIB}
        except Exception as error:  # noqa: BLE001 (a failing row is reported, the run goes on)
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        gc.collect()
    timed = [name for name in steps if "error" not in results[name]]
    if not timed:
        return results
    rounds = max(1, min(repeats[name] for name in timed))
    copies = {name: max(1, math.ceil(repeats[name] / rounds)) for name in timed}
    interleaved = {f"{name}#{k}": steps[name] for name in timed for k in range(copies[name])}
    timings = _common.time_interleaved(interleaved, device=device, repeats=rounds,
                                       max_seconds=args.max_seconds * len(timed), min_repeats=min(3, rounds))
    for name in timed:
        times = [t for k in range(copies[name]) for t in timings[f"{name}#{k}"]["times_ms"]]
        results[name].update({"median_ms": statistics.median(times), "min_ms": min(times),
                              "mean_ms": statistics.fmean(times), "max_ms": max(times), "repeats": len(times),
                              "times_ms": times, "rounds": len(times) // copies[name]})
    return results


def run_case(case: Case, args, device, copy: Dict[str, object], passes) -> Tuple[List[Dict[str, object]], Dict]:
    inputs = make_inputs(case, device)
    model = bytes_model(case)
    check = compare_impls(case, inputs)
    if "error" in check:
        print(f"  {case.name:<12} check: {check['error']}", flush=True)
    else:
        worst = max(check.items(), key=lambda item: _relative(item[1]))
        print(f"  {case.name:<12} check: largest {diff_label(case)} relative to max |baseline|: "
              f"{_relative(worst[1]):.3g} ({worst[0]}: {worst[1]['max_abs_diff']:.3g} of "
              f"{worst[1]['max_abs_reference']:.3g})", flush=True)
    rows: List[Dict[str, object]] = []
    for pass_name in passes:
        pass_rows: Dict[str, Dict[str, object]] = {}
        steps: Dict[str, Callable[[], object]] = {}
        repeats: Dict[str, int] = {}
        for impl, call in case.variants:
            label = row_label(case, impl, call)
            row: Dict[str, object] = {
                "case": case.name, "pass": pass_name, "impl": impl, "rays": case.rays, "lead_shape": list(case.lead),
                "samples": case.samples, "channels": case.channels, "force_background": case.force_background,
                "grad_mode": case.train, "description": case.description, "bytes_model": model[pass_name],
                "output_bytes": output_bytes(case, pass_name),
            }
            if case.slice_call:
                row["call"] = call
            row["label"] = label
            pass_rows[label] = row
            steps[label] = make_step(case, pass_name, impl, inputs, call)
            repeats[label] = args.repeats if impl == "kernel" else min(args.repeats, args.reference_repeats)
        measured = measure_variants(steps, repeats, args, device)
        del steps
        for label, row in pass_rows.items():
            timing = measured[label]
            if "error" in timing:
                row["error"] = timing["error"]
            else:
                row.update(timing)
                # what the step held beyond the tensors it returns (its workspace), for comparison
                row["peak_excluding_outputs_mib"] = max(0, timing["peak_bytes"] - row["output_bytes"]) / _common.MIB
                if "median_ms" in timing:
                    row["gb_per_s"] = model[pass_name] / (timing["median_ms"] * 1e-3) / 1e9
                    row["pct_copy_bw"] = 100.0 * row["gb_per_s"] / copy["gb_per_s"] if copy["gb_per_s"] else None
                    prealloc = copy["copy_"]["gb_per_s"]
                    row["pct_copy_bw_preallocated"] = 100.0 * row["gb_per_s"] / prealloc if prealloc else None
            rows.append(row)
            status = row.get("error") or f"{row['median_ms']:.2f} ms ({row['repeats']} repeats)"
            print(f"  {case.name:<12} {pass_name:<16} {label:<11} {status}", flush=True)
        gc.collect()
        measured_row, baseline_row = rows[-2], rows[-1]
        if case.slice_call:
            if "median_ms" in measured_row and "median_ms" in baseline_row:
                measured_row["slice_over_raw"] = measured_row["median_ms"] / baseline_row["median_ms"]
            continue
        _common.compare_to_reference(measured_row, baseline_row)
        if measured_row.get("peak_bytes") is not None and baseline_row.get("peak_bytes") is not None:
            kernel_extra = measured_row["peak_excluding_outputs_mib"]
            measured_row["extra_mem_ratio"] = (baseline_row["peak_excluding_outputs_mib"] / kernel_extra
                                               if kernel_extra > 0 else float("inf"))
    del inputs
    gc.collect()
    return rows, check


CPU_SPEEDUP_TARGET = 8.0  # issue 16: forward+backward at the training shape


def evaluate_targets(rows: List[Dict[str, object]], device_type: str) -> List[Dict[str, object]]:
    """Each target: {"name", "case", "pass", "metric", "value", "threshold", "passed"} (passed: value >=
    threshold, or <= for the slice_call ratio); also writes a short "targets" string onto the rows
    involved."""
    by_key = {(r["case"], r["pass"], r.get("label", r["impl"])): r for r in rows}
    targets: List[Dict[str, object]] = []

    def add(row, case, pass_name, metric, threshold, label, description, at_most=False):
        value = row.get(metric)
        passed = value is not None and (value <= threshold if at_most else value >= threshold)
        targets.append({"name": f"{case} {pass_name} {description}", "case": case, "pass": pass_name,
                        "metric": metric, "value": value, "threshold": threshold, "passed": bool(passed)})
        text = f"{label} {'PASS' if passed else 'FAIL'}"
        row["targets"] = f"{row['targets']}; {text}" if row.get("targets") else text

    case, pass_name = "train_stage1", "forward_backward"
    kernel = by_key.get((case, pass_name, "kernel"))
    if kernel is not None and device_type == "cpu":
        add(kernel, case, pass_name, "speedup", CPU_SPEEDUP_TARGET, f"speed>={CPU_SPEEDUP_TARGET:g}x",
            f"kernel >= {CPU_SPEEDUP_TARGET:g}x faster than reference")
        add(kernel, case, pass_name, "extra_mem_ratio", 3.0, "extra mem>=3x",
            "kernel peak extra memory (beyond the returned tensors) >= 3x smaller than reference")
        add(kernel, case, pass_name, "pct_copy_bw", 50.0, "bw>=50%", "kernel >= 50% of copy bandwidth")
    elif kernel is not None and device_type == "cuda":
        add(kernel, case, pass_name, "pct_copy_bw", 70.0, "bw>=70%", "kernel >= 70% of copy bandwidth")
        add(kernel, case, pass_name, "speedup", 3.0, "speed>=3x", "kernel >= 3x faster than reference")
    slices = by_key.get(("slice_call", "forward_backward", "slice call"))
    if slices is not None:
        add(slices, "slice_call", "forward_backward", "slice_over_raw", SLICE_RATIO_TARGET,
            f"slice/raw<={SLICE_RATIO_TARGET:.2f}",
            f"slice call within {100 * (SLICE_RATIO_TARGET - 1):.0f}% of the raw call (time ratio slice/raw)",
            at_most=True)
    return targets


# --- end-to-end section: the StyleSDF generator with every fused op as kernel vs reference ----------

E2E_CASE_NAMES = ("e2e_stage1_step", "e2e_generate_256", "e2e_generate_1024", "e2e_mesh_128")
E2E_SPEEDUP_TARGET = 1.3
E2E_TARGET_CASES = ("e2e_stage1_step", "e2e_generate_256", "e2e_generate_1024")
MESH_CPU_REPEATS = 2   # one 128^3 extraction takes tens of seconds on a 2-core CPU
E2E_STEP_SEED = 1234  # torch.manual_seed before every stage-1 step: both impls draw the same depth jitter
E2E_PROFILE_ROWS = 10
# our fused ops in a profile: "stylesdf_fast::<op>" and their autograd nodes
# "GeneratedBackwardFor_stylesdf_fast_<op>..."
FUSED_OP_MARK = "stylesdf_fast"
# stand-in stage-1 loss weights (the adversarial term is replaced by mean(thumbnail^2), see the docstring)
EIKONAL_WEIGHT, MIN_SURFACE_WEIGHT, MIN_SURFACE_SCALE = 0.1, 0.05, 100.0


@dataclass
class E2ECase:
    name: str
    pass_name: str  # "train_step" (forward, eikonal double backward, backward) or "generate" (no_grad)
    batch: int
    config: Dict[str, object]  # Generator keyword arguments besides impl
    description: str
    profile: bool = False  # also print a torch.profiler breakdown of the kernel impl
    note: str = ""
    surface_res: Optional[int] = None  # "mesh": rays per side and samples per ray of the surface render

    @property
    def train(self) -> bool:
        return self.pass_name == "train_step"

    @property
    def render_res(self) -> int:
        return self.surface_res or int(self.config.get("renderer_spatial_output_dim", 64))

    @property
    def samples(self) -> int:
        return self.surface_res or int(self.config.get("n_samples", 24))

    @property
    def image_size(self) -> Optional[int]:
        return int(self.config["size"]) if self.config.get("full_pipeline", True) else None


def make_e2e_cases(quick: bool, device_type: str, batch: int) -> List[E2ECase]:
    generate = dict(perturb=0.0, static_viewdirs=True, force_background=True)
    if quick:
        tiny = dict(renderer_spatial_output_dim=8, depth=2, width=32, n_samples=8)
        return [
            E2ECase("e2e_stage1_step", "train_step", batch,
                    dict(full_pipeline=False, perturb=1.0, **tiny),
                    f"stage-1 training step, {batch} x 8x8 rays, S=8, SIREN depth 2 width 32 (quick)", profile=True),
            E2ECase("e2e_generate_256", "generate", batch, dict(size=16, **tiny, **generate),
                    f"generation, {batch} x 16 px from 8x8 rays, S=8, SIREN depth 2 width 32 (quick)", profile=True),
            E2ECase("e2e_generate_1024", "generate", 1, dict(size=32, **tiny, **generate),
                    "generation, 1 x 32 px from 8x8 rays, S=8, SIREN depth 2 width 32 (quick)"),
            E2ECase("e2e_mesh_128", "mesh", 1, dict(full_pipeline=False, **tiny, **generate),
                    "mesh extraction, 16^3 frustum SDF + marching cubes, SIREN depth 2 width 32 (quick)",
                    surface_res=16),
        ]
    batch_1024 = 1 if device_type == "cpu" else batch
    return [
        E2ECase("e2e_stage1_step", "train_step", batch, dict(full_pipeline=False, perturb=1.0),
                f"stage-1 generator step (train mode): {batch} x 64x64 rays, S=24, forward + eikonal "
                f"(double backward) + backward of the stand-in loss", profile=True,
                note="loss = mean(thumb^2) [stand-in for the adversarial term] + 0.1 mean((|eik| - 1)^2) "
                     "+ 0.05 mean(exp(-100 |sdf|)); grads zeroed and torch.manual_seed set before each step (untimed)"),
        E2ECase("e2e_generate_256", "generate", batch, dict(size=256, **generate),
                f"full-pipeline generation at 256 px: {batch} x (64x64 rays, S=24, + StyleGAN2 decoder), "
                f"eval, no_grad, static_viewdirs, force_background, perturb 0, randomize_noise=False",
                profile=True),
        E2ECase("e2e_generate_1024", "generate", batch_1024, dict(size=1024, **generate),
                f"full-pipeline generation at 1024 px: {batch_1024} x (64x64 rays, S=24, + StyleGAN2 decoder), "
                f"eval, no_grad, static_viewdirs, force_background, perturb 0, randomize_noise=False"),
        E2ECase("e2e_mesh_128", "mesh", 1, dict(full_pipeline=False, **generate),
                "marching-cubes mesh of one identity as the official generate script: SDF at 128x128 rays x "
                "128 samples (the renderer's network, no_grad, row bands), frustum-to-box resampling, "
                "scikit-image marching cubes at 128^3", surface_res=128),
    ]


def build_e2e_generators(case: E2ECase, device) -> Dict[str, "Generator"]:
    """The kernel and reference generators with identical weights (the reference loads the kernel's
    state_dict: parameters and the decoder's noise buffers), in train mode for a training step."""
    torch.manual_seed(0)
    models = {impl: Generator(**case.config, impl=impl) for impl in IMPLS}
    models["reference"].load_state_dict(models["kernel"].state_dict())
    for model in models.values():
        model.to(device).train(case.train)
    return models


def make_e2e_inputs(case: E2ECase, device) -> Dict[str, torch.Tensor]:
    """z [B, 256] and training-distribution cameras (focal for the renderer resolution), from a fixed seed."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(case.batch, 256, generator=generator).to(device)
    cam = generate_camera_params(case.render_res, device, batch=case.batch, generator=generator)
    return {"z": z, "c2w": cam.c2w, "focal": cam.focal, "near": cam.near, "far": cam.far}


def stage1_forward_loss(model, inputs):
    """(outputs (image None, thumb, sdf, eikonal), loss) of one stage-1 generator forward."""
    out = model([inputs["z"]], inputs["c2w"], inputs["focal"], inputs["near"], inputs["far"],
                return_sdf=True, return_eikonal=True)
    _, thumb, sdf, eikonal = out
    adversarial = thumb.pow(2).mean()  # stand-in: the discriminator is not part of this benchmark
    eikonal_loss = (torch.linalg.vector_norm(eikonal, dim=-1) - 1).pow(2).mean()
    min_surface = torch.exp(-MIN_SURFACE_SCALE * sdf.abs()).mean()
    return out, adversarial + EIKONAL_WEIGHT * eikonal_loss + MIN_SURFACE_WEIGHT * min_surface


def make_e2e_step(case: E2ECase, model, inputs) -> Tuple[Callable[[], object], Optional[Callable[[], None]]]:
    """(step, setup): setup (untimed) zeroes the gradients and seeds the depth jitter."""
    if case.train:
        def setup():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(E2E_STEP_SEED)

        def step():
            _, loss = stage1_forward_loss(model, inputs)
            loss.backward()
            return loss.detach()
        return step, setup

    if case.pass_name == "mesh":
        loaded = LoadedModel(model, CameraSettings(), "benchmark", "")

        def step():
            with torch.no_grad():
                w = model.renderer_latents([inputs["z"]])[0]
                return extract_mesh(loaded, w, resolution=case.surface_res, colors=False,
                                    level=inputs["mesh_level"])
        return step, None

    def step():
        with torch.no_grad():
            return model([inputs["z"]], inputs["c2w"], inputs["focal"], inputs["near"], inputs["far"],
                         randomize_noise=False)
    return step, None


def _surface_sdf(case: E2ECase, model, inputs) -> torch.Tensor:
    """The frustum SDF [1, R, R, S] the mesh case meshes (for the kernel/reference check)."""
    with torch.no_grad():
        w = model.renderer_latents([inputs["z"]])[0]
        loaded = LoadedModel(model, CameraSettings(), "benchmark", "")
        return render_surface(loaded, w, torch.zeros(1, 2), resolution=case.surface_res,
                              samples=case.surface_res, keep_sdf=True).sdf


def _diff_entry(k, r) -> Dict[str, object]:
    return {"max_abs_diff": _max_abs_diff(k, r), "max_abs_reference": r.detach().abs().max().item()}


def compare_e2e(case: E2ECase, models, inputs) -> Dict[str, object]:
    """One step of each impl on the same weights, inputs and seed (also the first, untimed warm-up):
    max |kernel - reference| of the outputs (train_step: thumbnail, sdf, eikonal term, loss and every
    parameter gradient; generate: image and thumbnail)."""
    result: Dict[str, object] = {}
    try:
        if case.train:
            got = {}
            for impl in IMPLS:
                model = models[impl]
                _, setup = make_e2e_step(case, model, inputs)
                setup()
                (_, thumb, sdf, eikonal), loss = stage1_forward_loss(model, inputs)
                loss.backward()
                grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
                got[impl] = {"thumbnail": thumb.detach(), "sdf": sdf.detach(), "eikonal": eikonal.detach(),
                             "loss": loss.detach(), "grads": grads}
                model.zero_grad(set_to_none=True)
            k, r = got["kernel"], got["reference"]
            for name in ("thumbnail", "sdf", "eikonal", "loss"):
                result[name] = _diff_entry(k[name], r[name])
            names = [name for name in r["grads"] if name in k["grads"]]
            if names:
                entries = {name: _diff_entry(k["grads"][name], r["grads"][name]) for name in names}
                result["grad.all_params"] = {
                    "max_abs_diff": max(e["max_abs_diff"] for e in entries.values()),
                    "max_abs_reference": max(e["max_abs_reference"] for e in entries.values()),
                    "params": len(names),
                }
                worst = max(entries, key=lambda name: _relative(entries[name]))
                result["grad.worst_param"] = {**entries[worst], "param": worst}
            missing = sorted(set(r["grads"]) ^ set(k["grads"]))
            if missing:
                result["grad.missing"] = {"max_abs_diff": None, "max_abs_reference": None, "params": missing}
            del got
        elif case.pass_name == "mesh":
            result["sdf"] = _diff_entry(*(_surface_sdf(case, models[impl], inputs) for impl in IMPLS))
            meshes = {impl: make_e2e_step(case, models[impl], inputs)[0]() for impl in IMPLS}
            counts = {impl: int(len(mesh.vertices)) for impl, mesh in meshes.items()}
            result["vertices"] = {"max_abs_diff": None, "max_abs_reference": None, **counts,
                                  "params": ", ".join(f"{impl} {count}" for impl, count in counts.items())}
        else:
            outs = {}
            for impl in IMPLS:
                step, _ = make_e2e_step(case, models[impl], inputs)
                outs[impl] = step()
            (k_image, k_thumb), (r_image, r_thumb) = outs["kernel"], outs["reference"]
            result["image"] = _diff_entry(k_image, r_image)
            result["thumbnail"] = _diff_entry(k_thumb, r_thumb)
            del outs
    except Exception as error:  # noqa: BLE001 (reported, the timing goes on)
        result["error"] = f"{type(error).__name__}: {error}"
    gc.collect()
    return result


def _check_summary(check: Dict[str, object]) -> str:
    if "error" in check:
        return f"check: {check['error']}"
    entries = {name: e for name, e in check.items() if e.get("max_abs_diff") is not None}
    if not entries:
        return "check: nothing compared"
    worst = max(entries.items(), key=lambda item: _relative(item[1]))
    return (f"check: largest max |kernel - reference| relative to max |reference|: {_relative(worst[1]):.3g} "
            f"({worst[0]}{' ' + worst[1]['param'] if 'param' in worst[1] else ''}: "
            f"{worst[1]['max_abs_diff']:.3g} of {worst[1]['max_abs_reference']:.3g})")


def run_e2e_case(case: E2ECase, args, device) -> Tuple[List[Dict[str, object]], Dict, Optional[Dict]]:
    """(rows kernel + reference, check, profile of the kernel impl or None)."""
    rows: List[Dict[str, object]] = []
    base = {"case": case.name, "pass": case.pass_name, "batch": case.batch, "image_size": case.image_size,
            "rays": case.batch * case.render_res ** 2, "render_res": case.render_res, "samples": case.samples,
            "grad_mode": case.train, "description": case.description}
    try:
        models = build_e2e_generators(case, device)
        inputs = make_e2e_inputs(case, device)
    except Exception as error:  # noqa: BLE001 (a failing case is reported, the run goes on)
        message = f"{type(error).__name__}: {error}"
        print(f"  {case.name:<18} setup failed: {message}", flush=True)
        gc.collect()
        return [{**base, "impl": impl, "error": message} for impl in IMPLS], {"error": message}, None
    if case.pass_name == "mesh":
        # a randomly initialised SDF rarely crosses 0 in the frustum: mesh its median level set instead,
        # the same work for marching cubes (the network pass does not depend on the level)
        inputs["mesh_level"] = float(_surface_sdf(case, models["kernel"], inputs).median())
    check = compare_e2e(case, models, inputs)
    print(f"  {case.name:<18} {_check_summary(check)}", flush=True)
    repeats = args.e2e_repeats
    if case.pass_name == "mesh" and torch.device(device).type == "cpu":
        repeats = min(repeats, MESH_CPU_REPEATS)
    rows = [{**base, "impl": impl} for impl in IMPLS]
    steps, setups = {}, {}
    for row in rows:   # warm-up and peak memory one impl at a time
        impl = row["impl"]
        try:
            steps[impl], setups[impl] = make_e2e_step(case, models[impl], inputs)
            for _ in range(max(args.warmup, 1) if torch.device(device).type == "cuda" else 0):
                if setups[impl] is not None:   # generation and meshing need none
                    setups[impl]()
                steps[impl]()   # on CPU the check call and the profiled call below are the warm-up
            row["peak_bytes"] = _common.peak_memory(steps[impl], device=device, setup=setups[impl])
            row["peak_mib"] = row["peak_bytes"] / _common.MIB
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {error}"
            steps.pop(impl, None)
        models[impl].zero_grad(set_to_none=True)
        gc.collect()
    if steps:   # then the times, interleaved (kernel, reference, reference, kernel, ...)
        timings = _common.time_interleaved(steps, device=device, repeats=repeats, setups=setups,
                                           max_seconds=args.max_seconds * len(steps),
                                           min_repeats=min(3, repeats))
        for row in rows:
            if row["impl"] in timings:
                row.update(timings[row["impl"]])
                row["images_per_s"] = case.batch / (row["median_ms"] * 1e-3)
    del steps, setups
    for row in rows:
        models[row["impl"]].zero_grad(set_to_none=True)
        status = row.get("error") or f"{row['median_ms']:.1f} ms ({row['repeats']} repeats)"
        print(f"  {case.name:<18} {case.pass_name:<10} {row['impl']:<9} {status}", flush=True)
    gc.collect()
    kernel_row, reference_row = rows
    _common.compare_to_reference(kernel_row, reference_row)
    profile = None
    if case.profile:
        try:
            step, setup = make_e2e_step(case, models["kernel"], inputs)
            profile = _common.profile_top_ops(step, device=device, setup=setup, row_limit=E2E_PROFILE_ROWS,
                                              group_substrings=(FUSED_OP_MARK,))
            profile["impl"] = "kernel"
            del step, setup
            print(f"  {case.name:<18} profiled one kernel step: {profile['wall_ms']:.1f} ms under the profiler",
                  flush=True)
        except Exception as error:  # noqa: BLE001
            profile = {"impl": "kernel", "error": f"{type(error).__name__}: {error}"}
            print(f"  {case.name:<18} profile failed: {profile['error']}", flush=True)
    del models, inputs
    gc.collect()
    return rows, check, profile


def evaluate_e2e_targets(rows: List[Dict[str, object]], device_type: str) -> List[Dict[str, object]]:
    """kernel >= 1.3x faster than reference on e2e_stage1_step and e2e_generate_256 (CPU and CUDA alike);
    same entries as evaluate_targets, and the same short "targets" string on the kernel rows."""
    targets: List[Dict[str, object]] = []
    if device_type not in ("cpu", "cuda"):
        return targets
    by_key = {(r["case"], r["impl"]): r for r in rows}
    for case in E2E_TARGET_CASES:
        kernel = by_key.get((case, "kernel"))
        if kernel is None:
            continue
        value = kernel.get("speedup")
        passed = value is not None and value >= E2E_SPEEDUP_TARGET
        targets.append({"name": f"{case} {kernel['pass']} kernel >= {E2E_SPEEDUP_TARGET}x faster than reference",
                        "case": case, "pass": kernel["pass"], "metric": "speedup", "value": value,
                        "threshold": E2E_SPEEDUP_TARGET, "passed": bool(passed)})
        kernel["targets"] = f"speed>={E2E_SPEEDUP_TARGET}x {'PASS' if passed else 'FAIL'}"
    return targets


def print_targets(targets: List[Dict[str, object]]) -> int:
    for t in targets:
        value = t["value"]
        if value is None:
            shown = "n/a"
        elif t["metric"] in ("speedup", "mem_ratio", "extra_mem_ratio", "slice_over_raw"):
            shown = f"{value:.2f}x"
        else:
            shown = f"{value:.1f}%"
        print(f"  [{'PASS' if t['passed'] else 'FAIL'}] {t['name']}: {shown}")
    passed = sum(t["passed"] for t in targets)
    print(f"  {passed}/{len(targets)} targets met")
    return passed


def print_e2e_report(cases: List[E2ECase], rows, checks, profiles, device_type: str) -> None:
    print()
    print("end-to-end (stylesdf_fast.models.Generator, every fused op impl=\"kernel\" vs impl=\"reference\", "
          "identical weights and inputs):")
    columns = [
        ("case", "case", ""), ("pass", "pass", ""), ("impl", "impl", ""), ("batch", "batch", ""),
        ("median_ms", "median ms", ".1f"), ("speedup", "speedup", ".2f"), ("images_per_s", "images/s", ".3g"),
        ("peak_mib", "peak MiB", ".1f"), ("mem_ratio", "mem ratio", ".2f"), ("repeats", "n", ""),
        ("targets", "targets", ""),
    ]
    _common.print_table_and_errors(rows, columns)
    for case in cases:
        print(f"case {case.name}: {case.description}")
        if case.note:
            print(f"note: {case.name}: {case.note}")
        check = checks[case.name]
        if "error" in check:
            print(f"  check: {check['error']}")
        else:
            parts = []
            for name, c in check.items():
                if c.get("max_abs_diff") is None:
                    parts.append(f"{name} {c.get('params')}")
                    continue
                label = f"{name} ({c['param']})" if "param" in c else name
                parts.append(f"{label} {c['max_abs_diff']:.2g} of {c['max_abs_reference']:.2g}")
            print("  check max |kernel - reference| (of max |reference|): " + ", ".join(parts))
    for case in cases:
        profile = profiles.get(case.name)
        if profile is None:
            continue
        print()
        if "error" in profile:
            print(f"profile {case.name} (kernel): {profile['error']}")
            continue
        print(f"profile {case.name} (impl=kernel, one {case.pass_name} under torch.profiler: "
              f"{profile['wall_ms'] / 1e3:.3g} s wall, {profile['total_self_cpu_ms'] / 1e3:.3g} s self CPU over "
              f"{profile['ops']} ops): top {len(profile['rows'])} ops by "
              f"{'self CUDA time' if profile.get('ranked_by') == 'self_device' else 'self CPU time'}")
        columns = [("op", "op", ""), ("calls", "calls", ""), ("self_cpu_ms", "self CPU ms", ".1f"),
                   ("self_cpu_pct", "self CPU %", ".1f"), ("cpu_total_ms", "CPU total ms", ".1f")]
        if device_type == "cuda":
            columns += [("self_device_ms", "self CUDA ms", ".2f"), ("self_device_pct", "self CUDA %", ".1f")]
            print(f"  GPU time in all ops: {profile.get('total_self_device_ms') or 0.0:.1f} ms")
        _common.print_table(profile["rows"], columns)
        fused = profile["groups"].get(FUSED_OP_MARK, {})
        print(f"  top {len(profile['rows'])}: {_pct(profile['top_self_cpu_pct'])} of self CPU time; "
              f"our fused ops (names containing {FUSED_OP_MARK!r}: the ops and their autograd nodes): "
              f"{_pct(fused.get('self_cpu_pct'))} ({fused.get('self_cpu_ms', 0.0):.1f} ms self CPU, "
              f"{fused.get('calls', 0)} calls)")


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}%"


def huge_pages_probe(size_mib: int = 64) -> Dict[str, object]:
    """Whether large CPU tensors really sit on transparent huge pages in this process (the allocator
    setting THP_MEM_ALLOC_ENABLE changes CPU times by up to 1.5x, the reference's most): a fresh
    `size_mib` MiB tensor is written once and the AnonHugePages of its mapping are read from
    /proc/self/smaps. "on" is None where that cannot be read (not Linux)."""
    result: Dict[str, object] = {
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "system_setting": None, "probe_mib": size_mib, "anon_huge_pages_mib": None, "on": None,
    }
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            result["system_setting"] = f.read().strip()
    except OSError:
        pass
    probe = torch.empty(size_mib * _common.MIB // 4, dtype=torch.float32).fill_(1.0)
    address = probe.data_ptr()
    try:
        inside = False
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and ":" not in fields[0]:  # a mapping's header: start-end perms ...
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    inside = start <= address < end
                elif inside and fields[0] == "AnonHugePages:":
                    result["anon_huge_pages_mib"] = int(fields[1]) / 1024  # kB
                    result["on"] = int(fields[1]) > 0
                    break
    except (OSError, ValueError, IndexError):
        pass
    del probe
    return result


def huge_pages_note(probe: Dict[str, object]) -> str:
    state = {True: "ON", False: "OFF", None: "unknown"}[probe["on"]]
    measured = ("" if probe["anon_huge_pages_mib"] is None else
                f"; a fresh {probe['probe_mib']} MiB tensor sits on {probe['anon_huge_pages_mib']:.0f} MiB of huge pages")
    return (f"huge pages: {state} (THP_MEM_ALLOC_ENABLE={probe['thp_mem_alloc_enable']}, system "
            f"{probe['system_setting']}{measured})")


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
                        help="at most this many timed repeats for the reference, and so alternating rounds of "
                             "the op-level section (default 5; it is slow and, on CPU at the train_stage1 shape, "
                             "allocates about a GB per call)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    parser.add_argument("--max-seconds", type=float, default=3.0,
                        help="stop timing a measurement after this many seconds once 3 repeats are done "
                             "(default 3; keeps slow CPU references short)")
    parser.add_argument("--json", default=None, help="output path (default benchmarks/render_speed_<device>.json)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated subset of train_stage1,video,surface,slice_call (op section) and "
                             "e2e_stage1_step,e2e_generate_256,e2e_generate_1024,e2e_mesh_128 (end-to-end section)")
    parser.add_argument("--no-end-to-end", dest="end_to_end", action="store_false",
                        help="skip the end-to-end section (the Generator, kernel vs reference)")
    parser.add_argument("--e2e-batch", type=int, default=None,
                        help="images per end-to-end step (default 1 on CPU, 4 on CUDA: the official per-GPU "
                             "batch; e2e_generate_1024 uses 1 on CPU whatever this says)")
    parser.add_argument("--e2e-repeats", type=int, default=None,
                        help="timed repeats per end-to-end measurement (default 3 on CPU, 10 on CUDA, 2 with "
                             "--quick; --max-seconds stops earlier once 3 are done)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="size of the copy-bandwidth tensor (default 256 MiB, 8 with --quick)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    if args.copy_mib is None:
        args.copy_mib = 8 if args.quick else 256
    if args.e2e_batch is None:
        args.e2e_batch = 4 if args.device == "cuda" else 1
    if args.e2e_batch < 1:
        parser.error("--e2e-batch must be >= 1")
    if args.e2e_repeats is None:
        args.e2e_repeats = 2 if args.quick else (10 if args.device == "cuda" else 3)
    args.e2e_repeats = max(args.e2e_repeats, 1)
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
    op_available = _common.torch_op_available("stylesdf_fast", "sdf_volume_render")
    run = _common.begin_run("render_speed", args,
                            f"sdf_volume_render op={'yes' if op_available else 'MISSING'} ")
    if run is None:
        return 2
    device, env, ext = run["device"], run["env"], run["ext"]
    ext_file, memory_check, copy = run["ext_file"], run["memory_check"], run["copy"]
    print(f"extension file: {ext_file.get('file')}")
    huge_pages = huge_pages_probe()
    print(huge_pages_note(huge_pages))

    cases = make_cases(args.quick)
    e2e_cases = make_e2e_cases(args.quick, device.type, args.e2e_batch)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        known = [c.name for c in cases] + [c.name for c in e2e_cases]
        unknown = sorted(set(wanted) - set(known))
        if unknown:
            print(f"render_speed: unknown case(s) {unknown}; choose from {known}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
        e2e_cases = [c for c in e2e_cases if c.name in wanted]
    if not args.end_to_end:
        if e2e_cases and args.cases:
            print(f"note: --no-end-to-end skips {[c.name for c in e2e_cases]}")
        e2e_cases = []
    rows: List[Dict[str, object]] = []
    checks: Dict[str, object] = {}
    for case in cases:
        case_rows, checks[case.name] = run_case(case, args, device, copy, case.passes)
        rows.extend(case_rows)

    e2e_rows: List[Dict[str, object]] = []
    e2e_checks: Dict[str, object] = {}
    e2e_profiles: Dict[str, object] = {}
    if e2e_cases:
        print(f"end-to-end section: {len(e2e_cases)} case(s), batch {args.e2e_batch}, "
              f"{args.e2e_repeats} timed repeats at most", flush=True)
    for case in e2e_cases:
        case_rows, e2e_checks[case.name], profile = run_e2e_case(case, args, device)
        e2e_rows.extend(case_rows)
        if profile is not None:
            e2e_profiles[case.name] = profile

    # the targets are defined for the full-size work; a --quick smoke run only checks that it all runs
    targets = [] if args.quick else evaluate_targets(rows, device.type)
    e2e_targets = [] if args.quick else evaluate_e2e_targets(e2e_rows, device.type)
    ext_file_after = _common.extension_file_info()
    extension_changed = ext_file_after.get("file_sha256") != ext_file.get("file_sha256")
    if extension_changed:
        print("warning: the compiled extension file changed on disk during the run (rebuilt?); this process "
              "kept the library it loaded at start, whose hash is the one recorded")

    print()
    if cases:
        columns = [
            ("case", "case", ""), ("pass", "pass", ""), ("label", "impl", ""), ("median_ms", "median ms", ".2f"),
            ("speedup", "speedup", ".2f")] + ([("slice_over_raw", "slice/raw", ".2f")] if any(
                c.slice_call for c in cases) else []) + [
            ("peak_mib", "peak MiB", ".1f"), ("mem_ratio", "mem ratio", ".2f"),
            ("peak_excluding_outputs_mib", "extra MiB", ".1f"), ("extra_mem_ratio", "extra ratio", ".2f"),
            ("gb_per_s", "GB/s", ".2f"), ("pct_copy_bw", "% copy bw", ".1f"), ("repeats", "n", ""),
            ("targets", "targets", ""),
        ]
        _common.print_table_and_errors(rows, columns)
        for case in cases:
            print(f"case {case.name}: {case.description}; byte model " + ", ".join(
                f"{p} {bytes_model(case)[p] / 1e6:.1f} MB" for p in case.passes))
            if case.note:
                print(f"note: {case.name}: {case.note}")
            check = checks[case.name]
            if "error" in check:
                print(f"  check: {check['error']}")
            else:
                print(f"  check {diff_label(case)}: " + ", ".join(
                    f"{name} {c['max_abs_diff']:.2g}" for name, c in check.items()))
        print("peak MiB includes what the step returns, while alive (forward: the maps and weights; forward_backward: "
              "the gradients of raw and beta): "
              + ", ".join(f"{c.name} {p} {output_bytes(c, p) / _common.MIB:.1f} MiB" for c in cases for p in c.passes))
    if e2e_cases:
        print_e2e_report(e2e_cases, e2e_rows, e2e_checks, e2e_profiles, device.type)
    if hasattr(os, "getloadavg"):
        print(f"load average at end {list(os.getloadavg())} (other processes on the cores make every number "
              f"noisier; compare with the load at start)")
    rss = max_rss_mib()
    if rss is not None:
        print(f"process peak resident memory: {rss / 1024:.2f} GiB")

    print()
    print(huge_pages_note(huge_pages))
    print(f"targets ({device.type}):")
    if not targets:
        print("  (not evaluated: --quick run)" if args.quick else "  (none defined for this device / selection)")
    passed = print_targets(targets)
    e2e_passed = 0
    if e2e_cases:
        print(f"end-to-end targets ({device.type}):")
        if not e2e_targets:
            print("  (not evaluated: --quick run)" if args.quick else "  (none defined for this device / selection)")
        e2e_passed = print_targets(e2e_targets)

    payload = {
        "benchmark": "render_speed",
        "section": "op+end_to_end" if e2e_cases else "op",
        "sections": ["op"] + (["end_to_end"] if e2e_cases else []),
        "load_average_at_start": env["load_average_1_5_15"],
        "huge_pages": huge_pages,
        "settings": {"device": str(device), "quick": args.quick, "repeats": args.repeats, "huge_pages": huge_pages["on"],
                     "reference_repeats": args.reference_repeats, "warmup": args.warmup,
                     "max_seconds": args.max_seconds, "dtype": "float32", "cases": [c.name for c in cases],
                     "end_to_end": bool(e2e_cases), "e2e_cases": [c.name for c in e2e_cases],
                     "e2e_batch": args.e2e_batch, "e2e_repeats": args.e2e_repeats},
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
        "end_to_end": {
            "description": "stylesdf_fast.models.Generator with every fused op impl='kernel' vs impl='reference', "
                           "identical weights (the reference loads the kernel's state_dict), inputs and seeds",
            "stage1_loss": "mean(thumb^2) [stand-in for the adversarial term] + 0.1 mean((|eikonal| - 1)^2) "
                           "+ 0.05 mean(exp(-100 |sdf|))",
            "cases": [{"name": c.name, "pass": c.pass_name, "batch": c.batch, "image_size": c.image_size,
                       "render_res": c.render_res, "samples": c.samples, "generator_config": c.config,
                       "description": c.description, "note": c.note, "check": e2e_checks.get(c.name),
                       "profile": e2e_profiles.get(c.name)} for c in e2e_cases],
            "results": e2e_rows,
            "targets": e2e_targets,
            "targets_met": e2e_passed,
            "targets_total": len(e2e_targets),
        },
    }
    path = _common.write_json(args.json, payload, device=device)
    print(f"\nwrote {path}")
    # a missed target is a finding, a row that could not run is a breakage
    broken = [r for r in rows + e2e_rows if r.get("error")]
    broken += [p for p in e2e_profiles.values() if isinstance(p, dict) and p.get("error")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
