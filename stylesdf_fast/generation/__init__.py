"""What users do with a trained (or official) StyleSDF generator: images, thumbnails, depth maps,
surfaces, marching-cubes and depth-map meshes, videos. The command lines `python -m
stylesdf_fast.generate` and `python -m stylesdf_fast.render_video` are thin layers over these.

    model = load_model("final.pt")                                  # official checkpoints too
    z = identity_latents(4, model.generator.style_dim, seed=1234)   # [4, 256]
    angles = view_angles(4, 3, model.cameras, seed=1234)            # [4, 3, 2] (azimuth, elevation)
    images, thumbnails = generate_images(model, z, angles)          # [4, 3, 3, S, S], [4, 3, 3, 64, 64]
    w = renderer_latents(model.generator, z, 0.5, truncation_centres(model.generator, 0.5))
    mesh = extract_mesh(model, w[0])                                # Mesh: vertices [V, 3], faces [F, 3]
    save_mesh(mesh, "identity0.ply")
    projector = NoiseProjector(mesh, model.generator.decoder, seed=0)  # geometry-aware decoder noise
"""
from .mesh import Mesh, NoSurfaceError, depth_map_mesh, frustum_to_box, load_mesh, marching_cubes_mesh, save_mesh
from .noise_projection import NoiseProjector, subdivide_mesh, subdivision_level
from .rasterize import Fragments, interpolate_vertex_values, project_points, rasterize_mesh, rasterize_vertex_values
from .sampling import (CameraSettings, LoadedModel, SurfaceRender, generate_images, identity_latents, iter_images,
                       load_model, render_surface, renderer_latents, to_uint8, truncation_centres, view_angles,
                       view_cameras)
from .shapes import depth_mesh, extract_mesh, vertex_colors
from .video import colorize_depth, shade_normals, video_info, write_video

__all__ = ["CameraSettings", "LoadedModel", "SurfaceRender", "generate_images", "identity_latents", "iter_images",
           "load_model", "render_surface", "renderer_latents", "to_uint8", "truncation_centres", "view_angles",
           "view_cameras", "Mesh", "NoSurfaceError", "depth_map_mesh", "frustum_to_box", "load_mesh",
           "marching_cubes_mesh", "save_mesh", "depth_mesh", "extract_mesh", "vertex_colors", "colorize_depth",
           "shade_normals", "video_info", "write_video", "NoiseProjector", "subdivide_mesh", "subdivision_level",
           "Fragments", "interpolate_vertex_values", "project_points", "rasterize_mesh", "rasterize_vertex_values"]
