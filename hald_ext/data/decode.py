"""One image file -> the same HWC uint8 RGB pixels on both loaders (torch and DALI).

The convention is torchvision / timm training's: `torchvision.datasets.ImageFolder`'s default loader,
`PIL.Image.open(f).convert("RGB")`, which keeps the stored orientation (the EXIF orientation tag is
ignored), drops alpha without compositing, looks palettes up ignoring tRNS transparency, converts CMYK /
YCCK JPEGs with Pillow's CMYK->RGB formula and keeps the high byte of 16-bit RGB PNGs. One deliberate
difference: a 16-bit grayscale PNG keeps its high byte as well (Pillow's "I;16" -> "RGB" clamps every value
above 255 to white, an all-white image for most such files, and disagrees with its own 16-bit RGB path).

  * `decode_file(path)`   the torch loader's decode: Pillow, in the convention.
  * `dali_input(path)`    the bytes DALI's `fn.decoders.image(**DALI_DECODER_KW)` decodes into the same
                          pixels: the file's own bytes for the kinds DALI decodes exactly like Pillow (JPEG
                          with 1 or 3 components, PNG of 8 bits or fewer, simple WebP), a lossless PNG of
                          `decode_file` for the others (CMYK / YCCK JPEG, 16-bit PNG, WebP with a VP8X
                          header, BMP, any file whose structure is irregular).
  * `DALI_DECODER_KW`     the decoder's keyword arguments: RGB output, EXIF orientation NOT applied
                          (DALI's default applies it), libjpeg-turbo's fancy chroma upsampling on the GPU
                          decoder too, the accurate integer IDCT.
  * `check_image_file`    the cheap structural check, O(header + tail) bytes read for a clean file: the
                          format's header up to the image data and the end marker near the end; a file cut
                          short is refused, naming it, on both loaders.
  * `image_size(path)`    (height, width) from the header, stored orientation.
  * `find_undecodable`    the first of a batch's files that decode_file refuses: names the file when DALI
                          raised on damage only a decoder finds.

docs/data-decoding.md lists each file kind and what each decoder does with it.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

_TAIL = 4096  # bytes searched for an end marker (some writers append a little after it)
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP"}
_SIXTEEN_BIT_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass(frozen=True)
class FileKind:
    """What the header says about a file: its format (by content, whatever its name), its stored size,
    a short description, and whether DALI's decoder gives the convention's pixels from the file's bytes.
    `end`: where the image's data stops when bytes follow it (None when the image runs to the file's end)."""
    format: str
    height: int
    width: int
    detail: str
    dali_safe: bool
    end: int | None = None


class _Bad(Exception):
    """The file is cut short or is not an image: refused on both loaders."""


class _Irregular(Exception):
    """A structure this module does not vouch for (junk between segments, an unknown marker, a bad CRC):
    Pillow decides whether the file decodes, and DALI gets a PNG of Pillow's pixels."""


class _Source:
    """Random access to a file's bytes, counting nothing more than what is asked (a file object) or
    slicing what is already in memory."""

    def __init__(self, f=None, data=None):
        self.f, self.data = f, data
        if data is not None:
            self.size = len(data)
        else:
            f.seek(0, os.SEEK_END)
            self.size = f.tell()

    def at(self, offset: int, n: int) -> bytes:
        if offset >= self.size or n <= 0:
            return b""
        if self.data is not None:
            return bytes(self.data[offset: offset + n])
        self.f.seek(offset)
        return self.f.read(n)

    def all(self) -> np.ndarray:
        if self.data is None:
            self.data = np.frombuffer(self.at(0, self.size), dtype=np.uint8)
        return np.asarray(self.data, dtype=np.uint8)


# ---- JPEG ------------------------------------------------------------------------------------------

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_BETWEEN = {0xC4, 0xCC, 0xDB, 0xDD, 0xDC, 0xFE} | set(range(0xE0, 0xF0))  # DHT DAC DQT DRI DNL COM APPn


