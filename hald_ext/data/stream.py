"""Streaming from disk: the image source for a folder that does not fit the resident budget.

`FileImages` answers `batch(image_ids) -> ImageBatch` as the resident cache does, decoding only the
distinct images a batch uses (each at its true size, packed one after another, no padding), so memory is
bounded by the batch and the prefetch depth, never by the number of files.

Prefetch: the caller knows its batches ahead (the trainer draws an epoch's order first, relabel has
its batch plan), hands them over with `prefetch(plan)`, and then asks for them in that order; decoding
runs ahead of the step on one of two backends:
  * "dali": a DALI pipeline, `fn.external_source` feeding the planned files' bytes in plan order (so the
    order is ours, not a reader's) to `fn.decoders.image` -- `mixed` on a GPU, where the uint8 batch
    is decoded on the device and handed to crop_and_lookup with no host copy; CPU threads otherwise;
  * "torch": DataLoader worker processes decode planned batches (torchvision's decoders) into pinned
    memory, `prefetch_factor` batches each ahead.
A batch asked for outside the plan (or with no plan) is decoded on the spot. Both backends give the
pixels the resident cache holds (one decode convention, hald_ext.data.folder), so crops and labels do
not depend on the source.
"""
from __future__ import annotations

import collections
import os
import warnings

import numpy as np
import torch

from hald_ext.data import decode
from hald_ext.data.batch import ImageBatch, all_equal, pack_images, packed_offsets, resident_nbytes, size_bound
from hald_ext.data.cache import ResidentImageCache, StreamingImages, device_budget
from hald_ext.data.dali import _pipeline_tail
from hald_ext.data.decode import dali_input, decode_file, find_undecodable
from hald_ext.data.files import ImageFiles

STREAM_BACKENDS = ("dali", "torch")


BACKENDS = ("auto", "dali", "torch")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def loader_backend(prefer: str = "auto") -> str:
    """'dali' or 'torch': what `make_loader(backend=prefer)` will use here."""
    if prefer not in BACKENDS:
        raise ValueError(f"backend (--loader) must be one of {BACKENDS}, got {prefer!r}")
    if prefer == "torch":
        return "torch"
    if dali_available():
        return "dali"
    if prefer == "dali":
        raise ImportError("backend='dali' was asked for but nvidia.dali (with its PyTorch plugin) is not installed")
    return "torch"


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _decode_batch(files: ImageFiles, ids: np.ndarray) -> tuple:
    """(list of HWC uint8 arrays, int64 ids) of the files `ids` (one batch), each at its true size: a
    worker hands over only the pixels, not a padded batch (one large image would make a padded batch
    of ImageNet files tens of times larger than its pixels, and all of it would cross to the main
    process)."""
    return [decode_file(files.path(i)) for i in ids.tolist()], torch.from_numpy(ids)


def _packed(images: list, buffers: _PackedBuffers | None = None) -> tuple:
    """(uint8 [total] holding `images` one after another, int64 [M] byte offsets, int32 [M, 2] sizes):
    a packed batch (crop_and_lookup's `image_offsets` layout), so a batch costs its pixels whatever its
    largest image -- padded to its largest, a batch of 64 ImageNet files with one 2000 x 2000 image
    took 768 MB for 50 MB of pixels. The batch goes into one of `buffers` when given, else fresh memory."""
    return pack_images(images, None if buffers is None else buffers.take)


class _PackedBuffers:
    """A few host buffers that packed batches take in turn. A fresh buffer costs a page fault for each of
    its pages, which on a CPU took about as long as decoding the batch; reused buffers are already
    mapped, and a packed batch has no padding, so a buffer is the size of an ordinary batch's pixels
    (grown by a quarter when a larger batch comes). A batch stays valid until `count` more are taken."""

    def __init__(self, count: int = 3):
        self.storages: list = [None] * count
        self.next = 0

    def take(self, nbytes: int) -> torch.Tensor:
        i, self.next = self.next, (self.next + 1) % len(self.storages)
        storage = self.storages[i]
        if storage is None or storage.numel() < nbytes:
            storage = self.storages[i] = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8)
        return storage[:nbytes]


