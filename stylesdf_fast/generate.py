"""python -m stylesdf_fast.generate --ckpt PATH [--identities N] [--views K] [--fixed-angles] ...

Per identity (official generate_shapes_and_images.py layout, without PyTorch3D and on CPU too):
  images/NNNNNNN.png              its K views in one row (full images; thumbnails for a renderer-only model)
  images/NNNNNNN_thumb.png        the 64x64 renderer outputs of the same views
  depth/NNNNNNN.png               depth maps of the views, normalised per view, colour-mapped
  marching_cubes_meshes/NNNNNNN.obj   marching cubes of the SDF in the first view's frustum, vertex colours
  depth_map_meshes/NNNNNNN_view_KK_azim_A_elev_E.obj   each view's depth map as a mesh
  generation.json                 what was generated, from which checkpoint, with which settings
Surfaces (depth maps and meshes) come from the surface renderer: --mesh-resolution^2 rays and as many
samples per ray (official: 128). With --no-meshes, the depth maps come from the generator's own render.
Decoder noise is fresh for every image, as the official script (--fixed-noise: the stored buffers for
every view); --official-mesh-mapping places mesh vertices as the official script does.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from PIL import Image

from ._atomic import atomic_path
from .generation import cli
from .generation.mesh import NoSurfaceError, save_mesh
from .generation.sampling import (DEFAULT_TRUNCATION, SurfaceRender, angles_in_degrees, describe, generate_images,
                                  identity_latents, render_surface, renderer_latents, to_uint8, truncation_centres,
                                  view_angles, write_json_atomic)
from .generation.shapes import depth_mesh, extract_mesh
from .generation.video import colorize_depth


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser("generate", __doc__, truncation=DEFAULT_TRUNCATION, outdir_root="generated")
    parser.add_argument("--identities", type=int, default=16, help="identities to generate (official: 16)")
    parser.add_argument("--views", "--num_views_per_id", dest="views", type=int, default=1,
                        help="random views per identity, from the training pose distribution")
    parser.add_argument("--fixed-angles", "--fixed_camera_angles", dest="fixed_angles", action="store_true",
                        help="the official 13 fixed views instead of random ones")
    parser.add_argument("--mesh-resolution", type=int, default=128,
                        help="surface renders: rays per side and samples per ray (official: 128)")
    parser.add_argument("--mesh-format", choices=("obj", "ply"), default="obj", help="mesh file format")
    parser.add_argument("--no-meshes", action="store_true",
                        help="skip the surface renders and meshes (depth maps then come from the generator's render)")
    parser.add_argument("--fixed-noise", action="store_true",
                        help="the decoder's stored noise buffers for every view (default: fresh noise per image, "
                             "as the official script)")
    parser.add_argument("--official-mesh-mapping", action="store_true",
                        help="place marching-cubes vertices as the official script does (0.5-2%% too wide) "
                             "instead of where their SDF was sampled")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    cli.check_common_arguments(parser, args)
    if args.identities < 1:
        cli.fail(parser, f"--identities must be >= 1, got {args.identities}")
    if args.views < 1:
        cli.fail(parser, f"--views must be >= 1, got {args.views}")
    if args.mesh_resolution < 8:
        cli.fail(parser, f"--mesh-resolution must be >= 8, got {args.mesh_resolution}")


def main(argv=None) -> int:
    parser = build_parser()
    args, device, model = cli.start(parser, argv, check_arguments)
    outdir = cli.output_folder(parser, args)
    print(f"model: {describe(model)}\noutput: {outdir}")
    summary = generate(model, args, outdir)
    write_json_atomic(outdir / "generation.json", summary)
    failed = [entry["identity"] for entry in summary["identities"] if entry.get("mesh_error")]
    if failed:
        print(f"no marching-cubes mesh for identities {failed}: their SDF has no zero crossing in the frustum "
              f"(an untrained or diverged renderer); images and depth maps were written")
    print(f"wrote {len(summary['identities'])} identities to {outdir}")
    return 0


def generate(model, args, outdir: Path) -> Dict:
    from tqdm import tqdm

    z = identity_latents(args.identities, model.generator.style_dim, args.seed)
    angles = view_angles(args.identities, args.views, model.cameras, fixed=args.fixed_angles, seed=args.seed)
    centres = truncation_centres(model.generator, args.truncation, seed=args.seed)
    for folder in ("images", "depth") + (() if args.no_meshes else ("marching_cubes_meshes", "depth_map_meshes")):
        (outdir / folder).mkdir(exist_ok=True)
    entries = []
    for identity in tqdm(range(args.identities), desc="identities", unit="id", dynamic_ncols=True):
        entries.append(generate_identity(model, args, outdir, identity, z[identity:identity + 1],
                                         angles[identity], centres))
    return {"checkpoint": model.path, "model": describe(model), "seed": args.seed, "truncation": args.truncation,
            "noise": "fixed buffers" if args.fixed_noise else "fresh per image",
            "mesh_mapping": "official" if args.official_mesh_mapping else "sampled points",
            "views": [[list(angles_in_degrees(a)) for a in per_id] for per_id in angles.tolist()],
            "mesh_resolution": None if args.no_meshes else args.mesh_resolution, "identities": entries}


def generate_identity(model, args, outdir: Path, identity: int, z: torch.Tensor, angles: torch.Tensor,
                      centres) -> Dict:
    """One identity's images, depth maps and meshes; angles [K, 2]."""
    name = f"{identity:07d}"
    images, thumbnails = generate_images(model, z, angles.unsqueeze(0), truncation=args.truncation, centres=centres,
                                         batch_size=args.batch_size, fixed_noise=args.fixed_noise,
                                         seed=args.seed + identity)
    rows = images[0] if images is not None else thumbnails[0]                    # [K, 3, S, S]
    _save_row(to_uint8(rows), outdir / "images" / f"{name}.png")
    _save_row(to_uint8(thumbnails[0]), outdir / "images" / f"{name}_thumb.png")
    entry: Dict = {"identity": identity, "images": f"images/{name}.png", "thumbnails": f"images/{name}_thumb.png"}
    w = renderer_latents(model.generator, z, args.truncation, centres)           # [1, D]
    if args.no_meshes:
        surface = _renderer_surface(model, w, angles)
    else:
        surface = render_surface(model, w.expand(angles.shape[0], -1), angles,
                                 resolution=args.mesh_resolution, samples=args.mesh_resolution)
        entry.update(_write_meshes(model, args, outdir, name, w, angles, surface))
    depth = np.stack([_depth_picture(surface, k) for k in range(angles.shape[0])])
    _save_row(depth, outdir / "depth" / f"{name}.png")
    entry["depth"] = f"depth/{name}.png"
    return entry


