"""The DALI loader (CPU-only pipeline here) against the plain torch loader, and the backend choice."""
import numpy as np
import pytest
import torch

from hald_ext.data.loader import TorchLoader, dali_available, loader_backend, make_loader, resident_cache_from_loader
from hald_ext.data.sources import ImageSet, load_image_set, write_image_folder

requires_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not installed")


@pytest.fixture(scope="module")
def mixed_sizes():
    """23 RGB images of different sizes (so batches are padded), 3 classes."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (int(rng.integers(5, 40)), int(rng.integers(5, 40)), 3), dtype=np.uint8)
              for _ in range(23)]
    labels = np.arange(23) % 3
    return ImageSet(images, labels, ["a", "b", "c"], [f"array:{i}" for i in range(23)])


@pytest.fixture(scope="module")
def mixed_folder(mixed_sizes, tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(mixed_sizes, str(root))
    return str(root)


def collect(loader, epochs=1):
    out = []
    for _ in range(epochs):
        out.append([b for b in loader])
    return out


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.sample_ids, y.sample_ids)
        assert torch.equal(x.image_sizes, y.image_sizes)
        for r in range(len(x.image_sizes)):  # the pixels (a folder batch is packed: no padding)
            assert torch.equal(x.image(r), y.image(r))


def check_against_source(batches, image_set, folder_order, zero_padding=True):
    """Every sample's pixels equal the decoded source image (and the padding is zero for arrays; a
    streamed folder batch is packed, with no padding)."""
    for b in batches:
        for i, sid in enumerate(b.sample_ids.tolist()):
            im = image_set.images[folder_order[sid]]
            h, w = b.image_sizes[i].tolist()
            assert (h, w) == im.shape[:2]
            assert np.array_equal(b.image(i).numpy(), im)
            if zero_padding:
                assert int(b.images[i, h:].sum()) == 0 and int(b.images[i, :, w:].sum()) == 0


@requires_dali
@pytest.mark.parametrize("kind", ["folder", "arrays"])
def test_dali_cpu_matches_torch_loader(kind, mixed_sizes, mixed_folder):
    source = mixed_folder if kind == "folder" else mixed_sizes
    dali = make_loader(source, 6, backend="dali")
    torch_loader = make_loader(source, 6, backend="torch")
    assert dali.backend == "dali" and torch_loader.backend == "torch"
    d, t = collect(dali, epochs=2), collect(torch_loader, epochs=2)
    for de, te in zip(d, t):
        assert_same_batches(de, te)
    # The folder is read in load_image_set's order: sample ids are the ids a label store records.
    order = load_image_set(mixed_folder).names if kind == "folder" else None
    if kind == "folder":
        index = {f"{mixed_sizes.classes[mixed_sizes.labels[i]]}/{i:06d}.png": i for i in range(23)}
        check_against_source(d[0], mixed_sizes, [index[n] for n in order], zero_padding=False)
    else:
        check_against_source(d[0], mixed_sizes, list(range(23)))


@requires_dali
@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_sharding_by_rank_env(backend, mixed_folder, monkeypatch):
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        loader = make_loader(mixed_folder, 4, backend=backend, shuffle=True, seed=1)
        ids = torch.cat([b.sample_ids for b in loader]).tolist()
        assert len(ids) == len(set(ids)) and len(loader) == -(-len(ids) // 4)
        seen.append(set(ids))
    assert set().union(*seen) == set(range(23)) and sum(map(len, seen)) == 23  # disjoint, complete


def test_backend_choice(monkeypatch):
    assert loader_backend("torch") == "torch"
    assert loader_backend("auto") == ("dali" if dali_available() else "torch")
    import hald_ext.data.loader as LD
    import hald_ext.data.stream as L

    monkeypatch.setattr(L, "dali_available", lambda: False)
    assert L.loader_backend("auto") == "torch"
    assert isinstance(LD.make_loader(ImageSet([np.zeros((2, 2, 3), np.uint8)], np.zeros(1), ["a"], ["x"]), 1),
                      TorchLoader)
    with pytest.raises(ImportError, match="nvidia.dali"):
        L.loader_backend("dali")
    with pytest.raises(ValueError, match="backend"):
        L.loader_backend("opencv")


def test_resident_cache_from_loader(mixed_sizes, mixed_folder):
    cache = resident_cache_from_loader(make_loader(mixed_folder, 5, backend="torch", shuffle=True))
    mem = cache.memory()
    pixels = sum(im.size for im in mixed_sizes.images)
    assert mem["kind"] == "resident" and mem["images"] == 23 and mem["layout"] == "packed"
    assert mem["padding_fraction"] == 0 and cache.images.numel() == mem["pixel_bytes"] == pixels
    assert cache.max_image_size == tuple(max(im.shape[i] for im in mixed_sizes.images) for i in (0, 1))
    for sid, im in enumerate(load_image_set(mixed_folder).images):  # each sample's pixels at its (folder) id
        assert np.array_equal(cache.batch(torch.tensor([sid])).image(sid).numpy(), im)
    same = resident_cache_from_loader(make_loader(ImageSet([np.full((3, 4, 3), i, np.uint8) for i in range(5)],
                                                           np.zeros(5), ["a"], [str(i) for i in range(5)]), 2))
    assert same.images.shape == (5, 3, 4, 3) and same.image_offsets is None and int(same.images[4].min()) == 4
