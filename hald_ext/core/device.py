"""Host tensors onto the device without making the host wait."""
from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device`: unchanged when already there; to CUDA from pinned memory with a non-blocking
    copy on the current stream (a pageable host-to-GPU copy blocks the host until the GPU is done;
    torch's caching host allocator keeps the pinned buffer alive until the copy has run)."""
    device = torch.device(device)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
