"""python -m stylesdf_fast.render_video --ckpt PATH [--trajectory azimuth|ellipse] [--frames 250] [--depth]
                                       [--project-noise [--mesh-resolution 128]]

For each identity, a video of the camera moving along the official trajectories: `azimuth` sweeps
the azimuth (1.5 x the training range) at elevation 0; `ellipse` (the official default) also moves
the elevation. The decoder noise is fixed across frames (but see --project-noise). MP4 through
imageio-ffmpeg (which ships its own ffmpeg), GIF when asked (--format gif) or when no ffmpeg works.
With --depth, a second video shades the surface seen in each frame (normals of the rendered surface
points, Lambertian light; no PyTorch3D).
With --project-noise (official spelling --project_noise; full-pipeline checkpoints only), the decoder
noise is painted on the identity's surface instead of fixed to the image, so fine detail moves with
the face: the marching-cubes mesh of the SDF in the frontal view's frustum (--mesh-resolution^3, as
the official 128^3) is saved, and every frame rasterises it at each noise layer's resolution (no
PyTorch3D); pixels off the mesh keep the fixed noise. An identity whose SDF has no zero crossing
there (an untrained renderer) gets fixed noise, with a message and a note in videos.json.
  video_NNN_<trajectory>.mp4, video_NNN_<trajectory>_depth.mp4, video_NNN_mesh.ply, videos.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .generation import cli
from .generation.sampling import (DEFAULT_TRUNCATION, LoadedModel, describe, identity_latents, render_surface,
                                  renderer_latents, to_uint8, truncation_centres, view_cameras,
                                  write_json_atomic)
from .generation.mesh import NoSurfaceError, save_mesh
from .generation.noise_projection import NoiseProjector
from .generation.shapes import extract_mesh
from .generation.video import shade_normals, video_info, write_video
from .models.cameras import azimuth_sweep_trajectory, ellipse_trajectory

VIDEO_SAMPLES = 64   # samples per ray of the official render_video.py


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser("render_video", __doc__, truncation=DEFAULT_TRUNCATION, outdir_root="videos")
    parser.add_argument("--identities", type=int, default=1, help="videos to render, one identity each")
    parser.add_argument("--trajectory", choices=("azimuth", "ellipse"), default="ellipse",
                        help="camera path (official default: ellipse; --azim_video: azimuth)")
    parser.add_argument("--frames", type=int, default=250, help="frames per video (official: 250)")
    parser.add_argument("--fps", type=int, default=25, help="frames per second")
    parser.add_argument("--format", choices=("mp4", "gif"), default="mp4", help="video container")
    parser.add_argument("--samples", type=int, default=VIDEO_SAMPLES,
                        help=f"samples per ray of the renderer (official video: {VIDEO_SAMPLES})")
    parser.add_argument("--depth", action="store_true", help="also write the shaded-surface (depth) video")
    parser.add_argument("--depth-resolution", type=int, default=128,
                        help="surface renders of the depth video: rays per side and samples per ray")
    parser.add_argument("--project-noise", "--project_noise", dest="project_noise", action="store_true",
                        help="project the decoder noise from the identity's marching-cubes mesh (geometry-aware "
                             "noise: detail sticks to the surface); writes video_NNN_mesh.ply")
    parser.add_argument("--mesh-resolution", "--mesh_resolution", dest="mesh_resolution", type=int, default=128,
                        help="--project-noise mesh: rays per side and samples per ray of its SDF (official: 128)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cli.check_common_arguments(parser, args)
    for name in ("identities", "frames", "fps", "samples"):
        if getattr(args, name) < 1:
            cli.fail(parser, f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.depth_resolution < 8:
        cli.fail(parser, f"--depth-resolution must be >= 8, got {args.depth_resolution}")
    if args.mesh_resolution < 8:
        cli.fail(parser, f"--mesh-resolution must be >= 8, got {args.mesh_resolution}")


def check_model(parser: argparse.ArgumentParser, args: argparse.Namespace, model: LoadedModel) -> None:
    if args.project_noise and model.generator.decoder is None:
        cli.fail(parser, f"--project-noise needs a full-pipeline checkpoint, but {args.ckpt} is renderer only "
                         f"(its videos are the renderer's thumbnails, with no decoder noise to project)")


def trajectory(name: str, frames: int, model: LoadedModel) -> torch.Tensor:
    """Camera angles [frames, 2] of the official video trajectories, for the model's pose ranges."""
    cams = model.cameras
    if name == "azimuth":
        return azimuth_sweep_trajectory(frames, azim_range=cams.azim_range, uniform=cams.uniform)
    return ellipse_trajectory(frames, azim_range=cams.azim_range, elev_range=cams.elev_range, uniform=cams.uniform)