def _jpeg_segment(src: _Source, pos: int) -> tuple[int, int, int]:
    """(marker, position of its FF, position after it) of the marker segment at `pos`, skipping fill bytes."""
    b = src.at(pos, 2)
    while len(b) == 2 and b == b"\xff\xff":
        pos += 1
        b = src.at(pos, 2)
    if len(b) < 2:
        raise _Bad("the file ends inside the JPEG header: it is truncated")
    if b[0] != 0xFF:
        raise _Irregular(f"no JPEG marker at byte {pos}")
    m = b[1]
    if 0xD0 <= m <= 0xD7 or m in (0x01, 0xD8, 0xD9):
        return m, pos, pos + 2
    ln = src.at(pos + 2, 2)
    if len(ln) < 2:
        raise _Bad("the file ends inside the JPEG header: it is truncated")
    length = (ln[0] << 8) | ln[1]
    if length < 2:
        raise _Irregular(f"JPEG segment length {length} at byte {pos}")
    return m, pos, pos + 2 + length


def _jpeg_header(src: _Source) -> tuple[FileKind, int]:
    """Walks the marker segments from SOI to the first scan: (kind, offset of the first scan's data)."""
    pos, sof, adobe = 2, None, None
    while True:
        m, at, nxt = _jpeg_segment(src, pos)
        if m == 0xDA:
            if sof is None:
                raise _Irregular("a JPEG scan before its frame header")
            if nxt > src.size:
                raise _Bad("the file ends inside the JPEG header: it is truncated")
            break
        if m == 0xD9:
            raise _Bad("the JPEG ends before its image data: it is truncated")
        if m in _SOF:
            if sof is not None:
                raise _Irregular("two JPEG frame headers")
            seg = src.at(at + 4, 6)
            if len(seg) < 6:
                raise _Bad("the file ends inside the JPEG header: it is truncated")
            precision, h, w, ncomp = seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
            sof = (m, precision, h, w, ncomp)
        elif m == 0xEE and nxt - at >= 16:
            seg = src.at(at + 4, 12)
            if seg[:5] == b"Adobe" and len(seg) == 12:
                adobe = seg[11]
        elif m not in _BETWEEN and not (0xD0 <= m <= 0xD7 or m == 0x01):
            raise _Irregular(f"JPEG marker 0x{m:02X} at byte {at}")
        pos = nxt
    m, precision, h, w, ncomp = sof
    if h == 0 or w == 0:
        raise _Irregular("a JPEG frame header of zero size (height given by a DNL marker)")
    colour = {1: "grayscale", 3: "YCbCr" if adobe != 0 else "RGB (Adobe transform 0)",
              4: "CMYK" if not adobe else "YCCK"}.get(ncomp, f"{ncomp}-component")
    coding = {0xC0: "baseline", 0xC1: "extended", 0xC2: "progressive"}.get(m, f"SOF 0x{m:02X}")
    safe = m in (0xC0, 0xC1, 0xC2) and precision == 8 and ncomp in (1, 3)
    return FileKind("jpeg", h, w, f"{coding} {colour} JPEG", safe), nxt


def _jpeg_scan_end(data: np.ndarray, pos: int) -> int:
    """Follows a JPEG from its first scan's data to EOI, in memory: inside entropy-coded data every 0xFF
    must be stuffing (00), fill (FF) or a restart marker; between scans only the segments a decoder takes
    there. Returns the offset just past EOI; _Irregular for a stray marker; _Bad when no EOI comes."""
    n = len(data)
    ff = np.flatnonzero(data[pos: n - 1] == 0xFF) + pos
    after = data[ff + 1]
    real = ff[~((after == 0x00) | (after == 0xFF) | ((after >= 0xD0) & (after <= 0xD7)))]
    src = _Source(data=data)
    while True:
        k = int(np.searchsorted(real, pos))
        if k == len(real):
            raise _Bad("no JPEG end marker (FFD9): the file is truncated")
        pos = int(real[k])
        while True:  # segments between scans, up to the next scan or EOI
            m, at, nxt = _jpeg_segment(src, pos)
            if m == 0xD9:
                return nxt
            if m == 0xDA:
                pos = nxt
                break
            if m not in _BETWEEN:
                raise _Irregular(f"JPEG marker 0x{m:02X} at byte {at} inside or after the image data")
            pos = nxt


