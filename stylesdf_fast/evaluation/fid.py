"""FID and KID arithmetic on feature vectors (pure torch, float64), and the statistics cache.

Definitions (the usual ones, so numbers compare with pytorch-fid, StyleGAN2-ADA / StyleGAN3 and
clean-fid given the same features):

- Statistics of a feature set X [N, D]: mean mu [D] and the unbiased covariance
  sigma = (X - mu)^T (X - mu) / (N - 1) [D, D] (numpy.cov's default).
- FID = ||mu1 - mu2||^2 + Tr(s1) + Tr(s2) - 2 Tr((s1 s2)^(1/2)). s1 s2 is not symmetric, but it has the
  same eigenvalues as the symmetric PSD matrix M = s1^(1/2) s2 s1^(1/2), so
  Tr((s1 s2)^(1/2)) = sum_k sqrt(lambda_k(M)). Both matrix functions come from `torch.linalg.eigh`
  (no scipy.linalg.sqrtm, whose Schur iteration can return complex junk for near-singular
  covariances); eigenvalues that rounding pushed slightly below zero are clamped to 0.
- KID (Binkowski et al. 2018, as StyleGAN2-ADA and clean-fid compute it): the unbiased MMD^2 with
  the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, on `num_subsets` random subsets (drawn
  without replacement) of size m = min(N, M, max_subset_size) from each set:
      MMD^2_u = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2,
  reported as the mean and the (population, ddof 0) standard deviation over the subsets. The std is
  the spread of one subset's estimate, not the standard error of the mean.

The cache (`save_statistics` / `load_statistics`) is an .npz without pickled objects: mu, sigma
(float64), optional features (float32: the Inception network computes them in float32, so nothing
is lost) and a JSON `meta` dict (extractor description, image count, data set path, ...).

Shape legend: N, M feature vectors, D feature dimension (2048 for Inception pool3).
"""
from __future__ import annotations

import json
import numbers
import os
import zipfile
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._atomic import atomic_path
from .._checks import count

__all__ = [
    "feature_statistics", "FeatureStatistics", "frechet_distance", "kernel_inception_distance",
    "save_statistics", "load_statistics", "STATISTICS_FORMAT", "STATISTICS_VERSION",
]

STATISTICS_FORMAT = "stylesdf_fast.feature_statistics"   # marks our cache files
STATISTICS_VERSION = 1

ArrayLike = Union[torch.Tensor, np.ndarray]


# --- argument checks -------------------------------------------------------------------------------

def _as_float64(fn: str, name: str, value) -> torch.Tensor:
    """A real torch tensor or numpy array -> float64 CPU tensor; TypeError otherwise."""
    if isinstance(value, np.ndarray):
        if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
            raise TypeError(f"{fn}: {name} must hold real numbers, got numpy dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {value.dtype}")
    return value.detach().to(device="cpu", dtype=torch.float64)


def _check_finite(fn: str, name: str, value: torch.Tensor) -> None:
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{fn}: {name} has {bad} NaN/inf entries; the features are broken upstream")


def _feature_matrix(fn: str, name: str, value, *, min_rows: int) -> torch.Tensor:
    """[N, D] real features with N >= min_rows -> float64 CPU tensor."""
    features = _as_float64(fn, name, value)
    if features.dim() != 2:
        raise ValueError(f"{fn}: {name} must have shape [N, D] (one feature vector per row), got "
                         f"{tuple(features.shape)}")
    if features.shape[0] < min_rows or features.shape[1] < 1:
        raise ValueError(f"{fn}: {name} needs at least {min_rows} rows and 1 column, got "
                         f"{tuple(features.shape)}")
    _check_finite(fn, name, features)
    return features


