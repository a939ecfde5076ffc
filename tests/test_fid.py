"""stylesdf_fast.evaluation.fid: statistics (one-shot and streaming), FID against closed forms and
scipy's sqrtm, KID against its exact value for identical sets and a direct double sum, the .npz cache
and bad input."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from stylesdf_fast.evaluation import fid

DOUBLE = dict(dtype=torch.float64)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def random_spd(dim, seed):
    """A well-conditioned random SPD matrix [dim, dim] (float64)."""
    a = torch.randn(dim, dim, generator=seeded(seed), **DOUBLE)
    return a @ a.T / dim + 0.1 * torch.eye(dim, **DOUBLE)


# --- statistics --------------------------------------------------------------------------------------

def test_feature_statistics_match_numpy():
    x = torch.randn(300, 12, generator=seeded(1), **DOUBLE) * 3 + 5
    mu, sigma = fid.feature_statistics(x)
    assert mu.dtype == sigma.dtype == torch.float64 and mu.shape == (12,) and sigma.shape == (12, 12)
    np.testing.assert_allclose(mu.numpy(), x.numpy().mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-12, atol=1e-12)


def test_feature_statistics_accept_float32_and_numpy():
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = fid.feature_statistics(x)
    assert mu.dtype == torch.float64
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-12)


def test_streaming_statistics_equal_one_shot():
    # A large common offset is where the naive sum(x x^T) - n mu mu^T loses digits; the pairwise
    # update must still agree with the one-shot centred computation.
    x = torch.randn(200, 9, generator=seeded(2), **DOUBLE) + 1e4
    stream = fid.FeatureStatistics()
    start = 0
    for size in (1, 7, 50, 142):                     # uneven batches, including a single row
        stream.add(x[start:start + size].to(torch.float32) if size == 7 else x[start:start + size])
        start += size
    x[1:8] = x[1:8].to(torch.float32).to(torch.float64)   # the float32 batch, as the stream saw it
    mu, sigma = fid.feature_statistics(x)
    assert stream.count == 200
    torch.testing.assert_close(stream.mean, mu, rtol=1e-13, atol=0)
    torch.testing.assert_close(stream.covariance, sigma, rtol=1e-9, atol=1e-9)


def test_streaming_statistics_errors():
    stream = fid.FeatureStatistics()
    with pytest.raises(ValueError, match="no features were added"):
        stream.mean
    stream.add(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        stream.covariance
    with pytest.raises(ValueError, match="D = 3 columns"):
        stream.add(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        stream.add(torch.zeros(3))


# --- FID ---------------------------------------------------------------------------------------------

def test_fid_of_identical_statistics_is_zero():
    # Full rank (N > D) and rank-deficient (N < D, as with few images and 2048-d features). The trace
    # term sum sqrt(eig(s^(1/2) s s^(1/2))) recovers Tr(s) up to rounding: eigenvalues near 0 carry
    # an absolute error ~ eps ||s||^2, i.e. ~ sqrt(eps) ||s|| = 1e-8 ||s|| after the square root,
    # so for D eigenvalues the result is below D * 1e-8 * Tr(s) -- we allow 1e-6 * Tr(s) (D <= 64).
    for rows, dim in ((500, 16), (20, 64)):
        x = torch.randn(rows, dim, generator=seeded(rows), **DOUBLE)
        mu, sigma = fid.feature_statistics(x)
        value = fid.frechet_distance(mu, sigma, mu, sigma)
        assert 0.0 <= value < 1e-6 * float(torch.trace(sigma))
        # the result is clamped at 0, so also check the unclamped trace term is that close
        trace_root = float(fid._trace_sqrt_product(sigma, sigma))
        assert trace_root == pytest.approx(float(torch.trace(sigma)), rel=1e-6)


def test_fid_closed_form_diagonal_gaussians():
    a = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.0], **DOUBLE)   # one zero variance: singular covariance
    b = torch.tensor([1.0, 1.0, 0.5, 9.0, 0.25], **DOUBLE)
    mu1 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], **DOUBLE)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 3.0, 4.5], **DOUBLE)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum() + ((mu1 - mu2) ** 2).sum())
    value = fid.frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_fid_matches_scipy_sqrtm_for_general_covariances():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    dim = 8
    s1, s2 = random_spd(dim, 3), random_spd(dim, 4)
    mu1 = torch.randn(dim, generator=seeded(5), **DOUBLE)
    mu2 = torch.randn(dim, generator=seeded(6), **DOUBLE)
    root = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy())
    expected = float(((mu1 - mu2) ** 2).sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * np.real(root)))
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    # symmetric in its two arguments, as the Frechet distance is
    assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-10)


def test_fid_bad_input():
    mu, sigma = torch.zeros(3, **DOUBLE), torch.eye(3, **DOUBLE)
    with pytest.raises(ValueError, match=r"mu1 must have shape \[D\]"):
        fid.frechet_distance(sigma, sigma, mu, sigma)
    with pytest.raises(ValueError, match=r"sigma2 must have shape \[D, D\] = \(3, 3\)"):
        fid.frechet_distance(mu, sigma, mu, torch.eye(4, **DOUBLE))
    with pytest.raises(ValueError, match="same feature dimension"):
        fid.frechet_distance(mu, sigma, torch.zeros(4), torch.eye(4))
    with pytest.raises(ValueError, match="symmetric"):
        fid.frechet_distance(mu, sigma, mu, torch.tensor([[1.0, 2.0, 0], [0, 1, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match="NaN/inf"):
        fid.frechet_distance(torch.tensor([0.0, float("nan"), 0.0]), sigma, mu, sigma)
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        fid.frechet_distance([0.0, 0.0, 0.0], sigma, mu, sigma)
    with pytest.raises(ValueError, match=r"shape \[N, D\]"):
        fid.feature_statistics(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 2 rows"):
        fid.feature_statistics(torch.zeros(1, 5))
    with pytest.raises(TypeError, match="real numbers"):
        fid.feature_statistics(torch.zeros(4, 2, dtype=torch.bool))


# --- KID ---------------------------------------------------------------------------------------------

def direct_unbiased_mmd2(x, y):
    """The unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3, as an explicit double loop in Python."""
    m, dim = len(x), len(x[0])

    def k(a, b):
        return (sum(p * q for p, q in zip(a, b)) / dim + 1.0) ** 3

    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2.0 * across / (m * m)


def test_kid_of_identical_sets_is_the_exact_small_negative_value():
    # For x = y (every subset a permutation of the whole set) the unbiased estimator is exactly
    # -(2/m) (mean k(x_i, x_i) - mean_{i != j} k(x_i, x_j)): not 0, but O(1/m), since the diagonal
    # terms are left out of the within-set sums only. So "KID ~ 0" means |KID| <= 2 max k(x, x) / m.
    x = torch.rand(400, 32, generator=seeded(7), **DOUBLE)
    m = len(x)
    kernel = (x @ x.T / 32 + 1) ** 3
    mean_diagonal = float(torch.diagonal(kernel).mean())
    mean_off = float((kernel.sum() - torch.diagonal(kernel).sum()) / (m * (m - 1)))
    mean, std = fid.kernel_inception_distance(x, x.clone(), num_subsets=3)
    assert mean == pytest.approx(-(2 / m) * (mean_diagonal - mean_off), rel=1e-9)
    assert abs(mean) <= 2 * float(torch.diagonal(kernel).max()) / m
    assert std < 1e-12                                 # every subset is the whole set


def test_kid_mean_matches_direct_double_sum_and_grows_with_shift():
    base = torch.rand(40, 6, generator=seeded(8), **DOUBLE)
    other = torch.rand(40, 6, generator=seeded(9), **DOUBLE)
    values = []
    for shift in (0.0, 0.25, 0.5, 1.0):
        shifted = other + shift
        mean, _ = fid.kernel_inception_distance(base, shifted, num_subsets=4, max_subset_size=1000)
        # m = 40 = N: every subset is the full set, so the mean is the one full-set estimate
        assert mean == pytest.approx(direct_unbiased_mmd2(base.tolist(), shifted.tolist()), rel=1e-9)
        values.append(mean)
    assert all(a < b for a, b in zip(values, values[1:])), values


def test_kid_subsets_deterministic_and_sized():
    a = torch.randn(120, 8, generator=seeded(10))
    b = torch.randn(90, 8, generator=seeded(11)) + 0.5
    first = fid.kernel_inception_distance(a, b, num_subsets=10, max_subset_size=50, seed=3)
    assert first == fid.kernel_inception_distance(a, b, num_subsets=10, max_subset_size=50, seed=3)
    assert first != fid.kernel_inception_distance(a, b, num_subsets=10, max_subset_size=50, seed=4)
    assert first[0] > 0 and first[1] > 0               # distinct distributions; subsets vary


def test_kid_bad_input():
    a = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="same dimension D"):
        fid.kernel_inception_distance(a, torch.zeros(10, 5))
    with pytest.raises(ValueError, match=r"features_b must have shape \[N, D\] with N >= 2"):
        fid.kernel_inception_distance(a, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="num_subsets must be >= 1"):
        fid.kernel_inception_distance(a, a, num_subsets=0)
    with pytest.raises(ValueError, match="max_subset_size must be >= 2"):
        fid.kernel_inception_distance(a, a, max_subset_size=1)
    with pytest.raises(TypeError, match="seed must be an int"):
        fid.kernel_inception_distance(a, a, seed=0.5)


# --- the cache ---------------------------------------------------------------------------------------

def test_cache_round_trip(tmp_path):
    x = torch.randn(30, 5, generator=seeded(12), **DOUBLE)
    mu, sigma = fid.feature_statistics(x)
    meta = {"extractor": "Inception-v3 pool3 (test)", "count": 30, "source": "/data/ffhq.lmdb"}
    path = tmp_path / "sub" / "stats.npz"
    fid.save_statistics(path, mu, sigma, features=x, meta=meta)
    loaded = fid.load_statistics(path)
    assert torch.equal(loaded["mu"], mu) and torch.equal(loaded["sigma"], sigma)
    assert loaded["features"].dtype == torch.float32
    assert torch.equal(loaded["features"], x.to(torch.float32))
    assert loaded["meta"] == meta and loaded["version"] == fid.STATISTICS_VERSION
    assert os.listdir(path.parent) == ["stats.npz"]    # no temporary file left behind
    fid.save_statistics(path, mu, sigma)               # overwrite in place, without features
    assert fid.load_statistics(path)["features"] is None
    assert fid.load_statistics(path)["meta"] == {}


def test_cache_rejects_foreign_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        fid.load_statistics(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(ValueError, match="not a readable statistics cache"):
        fid.load_statistics(garbage)
    pickled = tmp_path / "stats.pkl"
    pickled.write_bytes(pickle.dumps({"mu": np.zeros(3), "sigma": np.eye(3)}))
    with pytest.raises(ValueError, match="not a readable statistics cache"):
        fid.load_statistics(pickled)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        fid.load_statistics(single)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, mu=np.zeros(3), sigma=np.eye(3))   # pytorch-fid style: no format marker
    with pytest.raises(ValueError, match="not a stylesdf_fast statistics cache"):
        fid.load_statistics(foreign)
    newer = tmp_path / "newer.npz"
    np.savez(newer, format=np.array(fid.STATISTICS_FORMAT), version=np.array(99), mu=np.zeros(3),
             sigma=np.eye(3), meta=np.array(json.dumps({})))
    with pytest.raises(ValueError, match="cache version 99"):
        fid.load_statistics(newer)
    broken = tmp_path / "broken.npz"
    np.savez(broken, format=np.array(fid.STATISTICS_FORMAT), version=np.array(fid.STATISTICS_VERSION),
             mu=np.zeros(3), sigma=np.eye(4), meta=np.array("{}"))
    with pytest.raises(ValueError, match="inconsistent statistics"):
        fid.load_statistics(broken)


def test_cache_save_errors(tmp_path):
    mu, sigma = torch.zeros(3), torch.eye(3)
    with pytest.raises(TypeError, match="JSON values"):
        fid.save_statistics(tmp_path / "s.npz", mu, sigma, meta={"when": object()})
    with pytest.raises(TypeError, match="meta must be a dict"):
        fid.save_statistics(tmp_path / "s.npz", mu, sigma, meta=["a"])
    with pytest.raises(ValueError, match="D = 3 columns"):
        fid.save_statistics(tmp_path / "s.npz", mu, sigma, features=torch.zeros(4, 2))
    assert os.listdir(tmp_path) == []                   # failed saves leave nothing behind
