"""Datasets: the official StyleSDF LMDB format (reader, writer, image-folder conversion) and the
built-in synthetic 3D dataset."""
from .dataset import DatasetError, MultiResolutionDataset, image_to_tensor, stored_resolutions
from .lmdb_format import LmdbWriter, image_key, is_lmdb_dir, meta_key, parse_sizes, resize_and_center_crop
from .prepare import PrepareReport, default_cache_dir, list_image_files, prepare_dataset, resolve_dataset
from .synthetic import SyntheticConfig, build_synthetic_dataset, ensure_synthetic_dataset

__all__ = [
    "DatasetError", "MultiResolutionDataset", "image_to_tensor", "stored_resolutions", "LmdbWriter",
    "image_key", "meta_key", "is_lmdb_dir", "parse_sizes", "resize_and_center_crop", "PrepareReport",
    "default_cache_dir", "list_image_files", "prepare_dataset", "resolve_dataset", "SyntheticConfig",
    "build_synthetic_dataset", "ensure_synthetic_dataset",
]