def _mean_and_covariance(fn: str, mu, sigma, which: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """mu [D], sigma [D, D] (symmetric, finite) -> float64 tensors."""
    mu = _as_float64(fn, f"mu{which}", mu)
    sigma = _as_float64(fn, f"sigma{which}", sigma)
    if mu.dim() != 1:
        raise ValueError(f"{fn}: mu{which} must have shape [D], got {tuple(mu.shape)}")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{fn}: sigma{which} must have shape [D, D] = {(mu.shape[0],) * 2} to match "
                         f"mu{which}, got {tuple(sigma.shape)}")
    _check_finite(fn, f"mu{which}", mu)
    _check_finite(fn, f"sigma{which}", sigma)
    asymmetry = float((sigma - sigma.T).abs().max()) if sigma.numel() else 0.0
    if asymmetry > 1e-6 * max(float(sigma.abs().max()), 1e-300):
        raise ValueError(f"{fn}: sigma{which} must be a symmetric covariance matrix; max |s - s^T| = "
                         f"{asymmetry:.3g}")
    return mu, sigma


# --- statistics ------------------------------------------------------------------------------------

def feature_statistics(features: ArrayLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] (N >= 2) -> (mu [D], sigma [D, D]), float64, sigma with the N - 1 divisor."""
    features = _feature_matrix("feature_statistics", "features", features, min_rows=2)
    mu = features.mean(dim=0)                        # [D]
    centred = features - mu                          # [N, D]
    sigma = centred.T @ centred / (features.shape[0] - 1)
    return mu, sigma


class FeatureStatistics:
    """Streaming mean and covariance: `add(batch [n, D])` any number of times, then read `.mean`
    [D], `.covariance` [D, D] (unbiased, needs count >= 2) and `.count`.

    Keeps float64 sums of the batch-centred scatter and merges batches with Chan et al.'s pairwise
    update (M2 += M2_b + delta delta^T n_a n_b / n), which avoids the cancellation of the naive
    sum(x x^T) - n mu mu^T on features with a large mean. Agrees with `feature_statistics` on the
    concatenated batches to float64 rounding.
    """

    def __init__(self, dim: Optional[int] = None):
        self.dim = None if dim is None else count("FeatureStatistics", "dim", dim, minimum=1)
        self.count = 0
        self._mean: Optional[torch.Tensor] = None       # [D]
        self._scatter: Optional[torch.Tensor] = None    # [D, D] sum of centred outer products

    def add(self, batch: ArrayLike) -> "FeatureStatistics":
        """Adds feature rows [n, D] (n >= 1, D fixed by the first batch or `dim`); returns self."""
        batch = _feature_matrix("FeatureStatistics.add", "batch", batch, min_rows=1)
        if self.dim is not None and batch.shape[1] != self.dim:
            raise ValueError(f"FeatureStatistics.add: batch must have D = {self.dim} columns like the "
                             f"earlier batches, got shape {tuple(batch.shape)}")
        self.dim = batch.shape[1]
        batch_count = batch.shape[0]
        batch_mean = batch.mean(dim=0)                   # [D]
        centred = batch - batch_mean                      # [n, D]
        batch_scatter = centred.T @ centred               # [D, D]
        if self.count == 0:
            self._mean, self._scatter = batch_mean, batch_scatter
        else:
            total = self.count + batch_count
            delta = batch_mean - self._mean               # [D]
            self._mean = self._mean + delta * (batch_count / total)
            self._scatter = self._scatter + batch_scatter + torch.outer(delta, delta) * (
                self.count * batch_count / total)
        self.count += batch_count
        return self

    @property
    def mean(self) -> torch.Tensor:
        """[D] float64."""
        if self.count == 0:
            raise ValueError("FeatureStatistics.mean: no features were added yet")
        return self._mean.clone()

    @property
    def covariance(self) -> torch.Tensor:
        """[D, D] float64, divisor count - 1."""
        if self.count < 2:
            raise ValueError(f"FeatureStatistics.covariance: needs at least 2 feature vectors, "
                             f"got {self.count}")
        return self._scatter / (self.count - 1)


# --- FID -------------------------------------------------------------------------------------------

def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD [D, D] -> its PSD square root, eigenvalues below 0 (rounding) clamped to 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    roots = eigenvalues.clamp(min=0).sqrt()
    return (eigenvectors * roots) @ eigenvectors.T


def _trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """Tr((s1 s2)^(1/2)) via the eigenvalues of the symmetric s1^(1/2) s2 s1^(1/2)."""
    root1 = _symmetric_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = 0.5 * (middle + middle.T)               # remove the rounding asymmetry before eigvalsh
    return torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D] -> float >= 0.

    Computed in float64; a result that rounding made slightly negative (identical inputs) is 0.
    """
    fn = "frechet_distance"
    mu1, sigma1 = _mean_and_covariance(fn, mu1, sigma1, "1")
    mu2, sigma2 = _mean_and_covariance(fn, mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"{fn}: both distributions need the same feature dimension, got D = "
                         f"{mu1.shape[0]} and {mu2.shape[0]}")
    sigma1, sigma2 = 0.5 * (sigma1 + sigma1.T), 0.5 * (sigma2 + sigma2.T)
    mean_term = torch.sum((mu1 - mu2) ** 2)
    trace_term = torch.trace(sigma1) + torch.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2)
    return max(float(mean_term + trace_term), 0.0)


