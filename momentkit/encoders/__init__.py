"""Pluggable feature encoders, built by name, e.g. ``build_encoder("offline")``."""

from momentkit.encoders.base import Encoder, EncoderError, TextFeatures, TorchEncoder
from momentkit.encoders.registry import ENCODERS, build_encoder, parse_spec

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderError",
    "TextFeatures",
    "TorchEncoder",
    "build_encoder",
    "parse_spec",
]
