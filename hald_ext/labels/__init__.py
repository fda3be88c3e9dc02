"""The label store: top-k (or full-width, k == C) soft labels, as codes or float16, with their crop
boxes, one safetensors file per store.

    from hald_ext.labels import LabelStore, relabel
"""
from hald_ext.labels.format import FingerprintMismatch, Header, LabelStoreError
from hald_ext.labels.quantizer import Quantizer
from hald_ext.labels.store import LabelStore, MixRecord, SlotLabels

__all__ = ["FingerprintMismatch", "Header", "LabelStore", "LabelStoreError", "MixRecord", "Quantizer", "SlotLabels"]
