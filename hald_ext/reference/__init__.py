"""Plain-PyTorch references of the fused kernels.

One implementation of each computation, dense and obvious, used by the tests (as the ground truth)
and by the benchmarks (as the eager and torch.compile baselines). Keep them simple, not fast.
"""
from hald_ext.reference.crop import crop_reference, cutmix_lambda_reference, gather_labels_reference
from hald_ext.reference.label_codec import label_decode_dense_reference, label_decode_reference, label_encode_reference
from hald_ext.reference.label_store_check import label_store_check_reference
from hald_ext.reference.soft_hard_loss import decode_dense, dequantize, soft_hard_loss_reference

__all__ = ["crop_reference", "cutmix_lambda_reference", "decode_dense", "dequantize", "gather_labels_reference",
           "label_decode_dense_reference", "label_decode_reference", "label_encode_reference", "label_store_check_reference",
           "soft_hard_loss_reference"]
