"""Image sources (arrays, IDX, image folders), the DALI / torch loaders, and the resident image cache.

    folder.py     the folder walk and the rank sharding (below both loaders)
    batch.py      ImageBatch, the one batch type, and padding of mixed sizes
    normalize.py  the normalisation constants
    loader.py     make_loader: DALI when installed, torch otherwise
    dali.py       the DALI loader
    sources.py    ImageSet and load_image_set
    cache.py      the resident cache / streaming source the trainer crops from
"""
from hald_ext.data.batch import ImageBatch, LoadedBatch, pad_images
from hald_ext.data.cache import ResidentImageCache, StreamingImages, image_source
from hald_ext.data.folder import list_image_folder, shard_from_env, shard_range
from hald_ext.data.loader import dali_available, loader_backend, make_loader, resident_cache_from_loader
from hald_ext.data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from hald_ext.data.sources import (
    FASHION_MNIST_ROOT,
    ImageSet,
    check_same_classes,
    fingerprint,
    load_fashion_mnist,
    load_image_set,
    read_idx,
    write_image_folder,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageBatch", "LoadedBatch", "ResidentImageCache", "StreamingImages",
           "check_same_classes", "dali_available", "image_source", "list_image_folder", "loader_backend",
           "make_loader", "normalize", "pad_images", "resident_cache_from_loader", "shard_from_env", "shard_range",
           "FASHION_MNIST_ROOT", "ImageSet", "fingerprint", "load_fashion_mnist", "load_image_set", "read_idx",
           "write_image_folder"]