def _jpeg(src: _Source) -> FileKind:
    try:
        kind, scan = _jpeg_header(src)
    except _Irregular as e:  # Pillow may still read it (libjpeg skips junk between segments)
        return _pil_kind(src, "jpeg", str(e))
    lo = max(scan, src.size - _TAIL)
    if src.at(lo, src.size - lo).rfind(b"\xff\xd9") >= 0:
        return kind
    try:  # no end marker near the end: data after the image (a "motion photo"), or a file cut short
        end = _jpeg_scan_end(src.all(), scan)
    except _Irregular:  # a stray marker before any end marker: Pillow decides
        return FileKind(kind.format, kind.height, kind.width, kind.detail, False)
    return FileKind(kind.format, kind.height, kind.width, kind.detail, kind.dali_safe,
                    None if end >= src.size else end)


# ---- PNG -------------------------------------------------------------------------------------------

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_TYPES = {0: ("gray", (1, 2, 4, 8, 16)), 2: ("RGB", (8, 16)), 3: ("palette", (1, 2, 4, 8)),
              4: ("gray+alpha", (8, 16)), 6: ("RGBA", (8, 16))}


def _png_chunks_end(src: _Source, crc: bool) -> int:
    """Walks the chunks to IEND (reading only their headers unless `crc`): the offset past IEND."""
    pos = 8
    while True:
        head = src.at(pos, 8)
        if len(head) < 8:
            raise _Bad("no PNG IEND chunk: the file is truncated")
        length, ctype = struct.unpack(">I4s", head)
        nxt = pos + 12 + length
        if nxt > src.size:
            raise _Bad("no PNG IEND chunk: the file is truncated")
        if crc:
            body = src.at(pos + 4, 4 + length)
            if zlib.crc32(body) & 0xFFFFFFFF != struct.unpack(">I", src.at(nxt - 4, 4))[0]:
                raise _Irregular(f"PNG chunk {ctype!r} at byte {pos} fails its CRC")
        if ctype == b"IEND":
            return nxt
        pos = nxt


def _png(src: _Source) -> FileKind:
    head = src.at(8, 25)
    if len(head) < 25 or head[4:8] != b"IHDR":
        raise _Bad("no PNG header (IHDR): the file is truncated or corrupt")
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[8:21])
    name, depths = _PNG_TYPES.get(ctype, (None, ()))
    if depth not in depths or w == 0 or h == 0:
        raise _Bad(f"PNG header with colour type {ctype}, bit depth {depth}, size {w}x{h}: corrupt")
    kind = FileKind("png", h, w, f"{depth}-bit {name}{' interlaced' if interlace else ''} PNG", depth <= 8)
    lo = max(33, src.size - _TAIL)
    if src.at(lo, src.size - lo).rfind(b"IEND") >= 0:
        return kind
    end = _png_chunks_end(src, crc=False)  # chunk headers only: data after IEND, or a file cut short
    return FileKind(kind.format, h, w, kind.detail, kind.dali_safe, None if end >= src.size else end)


# ---- BMP, WebP -------------------------------------------------------------------------------------

