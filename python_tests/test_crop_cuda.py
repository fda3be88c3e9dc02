"""crop_and_lookup on CUDA: every option of the CPU grid (test_crop.py), each CUDA result compared with
the CPU kernel and with the torchvision reference; and no host synchronisation with check=False.
Skipped without a CUDA device and a CUDA build."""
import pytest
import torch

from hald_ext.core.boxes import dequantize_boxes, quantize_boxes
from hald_ext.ops import CutMix, crop_and_lookup
from hald_ext.ops.crop import sample_cutmix
from hald_ext.reference import crop_reference, cutmix_lambda_reference, gather_labels_reference
from conftest import requires_cuda
from test_crop import (ATOL, BAND_CASES, STD, band_case, band_crop, packed_batch, padded_batch, pixel_boxes,
                       random_boxes)

pytestmark = requires_cuda

# CUDA vs CPU kernel, float32 output (normalised units; 1e-4 is 0.006 grey levels): the two differ
# only by float summation order and per-tap weight rounding.
CUDA_ATOL = 1e-4


def on_cuda(**kw):
    return {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def both(images, ids, size, **kw):
    """(CPU result, CUDA result) of the same call."""
    cpu = crop_and_lookup(images, ids, size, **kw)
    dev = crop_and_lookup(images.cuda(), ids.cuda(), size, **on_cuda(**kw))
    torch.cuda.synchronize()
    return cpu, dev


def assert_same_geometry(cpu, dev):
    assert torch.equal(dev.boxes.cpu(), cpu.boxes) and torch.equal(dev.flips.cpu(), cpu.flips)


def assert_crops_close(dev, want, dtype=torch.float32, extra=CUDA_ATOL):
    torch.testing.assert_close(dev.cpu().float(), want.float(), atol=ATOL[dtype] + extra, rtol=ATOL[dtype])


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("size", [7, 32, 64])
@pytest.mark.parametrize("equal", [True, False])
@pytest.mark.parametrize("check", [True, False])
def test_replay_matches_cpu_and_reference(antialias, size, equal, check):
    images, sizes = padded_batch(5, 90, 70, seed=size, equal=equal)
    B = 24
    ids = torch.arange(B) % 5
    boxes = random_boxes(B, seed=size)
    flips = torch.arange(B) % 3 == 0
    kw = dict(image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias, check=check)
    cpu, dev = both(images, ids, size, **kw)
    assert_same_geometry(cpu, dev)
    assert_crops_close(dev.crops, cpu.crops)
    ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias)
    assert_crops_close(dev.crops, ref)