def _write_meshes(model, args, outdir: Path, name: str, w, angles, surface: SurfaceRender) -> Dict:
    out: Dict = {"depth_map_meshes": []}
    for k, angle in enumerate(angles.tolist()):
        azim, elev = angles_in_degrees(angle)
        path = outdir / "depth_map_meshes" / f"{name}_view_{k:02d}_azim_{azim:+.1f}_elev_{elev:+.1f}.{args.mesh_format}"
        save_mesh(depth_mesh(surface, k), path)
        out["depth_map_meshes"].append(str(path.relative_to(outdir)))
    try:
        mesh = extract_mesh(model, w, angles[0].tolist(), resolution=args.mesh_resolution,
                            official_mapping=args.official_mesh_mapping)
    except NoSurfaceError as error:
        out["mesh_error"] = str(error)
        return out
    path = outdir / "marching_cubes_meshes" / f"{name}.{args.mesh_format}"
    save_mesh(mesh, path)
    out["marching_cubes_mesh"] = str(path.relative_to(outdir))
    out["mesh_vertices"], out["mesh_faces"] = int(len(mesh.vertices)), int(len(mesh.faces))
    return out


@torch.no_grad()
def _renderer_surface(model, w: torch.Tensor, angles: torch.Tensor) -> SurfaceRender:
    """Depth from the generator's own renderer (its resolution and samples): the cheap path of --no-meshes."""
    renderer_res = model.generator.renderer.out_im_res
    return render_surface(model, w.expand(angles.shape[0], -1), angles, resolution=renderer_res,
                          samples=model.generator.renderer.n_samples)


def _depth_picture(surface: SurfaceRender, k: int) -> np.ndarray:
    """uint8 [R, R, 3]: the depth of the foreground, colour-mapped; a render with no pixel past the
    0.5 background weight (a soft, unconverged SDF) is shown unmasked rather than blank."""
    foreground = surface.foreground[k, 0]
    return colorize_depth(surface.depth[k, 0], foreground if bool(foreground.any()) else None)


def _save_row(tiles: np.ndarray, path: Path) -> None:
    """tiles uint8 [K, H, W, 3] -> one PNG [H, K*W, 3], written atomically."""
    row = np.concatenate(list(tiles), axis=1)
    with atomic_path(path) as temporary:
        Image.fromarray(row).save(temporary, format="PNG")


if __name__ == "__main__":
    sys.exit(main())
