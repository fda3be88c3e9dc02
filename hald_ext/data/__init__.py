"""Image sources (arrays, IDX, image folders), the resident image cache, and the DALI / torch loaders."""
from hald_ext.data.cache import ResidentImageCache, StreamingImages, image_source
from hald_ext.data.loader import (LoadedBatch, dali_available, loader_backend, make_loader,
                                  resident_cache_from_loader, shard_from_env)
from hald_ext.data.sources import (
    FASHION_MNIST_ROOT,
    ImageSet,
    fingerprint,
    load_fashion_mnist,
    load_image_set,
    read_idx,
    write_image_folder,
)

__all__ = ["LoadedBatch", "ResidentImageCache", "StreamingImages", "dali_available", "image_source", "loader_backend",
           "make_loader", "resident_cache_from_loader", "shard_from_env", "FASHION_MNIST_ROOT", "ImageSet", "fingerprint", "load_fashion_mnist", "load_image_set", "read_idx",
           "write_image_folder"]
