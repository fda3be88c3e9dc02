"""Python entry points of the `torch.ops.hald` operators (one module per op: fake kernels, autograd,
and the documented wrapper)."""
from hald_ext.ops.crop import CropResult, crop_and_lookup
from hald_ext.ops.label_codec import label_decode, label_decode_dense, label_encode
from hald_ext.ops.soft_hard_loss import soft_hard_loss

__all__ = ["CropResult", "crop_and_lookup", "label_decode", "label_decode_dense", "label_encode", "soft_hard_loss"]