def main(argv=None) -> int:
    parser = build_parser()
    args, device, model = cli.start(parser, argv, check_arguments)
    check_model(parser, args, model)
    model.generator.renderer.set_n_samples(args.samples)
    outdir = cli.output_folder(parser, args)
    print(f"model: {describe(model)}\noutput: {outdir}")
    z = identity_latents(args.identities, model.generator.style_dim, args.seed)
    centres = truncation_centres(model.generator, args.truncation, seed=args.seed)
    angles = trajectory(args.trajectory, args.frames, model)
    written = []
    for identity in range(args.identities):
        written += render_identity(model, args, outdir, identity, z[identity:identity + 1], angles, centres)
    write_json_atomic(outdir / "videos.json", {"checkpoint": model.path, "model": describe(model), "seed": args.seed,
                                               "truncation": args.truncation, "trajectory": args.trajectory,
                                               "fps": args.fps, "project_noise": args.project_noise,
                                               "mesh_resolution": args.mesh_resolution if args.project_noise else None,
                                               "videos": written})
    for entry in written:
        print(f"{entry['path']}: {entry['frames']} frames, {entry['width']}x{entry['height']}")
    return 0


def render_identity(model, args, outdir: Path, identity: int, z: torch.Tensor, angles: torch.Tensor, centres):
    stem = f"video_{identity:03d}_{args.trajectory}"
    w = renderer_latents(model.generator, z, args.truncation, centres)           # [1, D]
    projector, noise_info = None, {"noise": "fixed"}
    if args.project_noise:
        projector, noise_info = noise_projector(model, args, outdir, identity, w)
    paths = [write_video(_frames(model, args, z, angles, centres, f"identity {identity}", projector),
                         outdir / f"{stem}.{args.format}", fps=args.fps)]
    if args.depth:
        paths.append(write_video(_depth_frames(model, args, w, angles, f"identity {identity} depth"),
                                 outdir / f"{stem}_depth.{args.format}", fps=args.fps))
    entries = []
    for path in paths:
        frames, height, width = video_info(path)
        entries.append({"path": str(path), "frames": frames, "height": height, "width": width})
    entries[0].update(noise_info)
    return entries


def noise_projector(model: LoadedModel, args, outdir: Path, identity: int, w: torch.Tensor):
    """(NoiseProjector or None, what to record in videos.json) for one identity: its frontal
    marching-cubes mesh, saved as video_NNN_mesh.ply; None (fixed noise) when the SDF has no surface."""
    print(f"identity {identity}: marching cubes of the frontal view's SDF at {args.mesh_resolution}^3")
    try:
        mesh = extract_mesh(model, w[0], (0.0, 0.0), resolution=args.mesh_resolution)
    except NoSurfaceError as error:
        print(f"identity {identity}: no surface to project the noise from, so the video keeps the fixed noise "
              f"(an untrained or diverged renderer): {error}")
        return None, {"noise": "fixed", "noise_projection_error": str(error)}
    path = save_mesh(mesh, outdir / f"video_{identity:03d}_mesh.ply")
    seed = vertex_noise_seed(args.seed, identity)
    projector = NoiseProjector(mesh, model.generator.decoder, seed=seed)
    faces = {size: int(projector.layer_mesh(k)[1].shape[0]) for k, size in enumerate(projector.resolutions)}
    print(f"identity {identity}: mesh {mesh.num_vertices} vertices, {mesh.num_faces} faces -> {path}; faces "
          f"rasterised per noise resolution: {faces}")
    return projector, {"noise": "projected", "mesh": str(path), "mesh_vertices": mesh.num_vertices,
                       "mesh_faces": mesh.num_faces, "noise_seed": seed}


def vertex_noise_seed(seed: int, identity: int) -> int:
    """Seed of an identity's per-vertex noise: reproducible for --seed, different per identity."""
    return seed * 1000 + identity


@torch.no_grad()
def _frames(model: LoadedModel, args, z: torch.Tensor, angles: torch.Tensor, centres, label: str,
            projector: Optional[NoiseProjector] = None) -> Iterator[np.ndarray]:
    """uint8 [H, W, 3] frames of one identity along the trajectory (full images, or thumbnails of a
    renderer-only model); the decoder noise buffers are fixed (randomize_noise=False), or projected
    from the mesh for each frame's camera when a projector is given."""
    from tqdm import tqdm

    generator = model.generator
    device = generator.renderer.device
    with tqdm(total=angles.shape[0], desc=label, unit="frame", dynamic_ncols=True) as bar:
        for start in range(0, angles.shape[0], args.batch_size):
            part = angles[start:start + args.batch_size]
            cams = view_cameras(part, generator.renderer.out_im_res, model.cameras, device)
            noise = None if projector is None else projector(cams.c2w, cams.focal, generator.renderer.out_im_res)
            image, thumbnail = generator([z.to(device).expand(part.shape[0], -1)], cams.c2w, cams.focal, cams.near,
                                         cams.far, truncation=args.truncation, truncation_latent=centres,
                                         noise=noise, randomize_noise=False)[:2]
            yield from to_uint8((thumbnail if image is None else image).float().cpu())
            bar.update(part.shape[0])


def _depth_frames(model: LoadedModel, args, w: torch.Tensor, angles: torch.Tensor, label: str) -> Iterator[np.ndarray]:
    from tqdm import tqdm

    for angle in tqdm(angles, desc=label, unit="frame", dynamic_ncols=True):
        surface = render_surface(model, w, angle.unsqueeze(0), resolution=args.depth_resolution,
                                 samples=args.depth_resolution)
        shaded = shade_normals(surface.xyz, surface.foreground)                   # [1, 3, R, R] in [0, 1]
        yield (shaded[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


if __name__ == "__main__":
    sys.exit(main())
