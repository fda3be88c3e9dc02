"""Label store format: round trip, access API, shards, every documented failure, atomic writes and a
fuzz test of the reader."""
import dataclasses
import json
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from hald_ext.labels import FingerprintMismatch, Header, LabelStore, LabelStoreError, MixRecord, Quantizer
from hald_ext.labels.format import HEADER_KEY, MAGIC_KEY, VERSION_KEY
from hald_ext.ops import label_encode, soft_hard_loss


def make_header(N=6, S=3, C=10, k=5, bits=8, mix=False, **kw):
    return Header(num_images=N, sli=S, num_classes=C, k=k, temperature=4.0, quantizer=Quantizer("log", bits),
                  teacher={"name": "convnet3", "checkpoint_sha256": "0" * 64},
                  images={"count": N, "sha256": "ab" * 32}, crops={"rule": "test"}, seed=1, mix=mix, **kw)


def make_arrays(h: Header, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, S = h.num_images, h.sli
    yx = torch.rand(N, S, 2, generator=g) * 0.5
    hw = torch.rand(N, S, 2, generator=g) * 0.5 + 0.01
    from hald_ext.core.boxes import quantize_boxes

    boxes = quantize_boxes(torch.cat([yx, hw], -1))
    flips = torch.rand(N, S, generator=g) < 0.5
    z = torch.randn(N * S, h.num_classes, generator=g) * 3
    ids, codes = label_encode(z, h.k, h.quantizer.thresholds(), temperature=h.temperature, from_logits=True)
    return boxes, flips, ids.view(N, S, h.k), codes.view(N, S, h.k)


@pytest.fixture
def store_path(tmp_path):
    h = make_header()
    path = str(tmp_path / "s.safetensors")
    LabelStore.create(path, h, *make_arrays(h))
    return path


def test_round_trip_and_access(tmp_path):
    h = make_header(N=7, S=2, C=1000, k=5)
    arrays = make_arrays(h)
    s = LabelStore.create(tmp_path / "a.safetensors", h, *arrays)
    s = LabelStore.open(tmp_path / "a.safetensors")
    assert s.header.to_json() == h.to_json()
    for got, want in zip((s.boxes, s.flips, s.topk_ids, s.codes), arrays):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(s.codebook, h.quantizer.codebook())
    assert s.bytes_per_label == 24  # box 8 + flip 1 + 5 x (uint16 id + uint8 code)
    assert s.nbytes == os.path.getsize(tmp_path / "a.safetensors")
    ids, codes = s.labels(torch.tensor([6, 0, 3]), torch.tensor([1, 0, 1]))
    assert torch.equal(ids, arrays[2][[6, 0, 3], [1, 0, 1]]) and torch.equal(codes, arrays[3][[6, 0, 3], [1, 0, 1]])
    slots = list(s.iter_slots())
    assert [sl.slot for sl in slots] == [0, 1] and torch.equal(slots[1].topk_ids, arrays[2][:, 1])
    # Straight into the fused loss.
    loss = soft_hard_loss(torch.randn(3, 1000), ids, codes, codebook=s.codebook, temperature=s.temperature)
    assert torch.isfinite(loss)
    with pytest.raises(IndexError):
        s.labels([7], [0])
    with pytest.raises(IndexError):
        s.labels([0], [2])


def test_16_bit_codes_and_int32_ids(tmp_path):
    h = make_header(N=3, S=1, C=70000, k=2, bits=16)
    s = LabelStore.create(tmp_path / "b.safetensors", h, *make_arrays(h))
    assert s.topk_ids.dtype == torch.int32 and s.codes.dtype == torch.uint16 and s.codebook.numel() == 65536
    assert s.bytes_per_label == 8 + 1 + 2 * (4 + 2)


def test_shards_cover_the_store_disjointly(store_path):
    s = LabelStore.open(store_path)
    seen = []
    for rank in range(4):
        sh = s.shard(rank, 4)
        ids = torch.arange(sh.image_offset, sh.image_offset + sh.num_images)
        got, _ = sh.labels(ids, torch.zeros_like(ids))
        assert torch.equal(got, s.topk_ids[ids, 0])
        seen += ids.tolist()
        if sh.num_images:
            with pytest.raises(IndexError):
                sh.labels([sh.image_offset + sh.num_images], [0])
    assert seen == list(range(s.num_images))


def test_mix_record_round_trip(tmp_path):
    h = make_header(mix=True)
    arrays = make_arrays(h)
    mix = MixRecord(torch.randint(-1, 6, (6, 3), dtype=torch.int32), arrays[0].clone(), torch.rand(6, 3))
    s = LabelStore.create(tmp_path / "m.safetensors", h, *arrays, mix=mix)
    assert torch.equal(LabelStore.open(s.path).mix.partner, mix.partner)
    assert s.bytes_per_label == 24 + 16
    with pytest.raises(LabelStoreError, match="partner"):
        LabelStore.create(tmp_path / "m2.safetensors", h, *arrays, mix=mix._replace(partner=mix.partner + 10))
    with pytest.raises(LabelStoreError, match="mix"):
        LabelStore.create(tmp_path / "m3.safetensors", make_header(), *arrays, mix=mix)


def test_stats_round_trip_and_checked_on_write(tmp_path, store_path):
    assert LabelStore.open(store_path).header.stats == {}
    h = make_header(stats={"kl_to_teacher": 0.125, "kl_uniform": 1.5, "count": 3})
    s = LabelStore.create(tmp_path / "st.safetensors", h, *make_arrays(h))
    assert LabelStore.open(s.path).header.stats == {"kl_to_teacher": 0.125, "kl_uniform": 1.5, "count": 3}
    # A store written before stats existed (no "stats" key in its header) reads as {}.
    old = rewrite(s.path, tmp_path / "old", header={"stats": None})
    assert LabelStore.open(old).header.stats == {}
    with pytest.raises(ValueError, match="stats 'kl' = inf is not a finite number"):
        make_header(stats={"kl": float("inf")}).to_json()
    # stats are measurements, not the recipe: a finished relabel's header matches its partial one
    assert h.same_recipe(make_header(progress=4))


def test_fingerprint_check(store_path):
    s = LabelStore.open(store_path, images={"count": 6, "sha256": "ab" * 32})
    with pytest.raises(FingerprintMismatch, match="made for 6 images, this set has 5"):
        s.check_images({"count": 5, "sha256": "ab" * 32})
    with pytest.raises(FingerprintMismatch, match="other pixels"):
        LabelStore.open(store_path, images={"count": 6, "sha256": "cd" * 32})


# ------------------------------------------------------------------ corrupt files, each with its own message
def rewrite(path, out, *, metadata=None, tensors=None, header=None):
    """Re-save a store with edited metadata / tensors (bypassing LabelStore.create's checks)."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
    t = load_file(path)
    if header is not None:
        d = json.loads(meta[HEADER_KEY])
        d.update(header)
        d = {k: v for k, v in d.items() if v is not None or k in ("images", "seed", "progress")}
        meta[HEADER_KEY] = json.dumps(d)
    meta.update(metadata or {})
    t.update(tensors or {})
    save_file(t, out, metadata={k: v for k, v in meta.items() if v is not None})
    return out


def test_truncated(store_path, tmp_path):
    data = open(store_path, "rb").read()
    for n in (0, 5, 100, len(data) - 1):
        p = tmp_path / f"t{n}"
        p.write_bytes(data[:n])
        with pytest.raises(LabelStoreError, match="truncated"):
            LabelStore.open(p)


def test_not_a_store_and_wrong_version(store_path, tmp_path):
    with pytest.raises(LabelStoreError, match="wrong magic"):
        LabelStore.open(rewrite(store_path, tmp_path / "a", metadata={MAGIC_KEY: "something-else"}))
    with pytest.raises(LabelStoreError, match="unsupported label store version '3'"):
        LabelStore.open(rewrite(store_path, tmp_path / "b", metadata={VERSION_KEY: "3"}))
    (tmp_path / "c").write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a zip (torch.save) file
    with pytest.raises(LabelStoreError, match="corrupt header length"):
        LabelStore.open(tmp_path / "c")


def test_a_version_1_store_opens(store_path, tmp_path):
    """Version 1 wrote SLI as the header field "slots"; such a file reads as the same store."""
    new = LabelStore.open(store_path)
    d = json.loads(new.header.to_json())
    d["slots"] = d.pop("sli")
    d["version"] = 1
    old = LabelStore.open(rewrite(store_path, tmp_path / "v1", metadata={VERSION_KEY: "1", HEADER_KEY: json.dumps(d)}))
    assert old.sli == old.slots == new.sli and old.header.to_json() == new.header.to_json()
    assert torch.equal(old.codes, new.codes)
    bad = dict(d, version=2)  # a version-2 header must say "sli"
    with pytest.raises(LabelStoreError, match="'sli' is missing"):
        LabelStore.open(rewrite(store_path, tmp_path / "v2", metadata={VERSION_KEY: "2", HEADER_KEY: json.dumps(bad)}))


@pytest.mark.parametrize("edit,match", [
    (dict(header={"num_images": 7, "images": {"count": 7, "sha256": "ab" * 32}}), "header and arrays disagree"),
    (dict(header={"num_images": 7}), "header says 7 images but its image fingerprint counts 6"),
    (dict(header={"k": 4}), "header and arrays disagree"),
    (dict(header={"num_classes": 70000}), "header and arrays disagree"),
    (dict(header={"code_bits": 16}), "code_bits = 16"),
    (dict(header={"mix": True}), "header and arrays disagree"),
    (dict(header={"temperature": -1}), "temperature"),
    (dict(header={"k": 0}), "'k'"),
    (dict(header={"default_decode": "soft"}), "default_decode"),
    (dict(tensors={"extra": torch.zeros(2)}), "unexpected \\['extra'\\]"),
    (dict(tensors={"flips": torch.zeros(6, 3, dtype=torch.uint8)}), "flips is U8"),
    (dict(header={"num_classes": 3, "k": 3}), "header and arrays disagree"),
    (dict(header={"stats": {"kl_to_teacher": "small"}}), "'stats' 'kl_to_teacher' = 'small' is not a finite"),
    (dict(header={"stats": {"kl_to_teacher": True}}), "'stats'"),
    (dict(header={"stats": [1.0]}), "'stats' must be a mapping"),
    (dict(header={"stats": {"kl": float("nan")}}), "'stats' 'kl' = nan"),
])
def test_header_and_arrays_disagree(store_path, tmp_path, edit, match):
    with pytest.raises(LabelStoreError, match=match):
        LabelStore.open(rewrite(store_path, tmp_path / "x", **edit))


def test_bad_values(store_path, tmp_path):
    s = LabelStore.open(store_path)
    ids = s.topk_ids.clone()
    ids[2, 1, 3] = 10
    with pytest.raises(LabelStoreError, match="class id 10 is out of range for C = 10"):
        LabelStore.open(rewrite(store_path, tmp_path / "a", tensors={"topk_ids": ids}))
    ids = s.topk_ids.clone()
    ids[0, 0, 1] = ids[0, 0, 0]
    with pytest.raises(LabelStoreError, match="same class id twice"):
        LabelStore.open(rewrite(store_path, tmp_path / "b", tensors={"topk_ids": ids}))
    cb = s.codebook.clone()
    cb[7] = float("nan")
    with pytest.raises(LabelStoreError, match="NaN"):
        LabelStore.open(rewrite(store_path, tmp_path / "c", tensors={"codebook": cb}))
    cb = s.codebook.clone()
    cb[0] = -0.5
    with pytest.raises(LabelStoreError, match="negative"):
        LabelStore.open(rewrite(store_path, tmp_path / "d", tensors={"codebook": cb}))
    boxes = s.boxes.clone()
    boxes[1, 1] = torch.tensor([60000, 0, 10000, 100], dtype=torch.int32).to(torch.uint16)
    with pytest.raises(LabelStoreError, match="outside the image"):
        LabelStore.open(rewrite(store_path, tmp_path / "e", tensors={"boxes": boxes}))
    # validate=False skips the value scan, not the structure checks.
    assert LabelStore.open(tmp_path / "e", validate=False).num_images == 6


def test_partial_store_is_refused(store_path, tmp_path):
    p = rewrite(store_path, tmp_path / "p", header={"progress": 3})
    with pytest.raises(LabelStoreError, match="unfinished relabel"):
        LabelStore.open(p)
    assert LabelStore.open(p, allow_partial=True).header.progress == 3


def test_create_refuses_mismatched_arrays(tmp_path):
    h = make_header()
    boxes, flips, ids, codes = make_arrays(h)
    with pytest.raises(LabelStoreError, match="topk_ids must be"):
        LabelStore.create(tmp_path / "x", h, boxes, flips, ids.long(), codes)
    with pytest.raises(LabelStoreError, match="codes must be"):
        LabelStore.create(tmp_path / "x", h, boxes, flips, ids, codes[:, :, :4])
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ atomic writes
def test_killed_write_leaves_no_store(tmp_path):
    """A writer killed mid-write leaves the old file (or none) under the final name."""
    final = tmp_path / "store.safetensors"
    final.write_bytes(b"old contents")
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import safetensors.torch
        def dying_save(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"half a store")
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        safetensors.torch.save_file = dying_save
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_label_store import make_header, make_arrays
        from hald_ext.labels import LabelStore
        h = make_header()
        LabelStore.create({str(final)!r}, h, *make_arrays(h))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    assert final.read_bytes() == b"old contents"
    h = make_header()
    LabelStore.create(final, h, *make_arrays(h))  # a later write succeeds over the leftovers
    assert LabelStore.open(final).num_images == 6


# ------------------------------------------------------------------ fuzzing the reader
_BASE = {}


def _base_bytes():
    if not _BASE:
        import tempfile

        h = make_header(N=3, S=2, C=12, k=3)
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "s")
            LabelStore.create(p, h, *make_arrays(h))
            _BASE["data"] = open(p, "rb").read()
            _BASE["header_len"] = struct.unpack("<Q", _BASE["data"][:8])[0]
    return _BASE["data"], _BASE["header_len"]


@st.composite
def corruptions(draw):
    data, n = _base_bytes()
    data = bytearray(data)
    kind = draw(st.sampled_from(["truncate", "flip_header", "flip_any", "splice", "length"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "length":
        data[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, 2 * n), st.integers(0, 2**64 - 1))))
        return bytes(data)
    if kind == "splice":  # replace a header span with arbitrary bytes (digits, quotes, braces, junk)
        lo = draw(st.integers(8, 8 + n - 1))
        repl = draw(st.binary(min_size=0, max_size=12) | st.text("0123456789-\"{}[],:e", max_size=12).map(str.encode))
        data[lo:lo + len(repl)] = repl
        return bytes(data[: len(data)])
    hi = 8 + n if kind == "flip_header" else len(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, hi - 1))
        data[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(data)


@settings(max_examples=2500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(blob=corruptions())
def test_fuzz_reader(tmp_path, blob):
    """Every corrupted file opens as a valid store or raises LabelStoreError: no other exception, no
    crash, no hang, and no allocation beyond the file (tensors are memory maps of checked spans)."""
    p = tmp_path / "fuzz.safetensors"
    p.write_bytes(blob)
    try:
        s = LabelStore.open(p)
    except LabelStoreError:
        return
    # What opens must be usable end to end.
    assert s.nbytes == len(blob)
    ids, codes = s.labels(torch.arange(s.num_images), torch.zeros(s.num_images, dtype=torch.long))
    if s.num_images:
        assert int(ids.long().max()) < s.num_classes
        assert float(s.codebook[codes.long()].max()) <= 1


# ---------------------------------------------------------------------------------------------------
# hald::label_store_check (the value checks LabelStore.open runs) against its reference.

def _random_store_arrays(g, rows, k, C, id_dtype, mix):
    ids = torch.stack([torch.randperm(C, generator=g)[:k] for _ in range(rows)]).to(id_dtype)
    hw = torch.randint(1, 65536, (rows, 2), generator=g)
    yx = (torch.rand(rows, 2, generator=g) * (65536 - hw)).long()
    boxes = torch.cat([yx, hw], 1).to(torch.int32).to(torch.uint16)
    if not mix:
        return ids, boxes, None, None, None
    partner = torch.randint(-1, rows, (rows,), generator=g, dtype=torch.int32)
    lam = torch.rand(rows, generator=g)
    mhw = torch.randint(0, 65536, (rows, 2), generator=g)
    myx = (torch.rand(rows, 2, generator=g) * (65536 - mhw)).long()
    return ids, boxes, partner, lam, torch.cat([myx, mhw], 1).to(torch.int32).to(torch.uint16)


@pytest.mark.parametrize("seed", range(40))
def test_label_store_check_matches_its_reference(seed):
    from hald_ext.reference import label_store_check_reference

    g = torch.Generator().manual_seed(seed)
    rows = int(torch.randint(1, 300, (1,), generator=g))
    k = [1, 2, 5, 7, 10, 12][seed % 6]
    C, id_dtype = (40, torch.uint16) if seed % 2 else (70000, torch.int32)
    mix = seed % 3 != 0
    ids, boxes, partner, lam, mboxes = _random_store_arrays(g, rows, k, C, id_dtype, mix)
    for _ in range(seed % 4):  # 0 to 3 corruptions of random kinds at random rows
        r = int(torch.randint(0, rows, (1,), generator=g))
        kind = int(torch.randint(0, 8, (1,), generator=g))
        if kind == 0:
            ids[r, -1] = C if id_dtype == torch.uint16 else -3
        elif kind == 1 and k > 1:
            ids[r, 0] = ids[r, k - 1]
        elif kind == 2:
            boxes[r, 0], boxes[r, 2] = 40000, 30000
        elif kind == 3:
            boxes[r, 3] = 0
        elif kind == 4 and mix:
            partner[r] = rows + 5
        elif kind == 5 and mix:
            lam[r] = float("nan") if r % 2 else 1.5
        elif kind == 6 and mix:
            mboxes[r, 1], mboxes[r, 3] = 65535, 2
        elif kind == 7 and mix:
            mboxes[r, 2] = 0  # an empty CutMix box is allowed
    args = (ids, C, boxes, partner, rows, lam, mboxes)
    assert torch.ops.hald.label_store_check.default(*args) == label_store_check_reference(*args)


def test_label_store_check_refuses_bad_arguments():
    ids, boxes = torch.zeros(3, 2, dtype=torch.int64), torch.full((3, 4), 10, dtype=torch.uint16)
    with pytest.raises(RuntimeError, match="topk_ids must be uint16 or int32"):
        torch.ops.hald.label_store_check.default(ids, 10, boxes, None, 3, None, None)
    with pytest.raises(RuntimeError, match=r"boxes must be uint16 \[rows, 4\]"):
        torch.ops.hald.label_store_check.default(None, 10, boxes.view(-1), None, 3, None, None)
    with pytest.raises(RuntimeError, match="mix_partner must be int32"):
        torch.ops.hald.label_store_check.default(None, 10, boxes, torch.zeros(3), 3, None, None)
