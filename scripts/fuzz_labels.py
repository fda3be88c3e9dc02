"""Fuzz the label store reader and the foreign-format importers with corrupted files.

    python scripts/fuzz_labels.py                          # 10,000 stores + 1,000 pickles, writes
                                                           # benchmarks/results/fuzz_cpu.json
    python scripts/fuzz_labels.py --stores 300 --pickles 100 --no-write   # a short run

Stores: valid seed stores (top-k 8/16-bit codes with and without a CutMix record, full-width fp16,
full-width 8-bit codes, fp16 top-k) corrupted by bit flips (anywhere / in the header), truncations,
appended bytes, header edits (a header field set to a wrong value or type, or dropped; a tensor
entry's dtype, shape or offsets changed; magic / version changed) and arrays rebuilt with wrong
shapes, dtypes or values. Each is opened with LabelStore.open (values validated) and read.
Foreign pickles: files written as FKD, SRe2L and HALD write them (and HALD's sampler file),
corrupted by bit flips and truncations of the zip, byte edits of the pickle stream inside it, and
structurally wrong objects (wrong lengths, dtypes, shapes, NaN, strings, object arrays, and pickles
whose loading would run a command), each imported with the matching importer.

Each case runs in a worker process under a per-case time limit. Outcomes: "opened" (the file was
still valid), "refused" (LabelStoreError / LabelImportError naming the file), "crash" (any other
exception, an error that does not name the file, or the worker dying) and "hang" (over the time
limit; the worker is killed and restarted). A payload pickle runs `touch <marker>`: the run checks
the marker never appears.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

STORE_KINDS = ("bitflip", "bitflip_header", "truncate", "append", "header_field", "tensor_entry", "magic",
               "array_swap")
PICKLE_KINDS = ("zip_bitflip", "zip_truncate", "pickle_bytes", "wrong_object", "payload")
WEIRD = [-1, 0, 1, 3, 2**31, 2**63, -2**40, 1.5, float("inf"), 1e308, None, "x", "", [], {}, [1, 2], {"a": 1}, True,
         False, "NaN"]


# ---------------------------------------------------------------------------------------- seeds
def make_seed_stores(d: str) -> list:
    from hald_ext.core.boxes import quantize_boxes
    from hald_ext.labels import Header, LabelStore, MixRecord, Quantizer

    g = torch.Generator().manual_seed(0)
    out = []

    def store(name, C, k, q, mix, N=5, S=2):
        h = Header(num_images=N, sli=S, num_classes=C, k=k, temperature=4.0, quantizer=q,
                   images={"count": N, "sha256": "ab" * 32}, crops={"rule": "fuzz"}, seed=1, mix=mix,
                   stats={"kl_to_teacher": 0.1, "kl_uniform": 1.0})
        yx = torch.rand(N, S, 2, generator=g) * 0.5
        boxes = quantize_boxes(torch.cat([yx, torch.rand(N, S, 2, generator=g) * 0.4 + 0.05], -1))
        flips = torch.rand(N, S, generator=g) < 0.5
        p = torch.softmax(torch.randn(N, S, C, generator=g) * 3, -1)
        top = p.sort(-1, descending=True)
        ids = None if k == C else top.indices[..., :k].to(torch.int32).to(torch.uint16)
        values = q.encode(p if k == C else top.values[..., :k])
        m = MixRecord(torch.randint(-1, N, (N, S), generator=g, dtype=torch.int32), boxes.clone(),
                      torch.rand(N, S, generator=g)) if mix else None
        path = os.path.join(d, name + ".safetensors")
        LabelStore.create(path, h, boxes, flips, ids, values, mix=m)
        # safetensors writes its JSON header in hash-map order, which varies from run to run; sorted,
        # the same bit flip hits the same byte of the same file in every run
        with open(path, "rb") as f:
            hdr, body = _split_store(f.read())
        with open(path, "wb") as f:
            f.write(_join_store(dict(sorted(hdr.items())), body))
        out.append(path)

    store("topk8_mix", 10, 3, Quantizer("power", 8), True)
    store("topk16", 300, 4, Quantizer("log", 16), False)
    store("full_fp16_mix", 10, 10, Quantizer("fp16"), True)
    store("full_u8", 12, 12, Quantizer("uniform", 8), False)
    store("topk_fp16", 50, 5, Quantizer("fp16"), False)
    return out


def make_seed_pickles(d: str) -> dict:
    """{kind: (input dir, the file in it to corrupt, importer call)} written by the public writers' calls."""
    from python_tests.test_label_importers import write_fkd, write_hald, write_sre2l

    seeds = {}
    fkd = os.path.join(d, "fkd")
    write_fkd(fkd, ["/d/train/c0/a.png", "/d/train/c1/b.png"], [0, 1], 10)
    seeds["fkd"] = (fkd, os.path.join(fkd, "d", "train", "c0", "a.tar"))
    sre2l = os.path.join(d, "sre2l")
    write_sre2l(sre2l, [0, 1, 2, 3, 4, 0], 5, epochs=1, batch_size=4)
    seeds["sre2l"] = (sre2l, os.path.join(sre2l, "epoch_0", "batch_0.tar"))
    hald = os.path.join(d, "hald")
    write_hald(hald, [0, 1, 2, 3, 4, 0], 5, slc=2, ipc=1, batch_size=4)
    seeds["hald"] = (hald, os.path.join(hald, "epoch_0.tar"))
    seeds["sampler"] = (hald, os.path.join(hald, "sampler_indices_dict.pt"))
    return seeds