def _bmp(src: _Source) -> FileKind:
    head = src.at(0, 34)
    if len(head) < 26 or (len(head) < 34 and head[14:18] != b"\x0c\0\0\0"):
        raise _Bad("the file ends inside the BMP header: it is truncated")
    offset, hsize = struct.unpack("<II", head[10:18])
    if hsize == 12:  # OS/2 core header
        (w, h), bpp, comp = struct.unpack("<HH", head[18:22]), struct.unpack("<H", head[24:26])[0], 0
    else:
        w, h, _, bpp, comp = struct.unpack("<iiHHI", head[18:34])
    if w <= 0 or h == 0:
        raise _Bad(f"BMP header with size {w}x{h}: corrupt")
    if comp == 0 and bpp in (1, 4, 8, 16, 24, 32) and src.size < offset + ((bpp * w + 31) // 32) * 4 * abs(h):
        raise _Bad("the BMP's pixel data is shorter than its header says: the file is truncated")
    # never DALI-safe: its BMP reader agrees with Pillow on the BMPs Pillow writes, but fails on some with a
    # damaged header that Pillow reads; BMPs are rare and decoding one is a copy, so DALI gets a PNG
    return FileKind("bmp", abs(h), w, f"{bpp}-bit BMP (compression {comp}, header {hsize})", False)


def _webp(src: _Source) -> FileKind:
    head = src.at(0, 30)
    riff_end = 8 + struct.unpack("<I", head[4:8])[0]
    fourcc = head[12:16]
    if src.size < riff_end or len(head) < (25 if fourcc == b"VP8L" else 30):
        raise _Bad("the WebP is shorter than its RIFF header says: the file is truncated")
    if fourcc == b"VP8X":
        w, h = 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    elif fourcc == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = (v & 0x3FFF for v in struct.unpack("<HH", head[26:30]))
    elif fourcc == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        w, h = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        raise _Bad(f"corrupt WebP header (chunk {fourcc!r})")
    # DALI decodes only the simple format (one VP8 / VP8L chunk); a VP8X file (EXIF, alpha, animation)
    # goes to it as a PNG (DALI fails on a lossless one with EXIF)
    return FileKind("webp", h, w, f"WebP ({fourcc.decode('latin-1').strip()})", fourcc != b"VP8X",
                    riff_end if riff_end < src.size else None)


# ---- the checks ------------------------------------------------------------------------------------

def _pil_kind(src: _Source, fmt: str, why: str) -> FileKind:
    """The size from Pillow's lazy open, for a header this module does not parse; never DALI-safe."""
    try:
        with Image.open(io.BytesIO(src.at(0, src.size)), formats=[_PIL_FORMAT[fmt]]) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001 -- Pillow raises many types on a bad header
        raise _Bad(f"{why}; Pillow cannot read its header either ({e})") from None
    return FileKind(fmt, h, w, f"{fmt} with an irregular structure ({why})", False)


def _inspect(src: _Source) -> FileKind:
    """The format by content, then its header and end: _Bad for a file that is cut short or no image."""
    head = src.at(0, 16)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg(src)
    if head.startswith(_PNG_SIG):
        return _png(src)
    if head.startswith(b"BM"):
        return _bmp(src)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp(src)
    raise _Bad("no image signature (JPEG, PNG, BMP or WebP): not an image file" if head
               else "the file is empty")


def _refuse(path, why) -> ValueError:
    return ValueError(f"{path}: cannot decode this image file (corrupt or not an image): {why}")


def check_image_file(path: str) -> FileKind:
    """The cheap structural check: the format (by content, whatever the file's name), the header up to the
    image data, and the end marker (JPEG FFD9, PNG IEND) in the last 4 KiB. Reads O(header + tail) bytes
    for a clean file; only a JPEG / PNG without its end marker near the end is read further, to tell data
    appended after the image (kept) from a file cut short (refused). ValueError naming a bad file."""
    try:
        with open(path, "rb") as f:
            return _inspect(_Source(f=f))
    except (_Bad, OSError) as e:
        raise _refuse(path, e) from None


def image_size(path: str) -> tuple[int, int]:
    """(height, width) as stored (EXIF orientation ignored, as decode_file does), from the header alone;
    ValueError naming a file that is not an image or is cut short."""
    kind = check_image_file(path)
    return kind.height, kind.width


def _decode(fp, path: str, fmt: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow's notes on palette transparency and odd EXIF blocks: the pixels are what they are
            warnings.simplefilter("ignore", UserWarning)
            with Image.open(fp, formats=[_PIL_FORMAT[fmt]]) as im:
                if im.mode in _SIXTEEN_BIT_GRAY:  # the high byte, as Pillow does for 16-bit RGB
                    v = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
                    return np.repeat(v[:, :, None], 3, axis=2)
                if im.mode != "RGB":
                    im = im.convert("RGB")
                return np.array(im)
    except Exception as e:  # noqa: BLE001 -- Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _refuse(path, f"{type(e).__name__}: {e}") from None


def decode_file(path: str) -> np.ndarray:
    """One image file as HWC uint8 RGB in the convention (Pillow's convert("RGB"), stored orientation,
    16-bit gray by its high byte), after the structural check; ValueError naming a bad file."""
    kind = check_image_file(path)
    return _decode(path, path, kind.format)


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def _png_bytes(rgb: np.ndarray) -> np.ndarray:
    """A lossless 8-bit RGB PNG of `rgb`, stored (zlib level 0, no row filter): writing it costs a copy
    (Pillow's encoder takes ~50x longer), DALI inflates it at copy speed; it lives for one batch."""
    h, w = rgb.shape[:2]
    rows = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # each row: filter type 0, then the pixels
    rows[:, 1:] = rgb.reshape(h, 3 * w)
    png = (_PNG_SIG + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)) + _png_chunk(b"IEND", b""))
    return np.frombuffer(png, dtype=np.uint8)


