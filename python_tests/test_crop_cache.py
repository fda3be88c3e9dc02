"""Resident image cache vs the streaming fallback, and crop_and_lookup under torch.compile."""
import numpy as np
import torch

from hald_ext.data import image_source
from hald_ext.data.cache import ResidentImageCache, StreamingImages, pad_images
from hald_ext.data.sources import ImageSet
from hald_ext.ops import crop_and_lookup


def image_set(sizes, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    return ImageSet(images, np.arange(len(images)) % 2, ["a", "b"], [f"array:{i}" for i in range(len(images))])


def test_pad_images_keeps_pixels_and_sizes():
    s = image_set([(5, 7), (9, 3), (2, 2)])
    padded, sizes = pad_images(s.images)
    assert padded.shape == (3, 9, 7, 3) and sizes.tolist() == [[5, 7], [9, 3], [2, 2]]
    assert np.array_equal(padded[1, :9, :3], s.images[1]) and padded[1, :, 3:].sum() == 0
    same, none = pad_images(image_set([(4, 4), (4, 4)]).images)
    assert none is None and same.shape == (2, 4, 4, 3)


def test_image_source_picks_resident_or_streaming_by_budget():
    s = image_set([(30, 40), (20, 10), (40, 40), (8, 9)])
    resident = image_source(s, "cpu")
    assert isinstance(resident, ResidentImageCache)
    mem = resident.memory()
    pixels = (30 * 40 + 20 * 10 + 40 * 40 + 8 * 9) * 3
    assert mem["layout"] == "packed" and mem["pixel_bytes"] == pixels and mem["padding_fraction"] == 0
    assert isinstance(image_source(s, "cpu", max_bytes=pixels), ResidentImageCache)  # pixels, not 4 x 40 x 40
    streaming = image_source(s, "cpu", max_bytes=pixels - 1)
    assert isinstance(streaming, StreamingImages) and streaming.memory()["kind"] == "streaming"


def test_streaming_batches_crop_like_the_resident_cache():
    s = image_set([(30, 40), (20, 10), (40, 40), (8, 9), (33, 17)], seed=1)
    resident, streaming = ResidentImageCache.from_image_set(s), StreamingImages(s)
    ids = torch.tensor([4, 1, 1, 3, 0, 4])
    a, b = resident.batch(ids), streaming.batch(ids)
    assert a.image_offsets is not None and a.images.numel() == sum(im.size for im in s.images)  # packed
    assert a.max_image_size == (40, 40) == resident.max_image_size  # the bound, known on the host
    unbounded = ResidentImageCache(resident.images, resident.image_sizes, resident.labels, resident.image_offsets)
    assert unbounded.max_image_size == (40, 40)  # read once when not given
    assert b.images.shape[0] == 4  # only the images the batch uses
    out_a = crop_and_lookup(a.images, a.image_ids, 16, **a.crop_kwargs(), seed=3)
    out_b = crop_and_lookup(b.images, b.image_ids, 16, **b.crop_kwargs(), seed=3)
    assert torch.equal(out_a.crops, out_b.crops) and torch.equal(out_a.boxes, out_b.boxes)
    padded, sizes = pad_images(s.images)  # and the crops of the whole set padded
    out_p = crop_and_lookup(torch.from_numpy(padded), ids, 16, image_sizes=torch.from_numpy(sizes), seed=3)
    assert torch.equal(out_a.crops, out_p.crops)


def test_resident_cache_of_one_size_is_one_tensor():
    cache = ResidentImageCache.from_image_set(image_set([(6, 5)] * 3))
    assert cache.images.shape == (3, 6, 5, 3) and cache.image_sizes is None and cache.image_offsets is None
    assert cache.memory()["layout"] == "padded" and len(cache) == 3
    assert cache.max_image_size is None and "max_image_size" not in cache.batch(torch.tensor([0])).crop_kwargs()


def test_streaming_keeps_no_padded_copy_of_the_set():
    """One large image must not make every image of the set take its size on the host: a batch of
    small images is padded to its own largest image only."""
    s = image_set([(400, 600), (10, 12), (8, 9), (12, 7)], seed=2)
    streaming = StreamingImages(s)
    assert streaming.memory()["host_bytes"] == (400 * 600 + 10 * 12 + 8 * 9 + 12 * 7) * 3  # the set itself
    assert not any(isinstance(v, torch.Tensor) and v.numel() >= 4 * 400 * 600 for v in vars(streaming).values())
    b = streaming.batch(torch.tensor([3, 1, 2, 1]))
    assert b.images.shape == (3, 12, 12, 3) and b.image_sizes.tolist() == [[10, 12], [8, 9], [12, 7]]
    assert torch.equal(b.images[2, :12, :7], torch.from_numpy(s.images[3])) and b.images[2, :, 7:].sum() == 0
    assert b.image_ids.tolist() == [2, 0, 1, 0] and b.sample_ids.tolist() == [3, 1, 2, 1]


def test_compiles_fullgraph():
    images = torch.randint(0, 256, (3, 20, 24, 3), dtype=torch.uint8)
    ids = torch.tensor([0, 2, 1, 1])
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.5]] * 4)
    flips = torch.tensor([True, False, True, False])

    def step(images, ids, boxes, flips):
        return crop_and_lookup(images, ids, 12, boxes=boxes, flips=flips, check=False).crops

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(images, ids, boxes, flips), step(images, ids, boxes, flips))