class _PlanDataset(torch.utils.data.Dataset):
    """Item i: the decoded distinct images of planned batch i (for DataLoader workers)."""

    def __init__(self, files: ImageFiles, plan: list):
        self.files, self.plan = files, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int):
        return _decode_batch(self.files, self.plan[i])


class _DaliFeed:
    """external_source's batches: the encoded bytes of each planned batch's files, in plan order."""

    def __init__(self, files: ImageFiles):
        self.files, self.plan, self.pos = files, [], 0

    def __iter__(self):
        self.pos = 0
        return self

    def __next__(self):
        if self.pos >= len(self.plan):
            raise StopIteration
        ids = self.plan[self.pos]
        self.pos += 1
        return [dali_input(self.files.path(i)) for i in ids.tolist()], [np.array([i], dtype=np.int64) for i in ids]


class _DaliDecoder:
    """A DALI pipeline decoding planned batches (see the module docstring); rebuilt when a plan holds a
    batch larger than the one it was built for. On a GPU the batch is padded on the device (the DALI
    PyTorch iterator hands it over without a host copy); on the CPU the decoded images are handed over
    at their true sizes and packed like the torch workers' (a batch padded to its largest ImageNet
    image is tens of times its pixels)."""

    def __init__(self, files: ImageFiles, device: torch.device, num_threads: int):
        self.files, self.device, self.num_threads = files, device, num_threads
        self.on_gpu = device.type == "cuda"
        self.feed = _DaliFeed(files)
        self.pipe, self.iterator, self.max_batch = None, None, 0

    def _build(self, max_batch: int) -> None:
        from nvidia.dali import fn, pipeline_def, types


        on_gpu = self.on_gpu
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if on_gpu else None
        feed = self.feed

        @pipeline_def(batch_size=max_batch, num_threads=self.num_threads, device_id=device_id, seed=0,
                      prefetch_queue_depth=2)
        def pipe():
            encoded, ids = fn.external_source(source=feed, num_outputs=2, batch=True, cycle="raise",
                                              dtype=[types.UINT8, types.INT64])
            images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", **decode.DALI_DECODER_KW)
            if on_gpu:
                return _pipeline_tail(fn, types, images, ids, on_gpu)
            return images, ids

        self.pipe = pipe()
        self.pipe.build()
        if on_gpu:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

            self.iterator = DALIGenericIterator([self.pipe], ["images", "sizes", "ids"],
                                                last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)
        self.max_batch = max_batch

    def start(self, plan: list) -> None:
        need = max((len(ids) for ids in plan), default=1)
        self.feed.plan = plan
        if self.pipe is None or need > self.max_batch:
            self._build(max(need, self.max_batch))  # the first batches start decoding now
        elif self.on_gpu:
            self.iterator.reset()
        else:
            self.pipe.reset()

    def _outputs(self):
        if self.on_gpu:
            for out in self.iterator:
                d = out[0]
                yield d["images"], d["sizes"][:, :2].to(torch.int32), d["ids"].reshape(-1).to(torch.int64)
            return
        for _ in range(len(self.feed.plan)):
            images, ids = self.pipe.run()
            # views of DALI's output (no copy): batch() copies them into the packed batch before
            # the next run() reuses DALI's buffers
            yield ([np.asarray(images[i]) for i in range(len(images))],
                   torch.from_numpy(np.concatenate([np.array(ids[i]) for i in range(len(ids))]).astype(np.int64)))

    def __iter__(self):
        done = 0
        try:
            for got in self._outputs():
                done += 1
                yield got
        except RuntimeError as e:
            # DALI names its operator, not always the file: find the file among the batches in flight.
            bad = find_undecodable(self.files.path(i) for ids in self.feed.plan[done:self.feed.pos] for i in ids)
            if bad is None:
                raise
            raise ValueError(f"{bad}: cannot decode this image file (corrupt or not an image); DALI said: "
                             f"{str(e).splitlines()[0] if str(e) else e!r}") from None


