"""Scalar quantisers of top-k probabilities: a sorted codebook (what the loss reads) and the decision
thresholds between its entries (what the encoder uses).

Kinds (all map 0 -> code 0 and 1 -> the last code; L = 2^bits levels):
  power    companded: codes (i / (L - 1))^gamma, thresholds at midpoints in the companded domain.
           gamma = 1.5 is the default, chosen by measurement (benchmarks/bench_storage.py, results/storage_cpu.json): it has the
           lowest worst-case added KL over C in {10, 1000, 21843} and T in {1, 20}. Finer steps near 0
           than uniform codes (small probabilities keep their relative precision), and finer
           absolute steps near 1 than log codes: a top-k label's rest mass 1 - sum(p) absorbs every
           entry's absolute error, and for peaked labels over few classes that mass is tiny.
  uniform  codes i / (L - 1) (power with gamma = 1).
  log      code 0 is 0; codes 1..L-1 geometric from `p_min` to 1, thresholds at geometric means:
           equal relative error at every scale; best for flat labels (large C at high T), worst for
           peaked ones (a 2.8 % step near p = 1 at 8 bits).
  fp16     no codes: the values are float16 probabilities, stored as they are (what SRe2L / HALD
           files hold, so an import keeps them bit for bit); no codebook, no thresholds.
"""
from __future__ import annotations

import dataclasses
import math

import torch

KINDS = ("power", "uniform", "log", "fp16")
DEFAULT_GAMMA = 1.5
# Smallest non-zero level of the log quantiser: a stored probability below half of it codes as 0.
DEFAULT_P_MIN = {8: 1e-6, 16: 1e-12}


@dataclasses.dataclass(frozen=True)
class Quantizer:
    kind: str = "power"
    bits: int | None = None  # None -> 8 (16 for fp16)
    p_min: float | None = None  # log only; None -> DEFAULT_P_MIN[bits]
    gamma: float | None = None  # power only; None -> DEFAULT_GAMMA

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"quantizer kind must be one of {KINDS}, got {self.kind!r}")
        if self.bits is None:
            object.__setattr__(self, "bits", 16 if self.kind == "fp16" else 8)
        if self.kind == "fp16" and self.bits != 16:
            raise ValueError(f"the fp16 quantizer stores 16-bit floats, got bits={self.bits!r}")
        if self.bits not in (8, 16):
            raise ValueError(f"code bits must be 8 or 16, got {self.bits!r}")
        if self.kind == "log":
            if self.p_min is None:
                object.__setattr__(self, "p_min", DEFAULT_P_MIN[self.bits])
            if not (isinstance(self.p_min, (int, float)) and 0 < self.p_min < 1 and math.isfinite(self.p_min)):
                raise ValueError(f"log quantizer p_min must be in (0, 1), got {self.p_min!r}")
        elif self.p_min is not None:
            raise ValueError(f"p_min applies to the log quantizer only, not {self.kind!r}")
        if self.kind == "power":
            if self.gamma is None:
                object.__setattr__(self, "gamma", DEFAULT_GAMMA)
            if not (isinstance(self.gamma, (int, float)) and 0.25 <= self.gamma <= 8):
                raise ValueError(f"power quantizer gamma must be in [0.25, 8], got {self.gamma!r}")
        elif self.gamma is not None:
            raise ValueError(f"gamma applies to the power quantizer only, not {self.kind!r}")

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def is_float(self) -> bool:
        """True when values are stored probabilities (fp16), not codes into a codebook."""
        return self.kind == "fp16"

    @property
    def code_dtype(self) -> torch.dtype:
        if self.is_float:
            return torch.float16
        return torch.uint8 if self.bits == 8 else torch.uint16

    def encode(self, probs: torch.Tensor) -> torch.Tensor:
        """Probabilities (any float dtype, any shape) -> stored values of `code_dtype`."""
        if self.is_float:
            return probs.to(torch.float16)
        t = self.thresholds().to(device=probs.device, dtype=torch.float64)
        return torch.searchsorted(t, probs.double().contiguous(), right=True).to(torch.int32).to(self.code_dtype)

    def codebook(self) -> torch.Tensor | None:
        """float32 [2^bits], sorted; entry i is the probability that code i stands for (None for fp16)."""
        if self.is_float:
            return None
        L = self.levels
        i = torch.arange(L, dtype=torch.float64)
        if self.kind == "uniform":
            cb = i / (L - 1)
        elif self.kind == "power":
            cb = (i / (L - 1)) ** self.gamma
        else:
            cb = torch.exp(math.log(self.p_min) * (1 - (i - 1) / (L - 2)))
            cb[0] = 0.0
            cb[-1] = 1.0
        return cb.float()

    def thresholds(self) -> torch.Tensor:
        """float32 [2^bits - 1]: probability p gets code = number of thresholds <= p."""
        if self.is_float:
            raise ValueError("the fp16 quantizer has no thresholds: it stores probabilities as float16")
        L = self.levels
        mid = (torch.arange(L - 1, dtype=torch.float64) + 0.5) / (L - 1)
        if self.kind == "uniform":
            t = mid
        elif self.kind == "power":
            t = mid ** self.gamma
        else:
            cb = self.codebook().double()
            t = torch.sqrt(cb[1:] * cb[:-1])
            t[0] = cb[1] / 2  # between 0 and p_min: the arithmetic midpoint
        return t.float()

    def to_header(self) -> dict:
        d = {"kind": self.kind, "bits": self.bits}
        if self.kind == "log":
            d["p_min"] = self.p_min
        if self.kind == "power":
            d["gamma"] = self.gamma
        return d

    @classmethod
    def from_header(cls, d) -> "Quantizer":
        if not isinstance(d, dict) or set(d) - {"kind", "bits", "p_min", "gamma"}:
            raise ValueError(f"quantizer must be a mapping with kind, bits[, p_min | gamma], got {d!r}")
        return cls(kind=d.get("kind"), bits=d.get("bits"), p_min=d.get("p_min"), gamma=d.get("gamma"))


def encode_rows(p, k: int, q: Quantizer):
    """Rows of probabilities [B, C] -> (ids [B, k] by decreasing probability, ties to the lower id,
    or None when k == C; values as `q` stores them). The Python path, for float16 values and for
    imported probabilities; relabel's coded labels come from the label_encode op."""

    C = p.shape[1]
    if k == C:
        return None, q.encode(p)
    order = torch.sort(-p, dim=1, stable=True).indices[:, :k]
    ids = order.to(torch.int32)
    return (ids.to(torch.uint16) if C <= 65535 else ids), q.encode(p.gather(1, order))
