"""Python entry points of the `torch.ops.hald` operators (one module per op: fake kernels, autograd,
and the documented wrapper)."""
from hald_ext.ops.crop import CropResult, CutMix, crop_and_lookup, sample_cutmix
from hald_ext.ops.label_codec import label_decode, label_decode_dense, label_encode
from hald_ext.ops.soft_hard_loss import SoftHardSpec, soft_hard_loss, soft_hard_loss_spec

__all__ = ["CropResult", "CutMix", "crop_and_lookup", "label_decode", "label_decode_dense", "label_encode",
           "sample_cutmix", "soft_hard_loss"]
__all__ += ["SoftHardSpec", "soft_hard_loss_spec"]
