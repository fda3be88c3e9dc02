"""Every kind of image file users have gives the same pixels on both loaders, in one convention:
torchvision ImageFolder's `PIL.Image.open(f).convert("RGB")` (stored orientation, EXIF ignored).

One small file per kind, written the way real files are (Pillow / libjpeg-turbo with the right modes;
the PNG chunks Pillow cannot write, such as 16-bit RGB, chunk by chunk). Per file: decode_file (the torch
loader's decode) equals Pillow's convert("RGB"); a DALI CPU pipeline over dali_input + fn.decoders.image(
**DALI_DECODER_KW) gives exactly those pixels; image_size is the decoded shape. A corrupt file is refused,
naming it, on both paths. docs/data-decoding.md describes the kinds and the decoders."""
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from hald_ext.data import decode
from hald_ext.data.decode import check_image_file, dali_input, decode_file, image_size

H, W = 23, 37  # odd sizes: the chroma planes of subsampled JPEGs do not divide them
PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _pixels(c=3, h=H, w=W, seed=0):
    """Gradients plus noise: smooth areas and edges, as photos have."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    planes = [x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 7 % 256, x * y % 256][:c]
    return np.clip(np.stack(planes, -1) + rng.integers(-20, 21, (h, w, c)), 0, 255).astype(np.uint8)


def _chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _png(path, rows: np.ndarray, width: int, depth: int, ctype: int, extra=b""):
    """A PNG written chunk by chunk: `rows` holds each row's packed bytes (filter type 0)."""
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", width, len(rows), depth, ctype, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(PNG_SIG + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _png16(path, values: np.ndarray, ctype: int):
    _png(path, values.astype(">u2").reshape(values.shape[0], -1).view(np.uint8), values.shape[1], 16, ctype)


def _values16():
    return (_pixels(seed=3).astype(np.uint16) * 257 + np.random.default_rng(1).integers(0, 257, (H, W, 3))
            ).astype(np.uint16)


def _exif(orientation):
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


