"""DALI over decoded arrays: the same batches as hald_ext.data.loader.TorchLoader, from an ImageSet.

  * `fn.external_source` feeds the arrays of each batch (this rank's shard in `epoch_order`);
  * on a GPU the batch is copied to the device inside the pipeline and never visits the host again;
    without a GPU the pipeline runs CPU-only (`device_id=None`);
  * `_pipeline_tail` (true sizes, zero padding, ids) is shared with the streaming decoder of image
    folders (hald_ext.data.stream), which feeds files' bytes to `fn.decoders.image` in plan order.
"""
from __future__ import annotations

import numpy as np
import torch

from hald_ext.data.batch import ImageBatch
from hald_ext.data.folder import ShardedEpochs, epoch_order
from hald_ext.data.imageset import ImageSet


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


class DaliLoader(ShardedEpochs):
    backend = "dali"

    def __init__(self, source, batch_size: int, *, device="cpu", shuffle=False, seed=0, shard=None,
                 num_threads: int = 2):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy


        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if on_gpu else None
        self.paths = None

        if not isinstance(source, ImageSet):
            raise TypeError("DaliLoader reads decoded arrays (an ImageSet); an image folder streams through "
                            "make_loader's FolderLoader (hald_ext.data.stream.FileImages, DALI decoding)")
        self._init_epochs(source.labels, batch_size, shuffle, seed, shard)
        self.classes = list(source.classes)
        feed = _ArrayEpochs(source.images, batch_size, self.rank, self.world, shuffle, seed)

        @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
        def pipe():
            images, ids = fn.external_source(source=feed, num_outputs=2, batch=True, cycle="raise",
                                             layout=["HWC", ""], dtype=[types.UINT8, types.INT64])
            if on_gpu:
                images = images.gpu()
            return _pipeline_tail(fn, types, images, ids, on_gpu)

        self.pipeline = pipe()
        self.pipeline.build()
        self.iterator = DALIGenericIterator([self.pipeline], ["images", "sizes", "ids"],
                                            last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

    def __iter__(self):
        for out in self.iterator:
            d = out[0]
            sizes = d["sizes"][:, :2].to(self.device, torch.int32)
            ids = d["ids"].reshape(-1).to(self.device, torch.int64)
            yield ImageBatch(d["images"], sizes, torch.arange(len(ids), device=self.device), ids)