def _vouch(data: np.ndarray, kind: FileKind) -> int:
    """The full structural check, in memory, of a file whose kind DALI decodes like Pillow: every JPEG
    marker from the first scan to EOI, every PNG chunk's CRC up to IEND. Returns where the image ends;
    _Irregular (or _Bad) for anything this module does not vouch for."""
    if kind.format == "jpeg":
        return _jpeg_scan_end(data, _jpeg_header(_Source(data=data))[1])
    if kind.format == "png":
        return _png_chunks_end(_Source(data=data), crc=True)
    return len(data) if kind.end is None else kind.end


def dali_input(path: str) -> np.ndarray:
    """The encoded bytes (1-D uint8) that `fn.decoders.image(..., **DALI_DECODER_KW)` decodes into
    decode_file(path)'s pixels. The file's own bytes (up to the image's end when data follows it) for the
    kinds DALI decodes like Pillow, once fully checked in memory (every JPEG marker up to EOI, every PNG
    chunk's CRC: DALI's CPU decoder must never see a file cut short or with a stray marker); otherwise a
    lossless PNG of Pillow's pixels (decode_file's). ValueError naming a file that the structural check
    or Pillow refuses. Damage only a decoder finds (a corrupt Huffman table, bad compressed data in a
    simple file) is not looked for here: DALI raises on it (as Pillow does), and find_undecodable names
    the file."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
        kind = _inspect(_Source(data=data))
    except (_Bad, OSError) as e:
        raise _refuse(path, e) from None
    if kind.dali_safe:
        try:
            return data[: _vouch(data, kind)]
        except (_Bad, _Irregular):
            pass  # Pillow decides, DALI gets its pixels
    return _png_bytes(_decode(io.BytesIO(data.tobytes()), path, kind.format))


def find_undecodable(paths) -> str | None:
    """The first of `paths` that decode_file refuses (to name it when a batch decoder raised), or None."""
    for p in paths:
        try:
            decode_file(p)
        except ValueError:
            return p
    return None


def __getattr__(name):
    # a fresh dict on each access; DALI is imported only when it is asked for (it is optional)
    if name == "DALI_DECODER_KW":
        from nvidia.dali import types

        return dict(output_type=types.RGB, dtype=types.UINT8, adjust_orientation=False,
                    jpeg_fancy_upsampling=True, use_fast_idct=False)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