def import_call(kind: str, root: str, out: str):
    from hald_ext.labels.importers import import_batches, import_fkd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "fkd":
            return import_fkd(root, out, 10)
        # The imports refuse files without their temperature or sampler order before reading any:
        # give both, so the fuzzed files reach the loader.
        if kind == "sre2l":
            return import_batches(root, out, 5, values="logits", temperature=1.0, crop_size=32, file_order=True)
        return import_batches(root, out, 5, values="probs", temperature=20.0, crop_size=32, file_order=True,
                              flavor="hald")


# ---------------------------------------------------------------------------------------- store mutations
def _split_store(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join_store(hdr: dict, body: bytes) -> bytes:
    raw = json.dumps(hdr, sort_keys=True).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _flip_bits(data: bytes, rng: random.Random, lo: int, hi: int) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(lo, max(hi, lo + 1))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def mutate_store(data: bytes, rng: random.Random, kind: str) -> bytes:
    if kind == "bitflip":
        return _flip_bits(data, rng, 0, len(data))
    if kind == "bitflip_header":
        (n,) = struct.unpack("<Q", data[:8])
        return _flip_bits(data, rng, 0, 8 + n)
    if kind == "truncate":
        return data[:rng.randrange(len(data))]
    if kind == "append":
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    hdr, body = _split_store(data)
    meta = hdr["__metadata__"]
    if kind == "header_field":
        h = json.loads(meta["hald.header"])
        key = rng.choice(sorted(h))
        if rng.random() < 0.15:
            del h[key]
        elif isinstance(h[key], dict) and h[key] and rng.random() < 0.5:
            sub = rng.choice(sorted(h[key]))
            h[key][sub] = rng.choice(WEIRD)
        else:
            h[key] = rng.choice(WEIRD)
        meta["hald.header"] = json.dumps(h)
    elif kind == "tensor_entry":
        name = rng.choice([k for k in hdr if k != "__metadata__"])
        e = hdr[name]
        what = rng.randrange(4)
        if what == 0:
            e["dtype"] = rng.choice(["U8", "U16", "I32", "F16", "F32", "BOOL", "F64", "I64", "XX", 3])
        elif what == 1:
            e["shape"] = [rng.choice([0, 1, 2, 3, 5, 7, 2**40, -1, "a"]) for _ in range(rng.randint(0, 4))]
        elif what == 2:
            lo, hi = e["data_offsets"]
            e["data_offsets"] = [lo + rng.choice([-8, -1, 1, 8]), hi + rng.choice([0, -8, 8, 2**40])]
        else:
            hdr[name + rng.choice(["", "_x"])] = hdr.pop(name) if rng.random() < 0.5 else e
    else:  # magic
        key = rng.choice(["hald.format", "hald.version", "hald.header"])
        if rng.random() < 0.3:
            meta.pop(key, None)
        else:
            meta[key] = rng.choice(["", "2", "1", "hald-label-store", "{}", "[]", "{\"version\": 1}", "x" * 50])
    return _join_store(hdr, body)


def array_swap(path: str, out: str, rng: random.Random) -> None:
    """Rebuild the store with one array of a wrong shape, dtype or value (bypassing create's checks)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    name = rng.choice(sorted(t))
    x = t[name]
    what = rng.randrange(5)
    if what == 0:  # dtype
        t[name] = x.to(rng.choice([torch.uint8, torch.int32, torch.float32, torch.float16, torch.bool, torch.int64]))
    elif what == 1:  # shape
        t[name] = x.reshape(-1)[: max(x.numel() - rng.randint(1, 3), 0)] if rng.random() < 0.5 else \
            torch.cat([x.reshape(-1), x.reshape(-1)[:1]])
    elif what == 2 and x.is_floating_point():
        y = x.clone().reshape(-1)
        y[rng.randrange(y.numel())] = rng.choice([float("nan"), float("inf"), -1.0, 2.0, 70000.0])
        t[name] = y.view_as(x)
    elif x.numel():
        y = x.clone().reshape(-1)
        info = torch.iinfo(y.dtype) if not (y.is_floating_point() or y.dtype == torch.bool) else None
        if info is not None:
            y[rng.randrange(y.numel())] = rng.choice([info.max, info.min, 0, 65535 if info.max >= 65535 else 1])
        t[name] = y.view_as(x)
    else:
        del t[name]
    save_file({k: v.contiguous() for k, v in t.items()}, out, metadata=meta)


# ---------------------------------------------------------------------------------------- pickle mutations
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rezip(data: bytes, edit) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as out:
        for i in src.infolist():
            body = src.read(i.filename)
            out.writestr(i.filename, edit(body) if i.filename.endswith("data.pkl") else body)
    return buf.getvalue()


def wrong_object(kind: str, rng: random.Random, marker: str):
    """A structurally wrong object in place of what the writer saves."""
    arr = lambda *s, dt=np.float32: np.asarray(np.random.default_rng(rng.randrange(1 << 30)).random(s), dt)  # noqa: E731
    junk = [None, "text", b"bytes", 3, 2.5, np.int64(7), np.float16(0.5), [], {}, (1, 2), arr(2), arr(3, 4),
            arr(0, 4), np.array(["a", "b"]), arr(2, dt=np.complex64), arr(3, 2, 5), torch.zeros(0), torch.ones(2, 2),
            arr(2, 2, dt=np.int64), np.full((1, 4), np.nan, np.float32), {1, 2}, Payload(marker)]
    if kind == "fkd":
        base = [arr(3, 4), np.zeros(3, bool), arr(3, 2, 5)]
    elif kind == "sampler":
        return rng.choice([{"0": rng.choice(junk)}, {"x": list(range(6))}, {"0": list(range(5))},
                           {"0": [5, 4, 3, 2, 1, 1]}, rng.choice(junk), {"0": np.arange(6), "1": list(range(6))},
                           {"0": [0.5] * 6}, {"-1": list(range(6))}])
    else:
        base = [torch.rand(4, 4) * 0.5, torch.zeros(4, dtype=torch.bool), torch.randperm(4), 0.5,
                [np.int64(1), np.int64(2), np.int64(9), np.int64(12)], torch.softmax(torch.randn(4, 5), 1).half()]
    obj = list(base)
    what = rng.randrange(4)
    if what == 0:
        obj[rng.randrange(len(obj))] = rng.choice(junk)
    elif what == 1:
        obj = obj[:rng.randrange(len(obj))] if rng.random() < 0.5 else obj + [rng.choice(junk)]
    elif what == 2:
        obj = rng.choice(junk)
    else:
        obj[rng.randrange(len(obj))] = rng.choice(junk)
        obj[rng.randrange(len(obj))] = rng.choice(junk)
    return [obj] if kind == "hald" and rng.random() < 0.8 else obj


def mutate_pickle(data: bytes, kind: str, what: str, rng: random.Random, marker: str) -> bytes:
    if what == "zip_bitflip":
        return _flip_bits(data, rng, 0, len(data))
    if what == "zip_truncate":
        return data[:rng.randrange(len(data))]
    if what == "pickle_bytes":
        def edit(p: bytes) -> bytes:
            b = bytearray(p)
            op = rng.randrange(3)
            if op == 0:
                return bytes(_flip_bits(bytes(b), rng, 0, len(b)))
            if op == 1:
                return bytes(b[:rng.randrange(len(b))])
            i = rng.randrange(len(b))
            return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))) + b[i:])
        return _rezip(data, edit)
    buf = io.BytesIO()
    if what == "payload":
        obj = Payload(marker)
        wrap = rng.randrange(3)
        obj = [obj] if wrap == 0 else {"0": obj} if wrap == 1 else [np.zeros(2), [None, obj]]
    else:
        obj = wrong_object(kind, rng, marker)
    torch.save(obj, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------- worker
def _classify(fn, named: tuple) -> tuple:
    from hald_ext.labels.format import LabelStoreError
    from hald_ext.labels.importers import LabelImportError

    try:
        fn()
        return "opened", ""
    except (LabelStoreError, LabelImportError) as e:
        msg = str(e)
        if any(n in msg for n in named):
            return "refused", ""
        return "crash", f"error does not name the file: {msg[:300]}"
    except Exception as e:  # noqa: BLE001 - any other exception is what the fuzzer looks for
        return "crash", f"{e.__class__.__name__}: {str(e)[:300]} | " + traceback.format_exc(limit=3)[-400:]


def _worker(conn, seed: int, workdir: str, marker: str) -> None:
    torch.set_num_threads(1)
    from hald_ext.labels.store import LabelStore

    seed_dir = os.path.join(workdir, f"seeds-{os.getpid()}")
    os.makedirs(seed_dir)
    stores = [open(p, "rb").read() for p in make_seed_stores(seed_dir)]
    pickles = make_seed_pickles(seed_dir)
    pickle_kinds = sorted(pickles)
    case_dir = os.path.join(workdir, f"case-{os.getpid()}")
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg is None:
            return
        family, index = msg
        rng = random.Random(seed * 1_000_003 + index * 2 + (family == "pickle"))
        shutil.rmtree(case_dir, ignore_errors=True)
        os.makedirs(case_dir)
        if family == "store":
            kind = STORE_KINDS[index % len(STORE_KINDS)]
            src = rng.randrange(len(stores))
            path = os.path.join(case_dir, "s.safetensors")
            if kind == "array_swap":
                with open(os.path.join(case_dir, "src.safetensors"), "wb") as f:
                    f.write(stores[src])
                array_swap(os.path.join(case_dir, "src.safetensors"), path, rng)
            else:
                with open(path, "wb") as f:
                    f.write(mutate_store(stores[src], rng, kind))

            def run_case():
                s = LabelStore.open(path)
                n = s.num_images
                s.labels(list(range(n)), [0] * n)
                s.crops(list(range(n)), [s.sli - 1] * n)
                list(s.iter_slots())
                s.mix
            outcome, detail = _classify(run_case, (path,))
        else:
            kind = pickle_kinds[index % len(pickle_kinds)]
            what = PICKLE_KINDS[(index // len(pickle_kinds)) % len(PICKLE_KINDS)]
            root, target = pickles[kind]
            case_root = os.path.join(case_dir, "in")
            shutil.copytree(root, case_root)
            path = os.path.join(case_root, os.path.relpath(target, root))
            with open(target, "rb") as f:
                data = f.read()
            with open(path, "wb") as f:
                f.write(mutate_pickle(data, kind, what, rng, marker))
            out = os.path.join(case_dir, "out.safetensors")
            outcome, detail = _classify(lambda: import_call(kind, case_root, out), (path, out, case_root))
            kind = f"{kind}/{what}"
        conn.send((outcome, kind, detail))


class _Runner:
    """One worker process; a case that overruns the time limit kills it (a hang) and a new one starts."""

    def __init__(self, seed, workdir, marker, timeout):
        self.args, self.timeout, self.proc = (seed, workdir, marker), timeout, None

    def _start(self):
        ctx = mp.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def run(self, family, index):
        if self.proc is None or not self.proc.is_alive():
            self._start()
        self.conn.send((family, index))
        try:
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            outcome = ("hang", "?", f"over {self.timeout} s")
        except EOFError:
            outcome = ("crash", "?", f"worker died (exit code {self.proc.exitcode})")
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return outcome

    def close(self):
        if self.proc is not None:
            self.conn.send(None)
            self.proc.join(10)


def run(stores: int, pickles: int, seed: int = 0, timeout: float = 20.0, progress: bool = False) -> dict:
    workdir = tempfile.mkdtemp(prefix="hald-fuzz-")
    marker = os.path.join(workdir, "PAYLOAD_RAN")
    runner = _Runner(seed, workdir, marker, timeout)
    result = {}
    t0 = time.perf_counter()
    try:
        for family, count in (("store", stores), ("pickle", pickles)):
            counts = {"cases": 0, "opened": 0, "refused": 0, "crash": 0, "hang": 0}
            by_kind, examples = {}, []
            for i in range(count):
                outcome, kind, detail = runner.run(family, i)
                counts["cases"] += 1
                counts[outcome] += 1
                k = by_kind.setdefault(kind, {"cases": 0, "opened": 0, "refused": 0, "crash": 0, "hang": 0})
                k["cases"] += 1
                k[outcome] += 1
                if outcome in ("crash", "hang") and len(examples) < 20:
                    examples.append({"case": i, "kind": kind, "outcome": outcome, "detail": detail})
                if progress and (i + 1) % 1000 == 0:
                    print(f"  {family}: {i + 1}/{count} ({time.perf_counter() - t0:.0f} s) {counts}", flush=True)
            result[family + "s"] = {**counts, "by_kind": by_kind, "failures": examples}
    finally:
        runner.close()
        payload_ran = os.path.exists(marker)
        shutil.rmtree(workdir, ignore_errors=True)
    result["payload_ran"] = payload_ran
    result["seconds"] = time.perf_counter() - t0
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stores", type=int, default=10_000)
    ap.add_argument("--pickles", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=20.0, help="per-case time limit in seconds (a hang)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = run(args.stores, args.pickles, args.seed, args.timeout, progress=True)
    for fam in ("stores", "pickles"):
        r = res[fam]
        print(f"{fam}: {r['cases']} cases, {r['opened']} still valid, {r['refused']} refused with the file named, "
              f"{r['crash']} crashes, {r['hang']} hangs")
        for f in r["failures"][:5]:
            print("   ", f)
    print(f"payload ran: {res['payload_ran']}; {res['seconds']:.0f} s")
    if not args.no_write:
        sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
        import hald_ext
        from common import machine, write_results

        path = write_results("fuzz_cpu.json", {
            "benchmark": "fuzz_labels", "machine": machine(), "build": hald_ext.build_info(),
            "rows": [{"family": fam, **{k: v for k, v in res[fam].items() if k != "by_kind"}}
                     for fam in ("stores", "pickles")],
            "by_kind": {fam: res[fam]["by_kind"] for fam in ("stores", "pickles")},
            "seed": args.seed, "case_timeout_s": args.timeout, "payload_ran": res["payload_ran"],
            "seconds": res["seconds"]})
        print("wrote", path)
    bad = sum(res[f]["crash"] + res[f]["hang"] for f in ("stores", "pickles")) + res["payload_ran"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