def _ycck(path):
    """A YCCK JPEG as libjpeg's JCS_YCCK encoder writes one: C, M, Y inverted to R, G, B, then to YCbCr;
    K as it is; Adobe APP14 transform 2. Pillow writes the four planes (its CMYK save: Adobe transform 0)
    and the transform byte is set to 2; Pillow reads the file back to the CMYK it came from."""
    cmyk = _pixels(4).astype(np.float64)
    r, g, b = (255 - cmyk[..., i] for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * b + 128
    planes = np.clip(np.rint(np.stack([y, cb, cr, cmyk[..., 3]], -1)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.frombytes("CMYK", (W, H), planes.tobytes()).save(buf, "JPEG", quality=95)
    data = bytearray(buf.getvalue())
    at = data.find(b"Adobe")
    assert data[at + 11] == 0
    data[at + 11] = 2
    with open(path, "wb") as f:
        f.write(data)


def _save(img, **kw):
    return lambda path: img.save(path, **kw)


def _gray4(path):
    v = _pixels()[..., 0] >> 4
    v = np.pad(v, ((0, 0), (0, 1)))  # even width: two pixels a byte
    _png(path, (v[:, 0::2] << 4 | v[:, 1::2]).astype(np.uint8), W, 4, 0)


def _crc_mismatch(path):
    """An intact PNG whose IDAT CRC is wrong: Pillow decodes it, DALI's libpng refuses it."""
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[data.find(b"IEND") - 8] ^= 1  # the last byte of IDAT's CRC
    with open(path, "wb") as f:
        f.write(data)


def _motion(path):
    """A "motion photo": video bytes appended after the JPEG's end marker."""
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, "JPEG", quality=90)
    trailer = bytes(b if b != 0xFF else 0 for b in np.random.default_rng(0).bytes(6000))
    with open(path, "wb") as f:
        f.write(buf.getvalue() + trailer)


def _junk_between_segments(path):
    """Stray bytes between two header segments: libjpeg skips them (with a warning), so Pillow decodes the
    file; this module does not vouch for such a header, and DALI gets a PNG of Pillow's pixels."""
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    at = data.find(b"\xff\xdb")  # the first quantisation table, after APP0
    with open(path, "wb") as f:
        f.write(data[:at] + b"\x00\x13\x37" + data[at:])


def _palette():
    return Image.fromarray(_pixels()).quantize(50)


# name -> (writer, does DALI get the file's own bytes (True) or a PNG of the convention's pixels (False))
RGB = Image.fromarray(_pixels())
KINDS = {
    "baseline_420.jpg": (_save(RGB, quality=90), True),
    "baseline_444.jpg": (_save(RGB, quality=90, subsampling=0), True),
    "baseline_422.jpg": (_save(RGB, quality=90, subsampling=1), True),
    "progressive.jpg": (_save(RGB, quality=90, progressive=True), True),
    "restart_markers.jpg": (_save(RGB, quality=90, restart_marker_blocks=2), True),
    "gray.jpg": (_save(Image.fromarray(_pixels()[..., 0]), quality=90), True),
    "rgb_adobe_transform0.jpg": (_save(RGB, quality=90, keep_rgb=True), True),
    "icc_profile.jpg": (_save(RGB, quality=90, icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()), True),
    **{f"exif_orientation{o}.jpg": (_save(RGB, quality=90, exif=_exif(o)), True) for o in range(1, 9)},
    "cmyk.jpg": (_save(Image.frombytes("CMYK", (W, H), _pixels(4).tobytes()), quality=90), False),
    "ycck.jpg": (_ycck, False),
    "motion_photo.jpg": (_motion, True),
    "junk_between_segments.jpg": (_junk_between_segments, False),
    "rgb.png": (_save(RGB), True),
    "gray.png": (_save(Image.fromarray(_pixels()[..., 1])), True),
    "gray_4bit.png": (_gray4, True),
    "bilevel.png": (_save(Image.fromarray(_pixels()[..., 0] > 128)), True),
    "rgba.png": (_save(Image.fromarray(_pixels(4), "RGBA")), True),
    "la.png": (_save(Image.fromarray(_pixels(4)[..., 1:3].copy(), "LA")), True),
    "palette.png": (_save(_palette()), True),
    "palette_trns.png": (_save(_palette(), transparency=bytes([0, 128] + [255] * 48)), True),
    "palette_trns_one.png": (_save(_palette(), transparency=3), True),
    "gray_trns.png": (_save(Image.fromarray(_pixels()[..., 1]), transparency=77), True),
    "rgb_trns.png": (_save(RGB, transparency=(10, 20, 30)), True),
    "exif_orientation6.png": (_save(RGB, exif=_exif(6)), True),
    "rgb16.png": (lambda p: _png16(p, _values16(), 2), False),
    "rgba16.png": (lambda p: _png16(p, np.concatenate([_values16(), _values16()[..., :1]], -1), 6), False),
    "gray16.png": (lambda p: _png16(p, _values16()[..., 0], 0), False),
    "la16.png": (lambda p: _png16(p, _values16()[..., :2], 4), False),
    "crc_mismatch.png": (_crc_mismatch, False),
    "png_named.JPEG": (_save(RGB, format="PNG"), True),  # ImageNet's n02105855_2933.JPEG is a PNG
    "jpeg_named.png": (_save(RGB, format="JPEG", quality=90), True),
    "rgb.bmp": (_save(RGB), False),
    "palette.bmp": (_save(_palette()), False),
    "rgbx32.bmp": (_save(Image.fromarray(_pixels(4), "RGBA")), False),
    "bilevel.bmp": (_save(Image.fromarray(_pixels()[..., 0] > 128)), False),
    "lossy.webp": (_save(RGB, quality=80), True),
    "lossless.webp": (_save(RGB, lossless=True), True),
    "lossless_rgba.webp": (_save(Image.fromarray(_pixels(4), "RGBA"), lossless=True), True),
    "exif_orientation6.webp": (_save(RGB, quality=80, exif=_exif(6)), False),
    "lossless_exif.webp": (_save(RGB, lossless=True, exif=_exif(6)), False),
    "animated.webp": (lambda p: RGB.save(p, save_all=True, append_images=[Image.fromarray(255 - _pixels())],
                                         lossless=True), False),
}
GRAY16 = ("gray16.png",)  # the one deliberate difference from Pillow: see test_16_bit_gray_keeps_its_high_byte


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    out = {}
    for name, (write, _) in KINDS.items():
        out[name] = str(root / name)
        write(out[name])
    return out


def _pil_rgb(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("name", [n for n in KINDS if n not in GRAY16])
def test_decode_file_is_pillows_convert_rgb(files, name):
    got = decode_file(files[name])
    assert got.dtype == np.uint8 and got.shape == (H, W, 3) and got.flags.writeable
    np.testing.assert_array_equal(got, _pil_rgb(files[name]))


def test_16_bit_gray_keeps_its_high_byte(files):
    # Pillow reads a 16-bit gray PNG as "I;16" and its convert("RGB") clamps every value above 255 to
    # white; its 16-bit RGB path keeps the high byte. decode_file keeps the high byte for gray too.
    v = _values16()[..., 0]
    got = decode_file(files["gray16.png"])
    np.testing.assert_array_equal(got, np.repeat((v >> 8).astype(np.uint8)[:, :, None], 3, 2))
    assert (_pil_rgb(files["gray16.png"])[..., 0] == 255).mean() > 0.9  # what Pillow alone gives
    np.testing.assert_array_equal(decode_file(files["rgb16.png"]), (_values16() >> 8).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_not_applied(files, orientation):
    path = files[f"exif_orientation{orientation}.jpg"]
    with Image.open(path) as im:
        assert im.getexif()[0x0112] == orientation  # the tag is there
    np.testing.assert_array_equal(decode_file(path), decode_file(files["exif_orientation1.jpg"]))
    assert image_size(path) == (H, W)


@pytest.mark.parametrize("name", list(KINDS))
def test_image_size_is_the_decoded_shape(files, name):
    assert image_size(files[name]) == decode_file(files[name]).shape[:2]


@pytest.mark.parametrize("name", list(KINDS))
def test_dali_gets_the_files_bytes_unless_it_would_decode_them_otherwise(files, name):
    with open(files[name], "rb") as f:
        raw = f.read()
    got = dali_input(files[name]).tobytes()
    if KINDS[name][1]:
        if name == "motion_photo.jpg":  # up to the end marker: the appended bytes stay out
            assert got == raw[: raw.index(b"\xff\xd9", len(raw) - 6002) + 2] and len(got) < len(raw) - 5000
        else:
            assert got == raw
    else:
        assert got.startswith(PNG_SIG) and got != raw


@pytest.fixture(scope="module")
def dali_decoded(files):
    """Every file through a DALI CPU pipeline: external_source over dali_input + the decoder, one file a
    run (a file DALI fails on is recorded, and fails its own test only)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8)
        return fn.decoders.image(encoded, device="cpu", **decode.DALI_DECODER_KW)

    out, p = {}, None
    for name, path in files.items():
        if p is None:
            p = pipe()
            p.build()
        p.feed_input("encoded", [dali_input(path)])
        try:
            out[name] = np.array(p.run()[0][0])
        except RuntimeError as e:  # the pipeline is unusable after an error: a new one for the next file
            out[name], p = e, None
    return out


@pytest.mark.parametrize("name", list(KINDS))
def test_dali_gives_decode_files_pixels(files, dali_decoded, name):
    # exact for every kind, JPEGs included: DALI's CPU decoder is libjpeg-turbo with the accurate integer
    # IDCT and fancy upsampling, as Pillow's is (measured: no pixel differs)
    got = dali_decoded[name]
    assert not isinstance(got, Exception), f"DALI failed on {name}: {got}"
    np.testing.assert_array_equal(got, decode_file(files[name]))


def test_dali_alone_would_differ(files):
    """Why dali_input and DALI_DECODER_KW exist: DALI's defaults on the files' own bytes turn EXIF-tagged
    JPEGs, convert CMYK and 16-bit PNGs otherwise (off by one), and fail on a PNG with a CRC mismatch.
    (Should a DALI upgrade make one of these agree, update docs/data-decoding.md's table; dali_input may
    then pass that kind's bytes.)"""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    def run(name, **kw):
        @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipe():
            return fn.decoders.image(fn.external_source(name="e", dtype=types.UINT8), device="cpu", **kw)

        p = pipe()
        p.build()
        p.feed_input("e", [np.fromfile(files[name], dtype=np.uint8)])
        return np.array(p.run()[0][0])

    for o in range(5, 9):  # DALI's default adjust_orientation=True transposes these
        assert run(f"exif_orientation{o}.jpg", output_type=types.RGB).shape == (W, H, 3)
    kw = dict(output_type=types.RGB, adjust_orientation=False)
    for name in ("cmyk.jpg", "ycck.jpg", "rgb16.png", "gray16.png"):
        diff = np.abs(run(name, **kw).astype(int) - decode_file(files[name]))
        assert diff.max() >= 1, name
    with pytest.raises(RuntimeError):
        run("crc_mismatch.png", **kw)


# ---- bad files -------------------------------------------------------------------------------------

def _jpeg_bytes(progressive=False):
    buf = io.BytesIO()
    Image.fromarray(_pixels(h=96, w=128)).save(buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


def _encoded(fmt):
    buf = io.BytesIO()
    Image.fromarray(_pixels(h=96, w=128)).save(buf, fmt)
    return buf.getvalue()


def _stray_marker():
    """An invalid marker (FF 05) inside the entropy-coded data: Pillow refuses the file, DALI's decoder
    would decode it (see test_a_corrupt_file_is_refused_on_both_paths)."""
    j = _jpeg_bytes()
    mid = (j.find(b"\xff\xda") + len(j)) // 2
    return j[:mid] + b"\xff\x05" + j[mid + 2:]


def _corrupt_idat():
    p = _encoded("PNG")
    at = p.find(b"IDAT") + 20
    return p[:at] + bytes([p[at] ^ 0xFF]) + p[at + 1:]


def _zero_tail():
    j = _jpeg_bytes()
    return j[: len(j) * 6 // 10] + bytes(len(j) - len(j) * 6 // 10)


# name -> (bytes, is it caught from header + tail alone (image_size refuses it too))
BAD = {
    "cut_in_header.jpg": (_jpeg_bytes()[:200], True),
    "cut_in_scan.jpg": (_jpeg_bytes()[: len(_jpeg_bytes()) * 6 // 10], True),
    "cut_progressive.jpg": (_jpeg_bytes(True)[: len(_jpeg_bytes(True)) * 6 // 10], True),
    "cut_before_end_marker.jpg": (_jpeg_bytes()[:-2], True),
    "zero_filled_tail.jpg": (_zero_tail(), True),
    "stray_marker.jpg": (_stray_marker(), False),
    "cut.png": (_encoded("PNG")[: len(_encoded("PNG")) // 2], True),
    "corrupt_idat.png": (_corrupt_idat(), False),
    "cut.webp": (_encoded("WEBP")[: len(_encoded("WEBP")) // 2], True),
    "cut.bmp": (_encoded("BMP")[: len(_encoded("BMP")) // 2], True),
    "empty.jpg": (b"", True),
    "not_found.JPEG": (b"<html><body>404 Not Found</body></html>\n", True),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_corrupt_file_is_refused_on_both_paths(tmp_path, name):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(BAD[name][0])
    with pytest.raises(ValueError, match=name):
        decode_file(path)
    with pytest.raises(ValueError, match=name):  # before DALI's decoder sees a byte of it
        dali_input(path)
    if BAD[name][1]:
        with pytest.raises(ValueError, match=name):
            image_size(path)
    else:  # the header is intact: the size is known, the decode refuses
        assert image_size(path) == (96, 128)


def test_dali_alone_would_decode_a_file_pillow_refuses(tmp_path):
    # the reason dali_input walks every JPEG marker up to EOI before DALI sees the bytes
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.decoders.image(fn.external_source(name="e", dtype=types.UINT8), device="cpu",
                                 **decode.DALI_DECODER_KW)

    p = pipe()
    p.build()
    p.feed_input("e", [np.frombuffer(_stray_marker(), dtype=np.uint8)])
    assert np.array(p.run()[0][0]).shape == (96, 128, 3)


def _mutations(files, n, seed):
    """Damaged copies of the fixture files: cut, bytes overwritten, bytes inserted, a marker-like pair
    (FF xx) written, bytes deleted."""
    rng = np.random.default_rng(seed)
    names = sorted(files)
    for i in range(n):
        name = names[rng.integers(len(names))]
        with open(files[name], "rb") as f:
            data = bytearray(f.read())
        at, op = int(rng.integers(len(data))), int(rng.integers(5))
        if op == 0:
            data = data[:at]
        elif op == 1:
            data[at] = int(rng.integers(256))
        elif op == 2:
            data[at:at] = rng.bytes(int(rng.integers(1, 8)))
        elif op == 3:
            data[at: at + 2] = bytes([0xFF, int(rng.integers(256))])
        else:
            del data[at: at + int(rng.integers(1, 64))]
        yield f"damaged{i}_{name}", bytes(data)


def test_damaged_files_never_reach_dali_unchecked(files, tmp_path):
    """Fuzzed damage to every kind: each function raises nothing but ValueError naming the file; a file
    decode_file reads gives the same pixels through DALI; a file Pillow refuses is refused by dali_input or
    raised on by DALI (a RuntimeError the loader names with find_undecodable), never decoded, never a
    crash (it would take the test process down)."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return fn.decoders.image(fn.external_source(name="e", dtype=types.UINT8), device="cpu",
                                 **decode.DALI_DECODER_KW)

    def attempt(f, path):
        try:
            return f(path)
        except ValueError as e:
            assert path in str(e)
            return None

    p, seen = None, {"refused": 0, "decoded": 0, "dali raised": 0}
    for name, data in _mutations(files, 300, seed=0):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(data)
        size = attempt(image_size, path)
        pixels, encoded = attempt(decode_file, path), attempt(dali_input, path)
        if pixels is not None:
            assert encoded is not None and size == pixels.shape[:2], name
        if encoded is None:
            seen["refused"] += 1
            continue
        if p is None:
            p = pipe()
            p.build()
        p.feed_input("e", [encoded])
        try:
            out = np.array(p.run()[0][0])
        except RuntimeError:
            assert pixels is None, f"DALI fails on {name}, which decode_file reads"
            seen["dali raised"], p = seen["dali raised"] + 1, None
            continue
        assert pixels is not None, f"DALI decodes {name}, which decode_file refuses"
        np.testing.assert_array_equal(out, pixels, err_msg=name)
        seen["decoded"] += 1
    assert min(seen.values()) > 0, seen  # the damage exercised every outcome


# ---- the structural check's cost -------------------------------------------------------------------

class _CountingFile:
    def __init__(self, f, counter):
        self.f, self.counter = f, counter

    def read(self, n=-1):
        data = self.f.read(n)
        self.counter[0] += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_the_structural_check_reads_header_and_tail_only(tmp_path, monkeypatch, fmt):
    path = str(tmp_path / f"big.{fmt.lower()}")
    noise = np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    kw = dict(quality=95, exif=_exif(6), icc_profile=ImageCms.ImageCmsProfile(
        ImageCms.createProfile("sRGB")).tobytes()) if fmt == "JPEG" else {}
    Image.fromarray(noise).save(path, fmt, **kw)
    counter = [0]
    monkeypatch.setattr(decode, "open", lambda p, mode="r": _CountingFile(open(p, mode), counter), raising=False)
    assert check_image_file(path).height == 400
    size = os.path.getsize(path)
    assert size > 200_000 and counter[0] <= 8192, (size, counter[0])
    # without the end marker near the end, the check looks further to tell appended data from a cut:
    # a JPEG's entropy-coded data is read through; a PNG's chunks are walked by their headers alone
    with open(path, "ab") as f:
        f.write(b"\0" * 5000)
    counter[0] = 0
    assert check_image_file(path).end == size
    assert counter[0] >= size if fmt == "JPEG" else counter[0] <= 16384
