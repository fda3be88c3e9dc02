"""The DALI loader: the same batches as hald_ext.data.loader.TorchLoader, decoded by DALI.

  * image folders: `fn.readers.file` (given the file list in hald_ext.data.folder's order, with each
    file's sample id as its "label", so ids survive shuffling and sharding) + `fn.decoders.image`;
  * arrays (an ImageSet): `fn.external_source` feeding the same pipeline tail;
  * on a GPU the decoder runs as `mixed` (nvJPEG: host parse, device decode) and the batch never
    visits the host again: the DALI PyTorch plugin copies DALI's device buffers into torch tensors
    on the same device; without a GPU the pipeline runs CPU-only (`device_id=None`);
  * sharding: `shard_id` / `num_shards` from RANK / WORLD_SIZE, each rank sticking to its block;
    the reader pads the last batch (the iterator drops the padding), so every epoch starts at the
    shard's first sample, as the torch loader's do.
This module imports only the folder walk and the batch type, never the torch loader.
"""
from __future__ import annotations

import numpy as np
import torch

from hald_ext.data.batch import ImageBatch
from hald_ext.data.folder import (NeedsOtherDecoder, check_image_file, decode_file, epoch_order, find_undecodable,
                                 list_image_folder, shard_from_env, shard_range)


def _pipeline_tail(fn, types, images, ids, on_gpu: bool):
    """Common tail: true sizes, zero-padding to the batch's largest image, ids as int64; on a GPU
    all three outputs live on the device, so the hand-off to torch is device-to-device."""
    shapes = images.shape(dtype=types.INT32, device="gpu" if on_gpu else "cpu")
    padded = fn.pad(images, axes=(0, 1), fill_value=0)
    ids = fn.cast(ids, dtype=types.INT64)
    return padded, shapes, ids.gpu() if on_gpu else ids


class _ArrayEpochs:
    """Per-epoch batches of an ImageSet for external_source (raises StopIteration at epoch end)."""

    def __init__(self, images, batch_size, rank, world, shuffle, seed):
        self.images, self.batch_size = images, batch_size
        self.rank, self.world, self.shuffle, self.seed = rank, world, shuffle, seed
        self.epoch = 0

    def __iter__(self):
        self.order = epoch_order(len(self.images), self.rank, self.world, self.shuffle, self.seed, self.epoch)
        self.epoch += 1
        self.pos = 0
        return self

    def __next__(self):
        if self.pos >= len(self.order):
            raise StopIteration
        ids = self.order[self.pos: self.pos + self.batch_size]
        self.pos += self.batch_size
        return [self.images[int(i)] for i in ids], [np.array([i], dtype=np.int64) for i in ids]


class DaliLoader:
    backend = "dali"

    def __init__(self, source, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None,
                 num_threads: int = 2):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from hald_ext.data.sources import ImageSet

        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if on_gpu else None
        self.rank, self.world = shard if shard is not None else shard_from_env()
        self.batch_size = batch_size
        decoder_device = "mixed" if on_gpu else "cpu"
        self.paths = None

        if isinstance(source, ImageSet):
            self.labels, self.classes = np.asarray(source.labels), list(source.classes)
            feed = _ArrayEpochs(source.images, batch_size, self.rank, self.world, shuffle, seed)

            @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
            def pipe():
                images, ids = fn.external_source(source=feed, num_outputs=2, batch=True, cycle="raise",
                                                 layout=["HWC", ""], dtype=[types.UINT8, types.INT64])
                if on_gpu:
                    images = images.gpu()
                return _pipeline_tail(fn, types, images, ids, on_gpu)

            reader_name = None
        else:
            paths, self.labels, self.classes = list_image_folder(source)
            self.paths = paths
            lo, hi = shard_range(len(paths), self.rank, self.world)
            for p in paths[lo:hi]:
                try:
                    check_image_file(p)
                except ValueError as e:
                    decode_file(p)  # raises, naming the file, when the file is really unreadable
                    raise NeedsOtherDecoder(f"{e} (torchvision decodes it; use --loader torch)") from None

            @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
            def pipe():
                encoded, ids = fn.readers.file(files=paths, labels=list(range(len(paths))), random_shuffle=shuffle,
                                               shard_id=self.rank, num_shards=self.world, stick_to_shard=True,
                                               pad_last_batch=True, name="Reader")
                images = fn.decoders.image(encoded, device=decoder_device, output_type=types.RGB)
                return _pipeline_tail(fn, types, images, ids, on_gpu)

            reader_name = "Reader"

        self.pipeline = pipe()
        self.pipeline.build()
        kw = dict(reader_name=reader_name) if reader_name else {}
        self.iterator = DALIGenericIterator([self.pipeline], ["images", "sizes", "ids"],
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True, **kw)

    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        lo, hi = shard_range(self.num_samples(), self.rank, self.world)
        return -(-(hi - lo) // self.batch_size)

    def _batches(self):
        try:
            yield from self.iterator
        except RuntimeError as e:
            # DALI names the failing operator, not always the file: find and name it.
            if self.paths is None:
                raise
            bad = find_undecodable(self.paths)
            if bad is None:
                raise
            raise ValueError(f"{bad}: cannot decode this image file (corrupt or not an image); DALI said: "
                             f"{str(e).splitlines()[0] if str(e) else e!r}") from None

    def __iter__(self):
        for out in self._batches():
            d = out[0]
            sizes = d["sizes"][:, :2].to(self.device, torch.int32)
            ids = d["ids"].reshape(-1).to(self.device, torch.int64)
            yield ImageBatch(d["images"], sizes, torch.arange(len(ids), device=self.device), ids)