@pytest.mark.parametrize("antialias", [True, False])
def test_large_sources_at_224(antialias):
    """S = 224 from 2000-4000 px sources: the resampling span in float was 0.1-0.2 grey levels off."""
    g = torch.Generator().manual_seed(21)
    images = torch.randint(0, 256, (3, 4000, 3600, 3), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[4000, 3600], [2000, 3100], [3333, 2001]])
    ids = torch.tensor([0, 1, 2, 0, 1, 2])
    boxes = random_boxes(6, seed=22)
    boxes[2] = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)
    flips = torch.tensor([False, True, False, True, True, False])
    cpu, dev = both(images, ids, 224, image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias)
    levels = ((dev.crops.cpu() - cpu.crops) * STD * 255).abs()
    assert float(levels.max()) <= 0.01, float(levels.max())
    # torch's float bilinear is itself ~0.07 grey levels off here (float source coordinates): the
    # ground truth resizes in double.
    ref = crop_reference(images, ids, 224, boxes, flips, image_sizes=sizes, antialias=antialias,
                         compute_dtype=torch.float64)
    assert_crops_close(dev.crops, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fresh_crops_dtypes_and_layouts(dtype, channels_last):
    images, sizes = padded_batch(3, 64, 80, seed=1)
    ids = torch.tensor([0, 1, 2, 2, 1])
    cpu, dev = both(images, ids, 40, image_sizes=sizes, seed=3, offset=9, out_dtype=dtype,
                    channels_last=channels_last)
    assert_same_geometry(cpu, dev)  # the same Philox stream on both backends
    assert dev.crops.dtype == dtype and dev.crops.shape == (5, 3, 40, 40)
    assert dev.crops.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_crops_close(dev.crops, cpu.crops, dtype)
    ref = crop_reference(images, ids, 40, cpu.boxes, cpu.flips, image_sizes=sizes)
    assert_crops_close(dev.crops, ref, dtype)


def test_fresh_crops_every_option_of_the_rule():
    images, sizes = padded_batch(4, 120, 300, seed=2)
    ids = torch.arange(200) % 4
    for kw in (dict(scale=(0.25, 0.9), ratio=(0.5, 2.0), flip_prob=0.3), dict(scale=(0.9, 1.0), flip_prob=1.0),
               dict(flip_prob=0.0)):
        cpu, dev = both(images, ids, 16, image_sizes=sizes, seed=7, offset=1, **kw)
        assert_same_geometry(cpu, dev)
        assert_crops_close(dev.crops, cpu.crops)


def test_uint16_codes_replay_like_fractions():
    images, _ = padded_batch(4, 50, 60, seed=3, equal=True)
    ids = torch.tensor([3, 2, 1, 0, 0])
    codes = quantize_boxes(random_boxes(5, seed=4))
    flips = torch.tensor([True, False, True, False, True])
    cpu, dev = both(images, ids, 24, boxes=codes, flips=flips, check=False)
    frac = crop_and_lookup(images.cuda(), ids.cuda(), 24, boxes=dequantize_boxes(codes).double().cuda(),
                           flips=flips.cuda())
    assert torch.equal(dev.crops, frac.crops)
    assert_same_geometry(cpu, dev)
    assert_crops_close(dev.crops, cpu.crops)


@pytest.mark.parametrize("id_dtype,value_dtype", [(torch.int16, torch.float16), (torch.int64, torch.uint8),
                                                  (torch.int32, torch.float32), (torch.uint16, torch.bfloat16)])
def test_label_rows_gathered(id_dtype, value_dtype):
    images, _ = padded_batch(6, 20, 20, seed=5, equal=True)
    g = torch.Generator().manual_seed(5)
    lid = torch.randint(0, 1000, (6, 4, 5), generator=g).to(torch.int32).to(id_dtype)
    val = (torch.rand(6, 4, 5, generator=g) * 255).to(value_dtype)
    ids = torch.tensor([5, 0, 0, 3, 2, 5, 1])
    slots = torch.tensor([3, 0, 1, 2, 3, 0, 1])
    cpu, dev = both(images, ids, 8, label_ids=lid, label_values=val, slots=slots, seed=0, check=False)
    ref_ids, ref_vals = gather_labels_reference(lid, val, ids, slots)
    assert dev.label_ids.dtype == id_dtype and dev.label_values.dtype == value_dtype
    assert torch.equal(dev.label_ids.cpu(), ref_ids) and torch.equal(dev.label_values.cpu(), ref_vals)
    assert torch.equal(dev.label_ids.cpu(), cpu.label_ids) and torch.equal(dev.label_values.cpu(), cpu.label_values)


@pytest.mark.parametrize("check", [True, False])
def test_cutmix_replay_matches_cpu_and_reference(check):
    images, sizes = padded_batch(4, 48, 48, seed=6)
    ids = torch.tensor([0, 1, 2, 3, 1, 0])
    partner = torch.tensor([5, 2, 1, 0, 4, 3])
    mix = torch.tensor([[4, 8, 20, 30], [0, 0, 32, 32], [10, 10, 10, 20], [5, 0, 6, 32], [1, 1, 9, 9],
                        [0, 0, 0, 0]], dtype=torch.int32)
    boxes, flips = random_boxes(6, seed=7), torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    cpu = crop_and_lookup(images, ids, 32, image_sizes=sizes, boxes=boxes, flips=flips, cutmix=CutMix(partner, mix))
    dev = crop_and_lookup(images.cuda(), ids.cuda(), 32, image_sizes=sizes.cuda(), boxes=boxes.cuda(),
                          flips=flips.cuda(), cutmix=CutMix(partner.cuda(), mix.cuda()), check=check)
    assert_crops_close(dev.crops, cpu.crops)
    ref = crop_reference(images, ids, 32, boxes, flips, image_sizes=sizes, mix_partner=partner, mix_boxes=mix)
    assert_crops_close(dev.crops, ref)
    torch.testing.assert_close(dev.mix_lambda.cpu(), cutmix_lambda_reference(mix, 32))
    assert torch.equal(dev.mix_partner.cpu(), partner)


def test_cutmix_draw_matches_cpu():
    images, _ = padded_batch(4, 40, 40, seed=8, equal=True)
    ids = torch.arange(16) % 4
    cpu, dev = both(images, ids, 32, seed=11, offset=2, cutmix_alpha=1.0, check=False)
    assert torch.equal(dev.mix_partner.cpu(), cpu.mix_partner)
    assert torch.equal(dev.mix_lambda.cpu(), cpu.mix_lambda)
    assert_same_geometry(cpu, dev)
    assert_crops_close(dev.crops, cpu.crops)


def test_bad_values_with_check_false_stay_in_bounds():
    """check=False: out-of-range ids, slots, partners and sizes are clamped by the kernels (garbage
    values, never a read out of bounds; compute-sanitizer memcheck runs this test)."""
    images, _ = padded_batch(3, 16, 16, seed=12, equal=True)
    B = 4
    c = torch.device("cuda")
    out = crop_and_lookup(images.to(c), torch.tensor([7, -1, 2, 0], device=c), 8, check=False,
                          image_sizes=torch.tensor([[99, 16], [0, 4], [16, -3]], device=c),
                          boxes=torch.tensor([[0.5, 0.2, 0.9, 2.0]] * B, device=c),
                          label_ids=torch.zeros(3, 2, 4, dtype=torch.long, device=c),
                          label_values=torch.zeros(3, 2, 4, device=c), slots=torch.tensor([0, 5, -1, 1], device=c),
                          cutmix=CutMix(torch.tensor([9, -2, 0, 1], device=c),
                                        torch.tensor([[-5, 0, 99, 8]] * B, dtype=torch.int32, device=c)))
    torch.cuda.synchronize()
    assert out.crops.shape == (B, 3, 8, 8) and torch.isfinite(out.crops).all()


def test_no_host_synchronisation_with_check_false():
    """The trainer's hard batch (fresh crops + a drawn CutMix) and soft batch (uint16 boxes, flips,
    label rows, a replayed CutMix) on CUDA with check=False: any host sync raises."""
    images, sizes = padded_batch(4, 64, 64, seed=14)
    images, sizes = images.cuda(), sizes.cuda()
    ids = (torch.arange(8) % 4).cuda()
    codes = quantize_boxes(random_boxes(8, seed=15)).cuda()
    flips = (torch.arange(8) % 2 == 0).cuda()
    lid = torch.randint(0, 100, (4, 3, 5)).cuda()
    lval = torch.randint(0, 255, (4, 3, 5), dtype=torch.uint8).cuda()
    slots = (torch.arange(8) % 3).cuda()
    mix = CutMix(torch.randperm(8).cuda(), torch.tensor([[2, 2, 10, 12]] * 8, dtype=torch.int32).cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for image_sizes in (sizes, None):
            hard = crop_and_lookup(images, ids, 16, image_sizes=image_sizes, seed=1, offset=3, cutmix_alpha=1.0,
                                   check=False)
            soft = crop_and_lookup(images, ids, 16, image_sizes=image_sizes, boxes=codes, flips=flips,
                                   label_ids=lid, label_values=lval, slots=slots, cutmix=mix, check=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert hard.mix_lambda is not None and soft.label_ids.shape == (8, 5)
    # The sync detector is live: check=True reads values on the host and must trip it.
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            crop_and_lookup(images, ids, 16, image_sizes=sizes, seed=1, check=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("dtype,channels_last", [(torch.float32, False), (torch.bfloat16, True),
                                                 (torch.float16, False)])
def test_fused_batch_matches_cpu(antialias, dtype, channels_last):
    images, sizes = padded_batch(6, 200, 150, seed=13)
    ids = torch.arange(64) % 6
    lid = torch.randint(0, 100, (6, 3, 4))
    lval = torch.rand(6, 3, 4).half()
    slots = torch.arange(64) % 3
    """Fresh crops, label rows and a drawn CutMix in one call, every output dtype; then the replay
    of the boxes used against the reference."""
    kw = dict(seed=99, offset=5, antialias=antialias, out_dtype=dtype, channels_last=channels_last, cutmix_alpha=1.0)
    cpu = crop_and_lookup(images, ids, 56, image_sizes=sizes, label_ids=lid, label_values=lval, slots=slots, **kw)
    dev = crop_and_lookup(images.cuda(), ids.cuda(), 56, image_sizes=sizes.cuda(), label_ids=lid.cuda(),
                          label_values=lval.cuda(), slots=slots.cuda(), **kw)
    assert torch.equal(dev.boxes.cpu(), cpu.boxes) and torch.equal(dev.flips.cpu(), cpu.flips)
    assert torch.equal(dev.label_ids.cpu(), cpu.label_ids) and torch.equal(dev.label_values.cpu(), cpu.label_values)
    assert torch.equal(dev.mix_partner.cpu(), cpu.mix_partner)
    assert dev.crops.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(dev.crops.cpu().float(), cpu.crops.float(), atol=ATOL[dtype] + 1e-4, rtol=ATOL[dtype])
    replay = crop_and_lookup(images.cuda(), ids.cuda(), 56, image_sizes=sizes.cuda(), boxes=cpu.boxes.cuda(),
                             flips=cpu.flips.cuda(), antialias=antialias)
    ref = crop_reference(images, ids, 56, cpu.boxes, cpu.flips, image_sizes=sizes, antialias=antialias)
    torch.testing.assert_close(replay.crops.cpu(), ref, atol=1e-4, rtol=0)


def test_mixed_devices_error():
    images, _ = padded_batch(3, 16, 16, seed=12, equal=True)
    with pytest.raises((RuntimeError, ValueError), match="on one device"):
        crop_and_lookup(images.cuda(), torch.tensor([0, 1, 2]), 8)


# ------------------------------------------------ the band kernel: every window, tiling, awkward sizes
# The CUDA kernel's per-thread code is hald/resample.h's render_band_column; `_crop_and_lookup_band`
# runs the same code on the CPU, so the two differ only by the device's float contraction (FMA).
BAND_ATOL = 1e-5


@pytest.mark.parametrize("name,shape,size,antialias", BAND_CASES, ids=[c[0] for c in BAND_CASES])
@pytest.mark.parametrize("channels_last", [False, True])
def test_band_kernel_matches_its_cpu_run_and_reference(name, shape, size, antialias, channels_last):
    images, sizes, ids, boxes, flips, partner, mix = band_case(shape, size)
    kw = dict(image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias, channels_last=channels_last)
    band = band_crop(images, ids, size, **kw, mix_partner=partner, mix_boxes=mix)
    dev = crop_and_lookup(images.cuda(), ids.cuda(), size, **on_cuda(**kw), cutmix=CutMix(partner.cuda(), mix.cuda()))
    torch.testing.assert_close(dev.crops.cpu(), band, atol=BAND_ATOL, rtol=0)
    ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias,
                         mix_partner=partner, mix_boxes=mix)
    assert_crops_close(dev.crops, ref)


@pytest.mark.parametrize("size", [255, 300, 520])
def test_band_kernel_several_column_chunks(size):
    """S > 256: more than one block of columns per band (and a last band shorter than 16 rows)."""
    images, sizes = padded_batch(3, 180, 200, seed=size)
    ids = torch.tensor([0, 1, 2, 1])
    boxes, flips = random_boxes(4, seed=size), torch.tensor([True, False, False, True])
    kw = dict(image_sizes=sizes, boxes=boxes, flips=flips)
    dev = crop_and_lookup(images.cuda(), ids.cuda(), size, **on_cuda(**kw), out_dtype=torch.bfloat16)
    band = band_crop(images, ids, size, **kw, out_dtype=torch.bfloat16)
    torch.testing.assert_close(dev.crops.cpu().float(), band.float(), atol=ATOL[torch.bfloat16], rtol=0)
    assert (dev.crops.cpu() != band).float().mean() < 0.01  # bf16 roundings differ only at ties


def test_band_kernel_awkward_crops():
    """1-pixel crops, 1 x n strips, 100x upscaling, a 1-pixel output, in a padded batch of mixed sizes."""
    g = torch.Generator().manual_seed(31)
    images = torch.randint(0, 256, (4, 120, 200, 3), dtype=torch.uint8, generator=g)
    sizes = torch.tensor([[120, 200], [3, 200], [120, 2], [17, 9]])
    ids = torch.tensor([0, 0, 1, 2, 3, 0, 1, 2, 3, 0])
    pix = [[5, 7, 1, 1], [0, 0, 120, 1], [1, 0, 1, 200], [0, 1, 120, 1], [0, 0, 17, 9], [60, 100, 2, 3],
           [0, 150, 3, 50], [100, 0, 20, 2], [16, 8, 1, 1], [0, 0, 1, 200]]
    boxes = pixel_boxes(pix, sizes[ids].tolist())
    flips = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    for size in (1, 7, 96):
        for antialias in (True, False):
            kw = dict(image_sizes=sizes, boxes=boxes, flips=flips, antialias=antialias)
            dev = crop_and_lookup(images.cuda(), ids.cuda(), size, **on_cuda(**kw))
            torch.testing.assert_close(dev.crops.cpu(), band_crop(images, ids, size, **kw), atol=BAND_ATOL, rtol=0)
            ref = crop_reference(images, ids, size, boxes, flips, image_sizes=sizes, antialias=antialias,
                                 compute_dtype=torch.float64)
            assert_crops_close(dev.crops, ref)


def test_band_kernel_large_batch_at_224():
    """The benchmark's shape (256 px sources, S = 224, bf16) at a batch of thousands of blocks, fresh
    crops and a CutMix record, against the CPU run of the same code and the CPU kernel."""
    images, _ = padded_batch(16, 256, 256, seed=50, equal=True)
    ids = torch.arange(512) % 16
    cm = sample_cutmix(512, 224, 1.0, seed=5, offset=2)
    kw = dict(seed=5, offset=2, out_dtype=torch.bfloat16, check=False)
    dev = crop_and_lookup(images.cuda(), ids.cuda(), 224, cutmix=CutMix(cm.partner.cuda(), cm.boxes.cuda()), **kw)
    cpu = crop_and_lookup(images, ids, 224, cutmix=cm, **kw)
    band = band_crop(images, ids, 224, mix_partner=cm.partner, mix_boxes=cm.boxes, **kw)
    assert torch.equal(dev.boxes.cpu(), cpu.boxes)
    torch.testing.assert_close(dev.crops.cpu().float(), band.float(), atol=ATOL[torch.bfloat16], rtol=0)
    torch.testing.assert_close(dev.crops.cpu().float(), cpu.crops.float(), atol=ATOL[torch.bfloat16], rtol=0)


@pytest.mark.parametrize("check", [True, False])
def test_packed_images_match_the_padded_batch_on_cuda(check):
    """Packed images (image_offsets) on CUDA: the CUDA crops of the padded batch they came from,
    and the CPU kernel's boxes and flips."""
    images, sizes = padded_batch(6, 70, 90, seed=31)
    flat, offsets, true = packed_batch(images, sizes, seed=32)
    ids = torch.tensor([5, 0, 3, 3, 1, 2, 4, 0, 5])
    c = torch.device("cuda")
    padded = crop_and_lookup(images.to(c), ids.to(c), 24, image_sizes=sizes.to(c), seed=7, offset=3, check=check)
    packed = crop_and_lookup(flat.to(c), ids.to(c), 24, image_sizes=true.to(c), image_offsets=offsets.to(c),
                             seed=7, offset=3, check=check)
    cpu = crop_and_lookup(flat, ids, 24, image_sizes=true, image_offsets=offsets, seed=7, offset=3)
    torch.cuda.synchronize()
    assert torch.equal(packed.crops, padded.crops)
    assert_same_geometry(cpu, packed)
    assert_crops_close(packed.crops, cpu.crops)


def test_packed_images_out_of_the_buffer_stay_in_bounds_on_cuda():
    """check=False with a packed image said to lie past the buffer: clamped, never read outside
    (compute-sanitizer memcheck runs this test)."""
    images, sizes = padded_batch(3, 12, 10, seed=33)
    flat, offsets, true = packed_batch(images, sizes, seed=34)
    offsets[1] = flat.numel() + 10_000_000
    offsets[2] = -7
    c = torch.device("cuda")
    out = crop_and_lookup(flat.to(c), torch.tensor([0, 1, 2], device=c), 8, image_sizes=true.to(c),
                          image_offsets=offsets.to(c), check=False)
    torch.cuda.synchronize()
    assert torch.isfinite(out.crops).all()


def test_packed_images_with_max_image_size_never_wait_for_the_device():
    """A packed resident cache hands crop_and_lookup its bound (max_image_size): with check=False the
    call then never synchronises (without the bound the op reads it from image_sizes on the device,
    which the sync detector must catch), and gives the crops of the call that read it."""
    images, sizes = padded_batch(6, 70, 90, seed=35)
    flat, offsets, true = packed_batch(images, sizes, seed=36)
    c = torch.device("cuda")
    flat, offsets, true = flat.to(c), offsets.to(c), true.to(c)
    ids = torch.tensor([5, 0, 3, 3, 1, 2, 4, 0, 5], device=c)
    bound = tuple(int(v) for v in sizes.max(0).values)
    ref = crop_and_lookup(flat, ids, 24, image_sizes=true, image_offsets=offsets, seed=7, offset=3, check=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = crop_and_lookup(flat, ids, 24, image_sizes=true, image_offsets=offsets, seed=7, offset=3,
                              check=False, max_image_size=bound)
        with pytest.raises(RuntimeError):
            crop_and_lookup(flat, ids, 24, image_sizes=true, image_offsets=offsets, seed=7, check=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert torch.equal(got.crops, ref.crops) and torch.equal(got.boxes, ref.boxes)


def test_out_rows_on_cuda_renders_the_first_samples_like_the_full_launch():
    images, sizes = padded_batch(5, 60, 50, seed=43)
    B = 6
    ids = torch.tensor([0, 1, 2, 3, 4, 0, 2, 2, 4, 1, 3, 0])
    cut = CutMix(torch.cat([torch.arange(B, 2 * B), torch.arange(B, 2 * B)]),
                 torch.cat([torch.tensor([[2, 3, 15, 20]] * B), torch.zeros(B, 4, dtype=torch.int64)]).to(torch.int32))
    c = torch.device("cuda")
    args = dict(image_sizes=sizes.to(c), boxes=random_boxes(2 * B, seed=6).to(c), cutmix=CutMix(*(t.to(c) for t in cut)))
    full = crop_and_lookup(images.to(c), ids.to(c), 24, **args)
    part = crop_and_lookup(images.to(c), ids.to(c), 24, **args, out_rows=B)
    torch.cuda.synchronize()
    assert part.crops.shape == (B, 3, 24, 24) and torch.equal(part.crops, full.crops[:B])
    assert torch.equal(part.boxes, full.boxes) and torch.equal(part.flips, full.flips)