class FileImages:
    """The streaming image source of an ImageFiles (see the module docstring). `labels` (all of them)
    live on `device`; `memory()` reports what the source holds. With `reuse_buffers` (the default) a
    batch's host images live in buffers reused three batches later (as DALI's iterators reuse theirs):
    use a batch -- crop it, or copy it -- before taking three more."""

    resident = False

    def __init__(self, files: ImageFiles, device="cpu", backend: str = "torch", workers: int | None = None,
                 prefetch_factor: int = 2, reuse_buffers: bool = True):
        if backend not in STREAM_BACKENDS:
            raise ValueError(f"streaming backend must be one of {STREAM_BACKENDS}, got {backend!r}")
        self.files = files
        self.device = torch.device(device)
        self.decoder = backend  # "dali" or "torch"
        self.workers = default_workers() if workers is None else int(workers)
        self.prefetch_factor = prefetch_factor
        self.labels = torch.as_tensor(files.labels, dtype=torch.int64).to(self.device)
        self._planned: collections.deque = collections.deque()
        self._it = None
        self._dali = None
        self._warned = False
        self._buffers = _PackedBuffers() if reuse_buffers else None

    def __len__(self) -> int:
        return len(self.files)

    # ------------------------------------------------------------------ prefetch
    def prefetch(self, plan) -> None:
        """Start decoding the batches `plan` (1-D int64 id tensors, in the order `batch` will be asked
        for them); replaces a previous plan."""
        plan = [torch.as_tensor(ids).reshape(-1).cpu().to(torch.int64) for ids in plan]
        unique = [np.unique(ids.numpy()) for ids in plan]
        self._planned = collections.deque(plan)
        if not plan:
            self._it = None
            return
        if self.decoder == "dali":
            if self._dali is None:
                self._dali = _DaliDecoder(self.files, self.device, max(1, self.workers))
            self._dali.start(unique)
            self._it = iter(self._dali)
        else:
            w = self.workers
            loader = torch.utils.data.DataLoader(
                _PlanDataset(self.files, unique), batch_size=None, shuffle=False, num_workers=w,
                prefetch_factor=self.prefetch_factor if w else None, pin_memory=False,  # pinned once packed
                persistent_workers=False)
            self._it = iter(loader)

    def _next_planned(self, image_ids: torch.Tensor):
        """The next prefetched batch when `image_ids` are the next planned ids (checked when they are on
        the host: on a GPU reading them would make the host wait), else None (and the plan is dropped)."""
        if self._it is None or not self._planned:
            return None
        want = self._planned.popleft()
        if image_ids.device.type == "cpu" and not torch.equal(image_ids.reshape(-1).to(torch.int64), want):
            if not self._warned:
                warnings.warn("FileImages: a batch other than the planned one was asked for; decoding batches "
                              "on the spot from here on (a plan must list the batches in the order they are used)",
                              stacklevel=3)
                self._warned = True
            self._it, self._planned = None, collections.deque()
            return None
        try:
            return next(self._it)
        except StopIteration:
            self._it = None
            return None

    # ------------------------------------------------------------------ batches
    def batch(self, image_ids: torch.Tensor) -> ImageBatch:
        got = self._next_planned(image_ids)
        if got is None:
            ids = np.unique(image_ids.reshape(-1).cpu().numpy().astype(np.int64))
            got = _decode_batch(self.files, ids)
        offsets = bound = None
        if len(got) == 2:  # decoded arrays (torch workers, DALI on the CPU, or on the spot): packed here
            images, offsets, sizes = _packed(got[0], self._buffers)
            bound = size_bound(sizes)
            unique = got[1]
            if self.device.type == "cuda":
                images, offsets, sizes = images.pin_memory(), offsets.pin_memory(), sizes.pin_memory()
            offsets = offsets.to(self.device, non_blocking=self.device.type == "cuda")
        else:  # DALI on a GPU: a padded batch, already on the device
            images, sizes, unique = got
        dev = self.device
        nb = dev.type == "cuda"
        images = images.to(dev, non_blocking=nb)
        sizes = sizes.to(dev, non_blocking=nb)
        unique = unique.to(dev, non_blocking=nb)
        ids = image_ids.reshape(-1).to(dev, non_blocking=nb).contiguous()
        local = torch.searchsorted(unique, ids)  # rows of this batch's distinct images
        return ImageBatch(images, sizes, local, ids, image_offsets=offsets, max_image_size=bound)

    def memory(self) -> dict:
        return {"kind": "streaming", "backend": self.decoder, "workers": self.workers, "device": str(self.device),
                "images": len(self), "bytes": 0}