# --- KID -------------------------------------------------------------------------------------------

def _cubic_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x [m, D], y [m', D] -> (x y^T / D + 1)^3 [m, m']."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel for two subsets of equal size m: x, y [m, D] float64."""
    m = x.shape[0]
    within = _cubic_kernel(x, x) + _cubic_kernel(y, y)           # [m, m]
    off_diagonal = within.sum() - torch.diagonal(within).sum()
    return float(off_diagonal / (m * (m - 1)) - 2 * _cubic_kernel(x, y).sum() / (m * m))


def kernel_inception_distance(features_a: ArrayLike, features_b: ArrayLike, *, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> Tuple[float, float]:
    """KID between two feature sets [N, D] and [M, D] -> (mean, std) of the unbiased MMD^2 over
    `num_subsets` subsets of m = min(N, M, max_subset_size) rows each (without replacement).

    Deterministic for a given seed (a private torch.Generator; the global RNG is untouched). Each
    subset is converted to float64 on its own, so float32 inputs of 50k rows stay float32 in memory.
    """
    fn = "kernel_inception_distance"
    num_subsets = count(fn, "num_subsets", num_subsets, minimum=1)
    max_subset_size = count(fn, "max_subset_size", max_subset_size, minimum=2)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{fn}: seed must be an int, got {type(seed).__name__}")
    features_a = _raw_features(fn, "features_a", features_a)
    features_b = _raw_features(fn, "features_b", features_b)
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"{fn}: features_a and features_b need the same dimension D, got shapes "
                         f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")
    subset_size = min(features_a.shape[0], features_b.shape[0], max_subset_size)
    generator = torch.Generator().manual_seed(int(seed))
    estimates = []
    for _ in range(num_subsets):
        rows_a = torch.randperm(features_a.shape[0], generator=generator)[:subset_size]
        rows_b = torch.randperm(features_b.shape[0], generator=generator)[:subset_size]
        estimates.append(_unbiased_mmd2(features_a[rows_a].to(torch.float64),
                                        features_b[rows_b].to(torch.float64)))
    values = torch.tensor(estimates, dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False))


def _raw_features(fn: str, name: str, value) -> torch.Tensor:
    """[N, D] real features (N >= 2), kept in their floating dtype (float64 if not floating), on CPU."""
    if isinstance(value, np.ndarray):
        value = _as_float64(fn, name, value) if value.dtype not in (np.float32, np.float64) \
            else torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {value.dtype}")
    value = value.detach().cpu()
    if not value.is_floating_point():
        value = value.to(torch.float64)
    if value.dim() != 2 or value.shape[0] < 2 or value.shape[1] < 1:
        raise ValueError(f"{fn}: {name} must have shape [N, D] with N >= 2, got {tuple(value.shape)}")
    _check_finite(fn, name, value)
    return value


# --- the statistics cache --------------------------------------------------------------------------

