"""hald_ext: fused kernels, a compact soft-label store and a trainer for HALD (Soft -> Hard -> Soft)
soft-label distillation.

    import hald_ext
    hald_ext.build_info()            # which backends were compiled
    loss = hald_ext.ops.soft_hard_loss(logits, topk_ids, topk_values, hard_target, temperature=20)
"""
from hald_ext import functional, ops
from hald_ext._ext import build_info
from hald_ext.loss import DistillationLoss, KLDivLoss, SoftHardLoss

__all__ = ["build_info", "ops", "functional", "DistillationLoss", "KLDivLoss", "SoftHardLoss"]
__version__ = "0.1.0"