def parse_bytes(value) -> int | None:
    """A memory budget given as bytes or with a unit ("512M", "2G", "0"); None stays None."""
    if value is None or isinstance(value, int):
        return value
    s = str(value).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        n = float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s)
    except ValueError:
        raise ValueError(f"a memory budget must be a number of bytes or end in K, M, G or T, got {value!r}") from None
    if n < 0:
        raise ValueError(f"a memory budget must be >= 0, got {value!r}")
    return int(n)


def image_source(images, device="cpu", max_bytes=None, loader: str = "auto", workers: int | None = None):
    """The image source of a set: a ResidentImageCache when its images fit in `max_bytes` (their
    pixels: images of different sizes are packed, not padded to the largest)
    (bytes, or "512M" / "2G"; default: half the free device memory; 0: always stream), else a streaming
    source -- StreamingImages for decoded arrays (an ImageSet), FileImages for an image folder's files
    (an ImageFiles: decoded per batch by `loader`, DALI or torch workers, with prefetch; a batch is
    valid until three more are taken, see FileImages). A folder's
    resident size comes from its file headers, so nothing is decoded to decide. `memory()` on the result
    reports which, and the bytes taken."""
    device = torch.device(device)
    budget = device_budget(device) if max_bytes is None else parse_bytes(max_bytes)
    if isinstance(images, ImageFiles):
        backend = loader_backend(loader)
        if budget > 0 and resident_nbytes(images.sizes()) <= budget:
            return decode_resident(images, device, backend, workers)
        return FileImages(images, device, backend, workers)
    if resident_nbytes([im.shape[:2] for im in images.images]) <= budget:
        return ResidentImageCache.from_image_set(images, device)
    return StreamingImages(images, device)


def decode_resident(files: ImageFiles, device, backend: str = "torch", workers: int | None = None,
                    batch_size: int = 256):
    """Decode every file once into a ResidentImageCache on `device` (allocated from the header sizes:
    one [N, H, W, 3] tensor when the files are all one size, else packed; the decoded batches stream
    into it, so the peak is the cache plus a few batches)."""
    device = torch.device(device)
    sizes = torch.from_numpy(files.sizes().astype(np.int32).reshape(-1, 2))
    n = len(files)
    packed = not all_equal(sizes.numpy())
    if packed:
        offsets, total = packed_offsets(sizes.numpy())
        images = torch.empty(total, dtype=torch.uint8, device=device)
    else:
        hmax, wmax = (int(v) for v in sizes[0]) if n else (1, 1)
        images = torch.zeros(n, hmax, wmax, 3, dtype=torch.uint8, device=device)
    src = FileImages(files, device, backend, workers)
    plan = list(torch.arange(n).split(batch_size))
    src.prefetch(plan)
    for ids in plan:
        b = src.batch(ids)
        for row, sid in enumerate(b.sample_ids.tolist()):
            h, w = (int(v) for v in b.image_sizes[row])
            if (h, w) != tuple(sizes[sid].tolist()):
                raise ValueError(f"{files.path(sid)}: decodes to {h}x{w} but its header says "
                                 f"{sizes[sid][0]}x{sizes[sid][1]}")
            if packed:
                o = int(offsets[sid])
                images[o:o + h * w * 3] = b.image(row).reshape(-1)
            else:
                images[sid] = b.image(row)
    labels = torch.as_tensor(files.labels, dtype=torch.int64, device=device)
    if not packed:
        return ResidentImageCache(images, None, labels)
    return ResidentImageCache(images, sizes.to(device), labels, torch.from_numpy(offsets).to(device),
                              size_bound(sizes))
