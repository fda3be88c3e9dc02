"""Image sources (arrays, IDX, image folders) and, in later modules, the DALI / torch loaders."""
from hald_ext.data.sources import (
    FASHION_MNIST_ROOT,
    ImageSet,
    fingerprint,
    load_fashion_mnist,
    load_image_set,
    read_idx,
    write_image_folder,
)

__all__ = ["FASHION_MNIST_ROOT", "ImageSet", "fingerprint", "load_fashion_mnist", "load_image_set", "read_idx",
           "write_image_folder"]
