"""Image sources (arrays, IDX, image folders), the DALI / torch loaders, and the resident image cache.

    folder.py     the folder walk and the rank sharding (below both loaders)
    decode.py     the one decode convention (Pillow's convert("RGB")) and what DALI is fed to match it
    batch.py      ImageBatch, the one batch type, and padding of mixed sizes
    loader.py     make_loader: DALI when installed, torch otherwise
    dali.py       the DALI loader
    sources.py    ImageSet and load_image_set
    files.py      ImageFiles: an image folder as a list of files (opening decodes nothing)
    cache.py      the resident cache, and the streaming source of decoded arrays
    select.py     the IPC selection (random real images per class)
    stream.py     image_source (resident or streaming) and FileImages, streaming a folder from disk
"""
from hald_ext.core.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from hald_ext.data.batch import ImageBatch, LoadedBatch, pad_images
from hald_ext.data.cache import ResidentImageCache, StreamingImages
from hald_ext.data.files import ImageFiles
from hald_ext.data.folder import list_image_folder, shard_from_env, shard_range
from hald_ext.data.loader import dali_available, loader_backend, make_loader, resident_cache_from_loader
from hald_ext.data.select import select_ipc, select_per_class, subset
from hald_ext.data.sources import (
    FASHION_MNIST_ROOT,
    ImageSet,
    check_same_classes,
    fingerprint,
    image_sizes,
    load_fashion_mnist,
    load_image_set,
    open_images,
    read_idx,
    write_image_folder,
)
from hald_ext.data.stream import FileImages, image_source, parse_bytes

__all__ = ["FileImages", "ImageFiles", "image_sizes", "open_images", "parse_bytes", "IMAGENET_MEAN", "IMAGENET_STD", "ImageBatch", "LoadedBatch", "ResidentImageCache", "StreamingImages",
           "check_same_classes", "dali_available", "image_source", "list_image_folder", "loader_backend",
           "make_loader", "normalize", "pad_images", "resident_cache_from_loader", "shard_from_env", "shard_range",
           "FASHION_MNIST_ROOT", "ImageSet", "fingerprint", "load_fashion_mnist", "load_image_set", "read_idx",
           "write_image_folder", "select_ipc", "select_per_class", "subset"]