def save_statistics(path: Union[str, os.PathLike], mu: ArrayLike, sigma: ArrayLike,
                    features: Optional[ArrayLike] = None, meta: Optional[dict] = None) -> None:
    """Writes mu [D], sigma [D, D] (float64), optional features [N, D] (float32) and `meta` (a
    JSON-serialisable dict) to an .npz at `path`, atomically: a temporary file in the same folder,
    fsync'd, then os.replace, so a crash never leaves a half-written cache under the final name."""
    fn = "save_statistics"
    mu, sigma = _mean_and_covariance(fn, mu, sigma, "")
    arrays = {"format": np.array(STATISTICS_FORMAT), "version": np.array(STATISTICS_VERSION),
              "mu": mu.numpy(), "sigma": sigma.numpy(), "meta": np.array(_meta_json(fn, meta))}
    if features is not None:
        features = _raw_features(fn, "features", features)
        if features.shape[1] != mu.shape[0]:
            raise ValueError(f"{fn}: features must have D = {mu.shape[0]} columns like mu, got shape "
                             f"{tuple(features.shape)}")
        arrays["features"] = features.to(torch.float32).numpy()
    _write_atomically(os.fspath(path), arrays)


def _meta_json(fn: str, meta: Optional[dict]) -> str:
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise TypeError(f"{fn}: meta must be a dict, got {type(meta).__name__}")
    try:
        return json.dumps(meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{fn}: meta must hold only JSON values (str, int, finite float, bool, None, "
                        f"lists, dicts): {error}") from error


def _write_atomically(path: str, arrays: dict) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            np.savez(stream, **arrays)     # a file object: numpy does not append ".npz" to the name


def load_statistics(path: Union[str, os.PathLike]) -> dict:
    """Reads a `save_statistics` file -> {"mu": [D] float64, "sigma": [D, D] float64,
    "features": [N, D] float32 tensor or None, "meta": dict, "version": int}.

    FileNotFoundError for a missing file; ValueError naming the file for anything else that is not
    one of our caches (not an .npz, a pickle, another program's .npz, a newer version, bad shapes).
    """
    fn = "load_statistics"
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{fn}: no statistics file at {path!r}")
    try:
        arrays = _read_npz(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as error:
        raise ValueError(f"{fn}: {path!r} is not a readable statistics cache (.npz written by "
                         f"save_statistics): {error}") from error
    return _validated_statistics(fn, path, arrays)


def _read_npz(path: str) -> dict:
    """Every array of an .npz -> dict; ValueError for a lone .npy array or pickled data."""
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError("it holds a single array (.npy), not an .npz archive")
    with archive:
        return {key: archive[key] for key in archive.files}


def _validated_statistics(fn: str, path: str, arrays: dict) -> dict:
    if arrays.get("format") is None or str(arrays["format"]) != STATISTICS_FORMAT:
        raise ValueError(f"{fn}: {path!r} is an .npz but not a stylesdf_fast statistics cache (format "
                         f"marker missing; keys: {sorted(arrays)})")
    version = int(arrays["version"]) if "version" in arrays else -1
    if version != STATISTICS_VERSION:
        raise ValueError(f"{fn}: {path!r} has cache version {version}; this code reads version "
                         f"{STATISTICS_VERSION}")
    missing = [key for key in ("mu", "sigma", "meta") if key not in arrays]
    if missing:
        raise ValueError(f"{fn}: {path!r} lacks {missing}; the file is damaged")
    try:
        mu, sigma = _mean_and_covariance(fn, arrays["mu"], arrays["sigma"], "")
        meta = json.loads(str(arrays["meta"]))
        features = arrays.get("features")
        if features is not None:
            features = _raw_features(fn, "features", features).to(torch.float32)
            if features.shape[1] != mu.shape[0]:
                raise ValueError(f"features have {features.shape[1]} columns but mu has {mu.shape[0]}")
    except (TypeError, ValueError) as error:
        raise ValueError(f"{fn}: {path!r} holds inconsistent statistics: {error}") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{fn}: {path!r} has a meta entry that is not a JSON object")
    return {"mu": mu, "sigma": sigma, "features": features, "meta": meta, "version": version}
