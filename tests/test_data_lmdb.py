"""MultiResolutionDataset against LMDB files written the official way (lmdb + PIL directly, not our
writer), its transforms, worker safety and its errors."""
from __future__ import annotations

import io
import pickle

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from stylesdf_fast.data import DatasetError, MultiResolutionDataset, image_to_tensor, stored_resolutions

SIZES = (16, 32)
COUNT = 6


def _pattern(index: int, size: int) -> np.ndarray:
    """A deterministic, asymmetric test image [size, size, 3] uint8 (a flip changes it)."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([(x * 7 + index * 31) % 256, (y * 5 + index * 11) % 256, (x * y + index) % 256],
                    axis=-1).astype(np.uint8)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="png")
    return buffer.getvalue()


def write_official_lmdb(path, sizes=SIZES, count=COUNT, *, length=True, extra=None):
    """What the official prepare_data.py leaves: keys "{size}-{index:05d}" -> PNG, "length" -> count."""
    env = lmdb.open(str(path), map_size=1 << 26, readahead=False)
    with env.begin(write=True) as txn:
        for index in range(count):
            for size in sizes:
                txn.put(f"{size}-{str(index).zfill(5)}".encode("utf-8"), _png(_pattern(index, size)))
        if length:
            txn.put("length".encode("utf-8"), str(count).encode("utf-8"))
        for key, value in (extra or {}).items():
            txn.put(key, value)
    env.close()
    return path


@pytest.fixture
def official(tmp_path):
    return write_official_lmdb(tmp_path / "official")


def _expected(array: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor + Normalize(0.5, 0.5) written out: [3, H, W] in [-1, 1]."""
    return (torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5


def test_reads_official_records_without_flip(official):
    dataset = MultiResolutionDataset(official, resolution=32, nerf_resolution=16, hflip=False)
    assert len(dataset) == COUNT
    for index in range(COUNT):
        image, thumb = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        torch.testing.assert_close(image, _expected(_pattern(index, 32)), rtol=0, atol=0)
        hamming = Image.fromarray(_pattern(index, 32)).resize((16, 16), Image.HAMMING)
        torch.testing.assert_close(thumb, _expected(np.array(hamming)), rtol=0, atol=0)
        assert image.min() >= -1 and image.max() <= 1


def test_flip_happens_before_the_thumbnail(official):
    dataset = MultiResolutionDataset(official, resolution=32, nerf_resolution=16, hflip=True)
    flipped_seen = unflipped_seen = False
    torch.manual_seed(0)
    for _ in range(40):
        image, thumb = dataset[2]
        plain = _expected(_pattern(2, 32))
        if torch.equal(image, plain):
            unflipped_seen = True
            source = _pattern(2, 32)
        else:
            torch.testing.assert_close(image, plain.flip(-1), rtol=0, atol=0)
            flipped_seen = True
            source = _pattern(2, 32)[:, ::-1]
        hamming = Image.fromarray(np.ascontiguousarray(source)).resize((16, 16), Image.HAMMING)
        torch.testing.assert_close(thumb, _expected(np.array(hamming)), rtol=0, atol=0)
    assert flipped_seen and unflipped_seen


def test_flips_follow_the_torch_seed(official):
    dataset = MultiResolutionDataset(official, resolution=16, nerf_resolution=16)
    torch.manual_seed(3)
    first = [dataset[0][0] for _ in range(8)]
    torch.manual_seed(3)
    second = [dataset[0][0] for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_image_to_tensor_matches_totensor_normalize():
    array = _pattern(5, 9)
    torch.testing.assert_close(image_to_tensor(Image.fromarray(array)), _expected(array), rtol=0, atol=0)


def test_same_resolution_thumbnail_is_the_image(official):
    image, thumb = MultiResolutionDataset(official, resolution=16, nerf_resolution=16, hflip=False)[1]
    assert torch.equal(image, thumb)


def test_dataloader_with_two_workers(official):
    dataset = MultiResolutionDataset(official, resolution=32, nerf_resolution=16, hflip=False)
    dataset[0]   # the parent holds the environment open: forked workers must open their own
    loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=False)
    images = torch.cat([batch[0] for batch in loader])
    expected = torch.stack([_expected(_pattern(i, 32)) for i in range(COUNT)])
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_pickles_without_an_open_environment_and_shards_with_distributed_sampler(official):
    dataset = MultiResolutionDataset(official, resolution=16, hflip=False, nerf_resolution=16)
    dataset[0]                                   # opens the environment in this process
    clone = pickle.loads(pickle.dumps(dataset))  # what spawn workers and DDP launchers do
    assert torch.equal(clone[3][0], dataset[3][0])
    shards = [list(DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(COUNT))


def test_two_datasets_on_one_file(official):
    small = MultiResolutionDataset(official, resolution=16, hflip=False)
    large = MultiResolutionDataset(official, resolution=32, hflip=False)
    assert small[1][0].shape[-1] == 16 and large[1][0].shape[-1] == 32


def test_stored_resolutions(official):
    assert stored_resolutions(official) == list(SIZES)


def test_missing_resolution_lists_what_is_held(official):
    with pytest.raises(DatasetError, match=r"holds no 256x256 images.*resolutions: 16, 32"):
        MultiResolutionDataset(official, resolution=256)


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        MultiResolutionDataset(tmp_path / "nope")


def test_folder_that_is_not_an_lmdb(tmp_path):
    with pytest.raises(DatasetError, match="not an LMDB dataset"):
        MultiResolutionDataset(tmp_path)


def test_corrupt_file_names_the_path(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "data.mdb").write_bytes(b"this is not an lmdb file" * 100)
    with pytest.raises(DatasetError, match=str(broken)):
        MultiResolutionDataset(broken)


def test_missing_length_key(tmp_path):
    path = write_official_lmdb(tmp_path / "nolength", length=False)
    with pytest.raises(DatasetError, match="no 'length' key"):
        MultiResolutionDataset(path, resolution=16)


def test_bad_length_value(tmp_path):
    path = write_official_lmdb(tmp_path / "badlength", length=False, extra={b"length": b"many"})
    with pytest.raises(DatasetError, match="'length' holds"):
        MultiResolutionDataset(path, resolution=16)


def test_undecodable_record_names_path_and_key(tmp_path):
    path = write_official_lmdb(tmp_path / "garbled", extra={b"16-00003": b"\x89PNG garbage"})
    dataset = MultiResolutionDataset(path, resolution=16)
    dataset[2]
    with pytest.raises(DatasetError, match=r"garbled: record 16-00003 is not a decodable image"):
        dataset[3]


def test_index_out_of_range(official):
    dataset = MultiResolutionDataset(official, resolution=16)
    with pytest.raises(IndexError):
        dataset[COUNT]


@pytest.mark.parametrize("bad", [0, -64, 1.5, True])
def test_bad_resolution_argument(official, bad):
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        MultiResolutionDataset(official, resolution=bad)
