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


def take(t: torch.Tensor, *index) -> torch.Tensor:
    """t[index], for uint16 tensors too: torch's CUDA indexing has no uint16 kernel ("index_cuda" not
    implemented for 'UInt16'), so a uint16 tensor is indexed through its int16 view (same bits)."""
    if t.dtype == torch.uint16:
        return t.view(torch.int16)[index].view(torch.uint16)
    return t[index]
