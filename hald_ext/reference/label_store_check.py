"""Reference of `hald::label_store_check`: the value checks of a label store's arrays, one obvious
loop per check, returning what the op returns: [code, flat row, offending value] of the first bad row
(code 0: all good). Codes (checked in this order, each over all rows):
  1 class id out of [0, C)   2 class id repeated in a row   3 box outside the image   4 box of zero size
  5 CutMix partner out of [-1, num_images)   6 CutMix lambda not in [0, 1]   7 CutMix box outside the crop
"""
from __future__ import annotations

import math

import torch

BOX_MAX = 65536  # y + h may overshoot 65535 by one code (rounding)


def label_store_check_reference(topk_ids: torch.Tensor | None, num_classes: int, boxes: torch.Tensor,
                                mix_partner: torch.Tensor | None, num_images: int,
                                mix_lambda: torch.Tensor | None, mix_boxes: torch.Tensor | None) -> list:
    if topk_ids is not None:
        for r, row in enumerate(topk_ids.to(torch.int64).tolist()):
            for i, v in enumerate(row):
                if not 0 <= v < num_classes:
                    return [1, r, v]
                if v in row[:i]:
                    return [2, r, v]

    def box_pass(b, allow_empty, outside, empty):
        for r, (y, x, h, w) in enumerate(b.to(torch.int64).reshape(-1, 4).tolist()):
            if y + h > BOX_MAX or x + w > BOX_MAX:
                return [outside, r, max(y + h, x + w)]
            if not allow_empty and (h == 0 or w == 0):
                return [empty, r, 0]
        return None

    bad = box_pass(boxes, False, 3, 4)
    if bad:
        return bad
    if mix_partner is not None:
        for r, p in enumerate(mix_partner.reshape(-1).tolist()):
            if not -1 <= p < num_images:
                return [5, r, p]
    if mix_lambda is not None:
        for r, v in enumerate(mix_lambda.reshape(-1).tolist()):
            if not (math.isfinite(v) and 0 <= v <= 1):
                return [6, r, 0]
    if mix_boxes is not None:
        bad = box_pass(mix_boxes, True, 7, 7)
        if bad:
            return bad
    return [0, 0, 0]
