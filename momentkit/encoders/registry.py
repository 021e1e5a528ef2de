"""Encoders by name: ``FAMILY`` or ``FAMILY:ARG``, e.g. ``clip:openai/clip-vit-base-patch32``.

==================  =============================================  ==========================
spec                model                                          streams
==================  =============================================  ==========================
``offline``         EfficientNet-Lite0 + MiniLM (no download)      effnet, imagenet_probs,
                                                                   minilm_text
``offline-glove``   EfficientNet-Lite0 + GloVe 6B 50-d             effnet, imagenet_probs,
                                                                   glove_text
``clip:ID``         CLIP (hub id or local directory)               clip, clip_text
``siglip:ID``       SigLIP (hub id or local directory)             siglip, siglip_text
``motion[:K]``      frame differences, K frames per clip (8)       motion
``bam[:B,A,M]``     cheap Background/Appearance/Motion index       bam
                    features for clip trimming (long videos)
``clip_slowfast:``  the QVHighlights pipeline: CLIP ViT-B/32 frames  clip, slowfast,
``clip=C,slowfast=  every 2 s + SlowFast 8x8 R50 windows, exactly    clip_text
S[,mode=M]``        as the benchmark features (``slowfast=none``:
                    CLIP only)
==================  =============================================  ==========================

New families register a factory ``(arg, *, device, batch_size, frames_per_clip) -> Encoder``
with ``@ENCODERS.register("name")``.
"""

from __future__ import annotations

from typing import Protocol

from momentkit.encoders.base import Encoder, EncoderError
from momentkit.utils.registry import Registry


class EncoderFactory(Protocol):
    """Builds an encoder from the part of its spec after the colon (``None`` if absent)."""

    def __call__(
        self, arg: str | None, *, device: str, batch_size: int, frames_per_clip: int
    ) -> Encoder: ...


ENCODERS: Registry[EncoderFactory] = Registry("encoder")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"clip:openai/x"`` -> ``("clip", "openai/x")``; ``"offline"`` -> ``("offline", None)``."""
    family, sep, arg = spec.strip().partition(":")
    if not family:
        raise EncoderError(f"empty encoder name in '{spec}'; known: {', '.join(ENCODERS.names())}")
    if sep and not arg:
        raise EncoderError(f"encoder '{spec}' has nothing after ':'")
    return family, (arg if sep else None)


def build_encoder(
    spec: str, *, device: str = "cpu", batch_size: int = 32, frames_per_clip: int = 1
) -> Encoder:
    """The encoder a spec names (see the module doc for the known families).

    Args:
        spec: ``FAMILY`` or ``FAMILY:ARG``.
        device: torch device.
        batch_size: images per forward pass.
        frames_per_clip: frames per clip for appearance encoders (``motion`` has its own ``K``).

    Raises:
        EncoderError: unknown family, malformed argument, or the model cannot be loaded.
    """
    family, arg = parse_spec(spec)
    if family not in ENCODERS:
        raise EncoderError(
            f"unknown encoder '{family}' (from '{spec}'); known: {', '.join(ENCODERS.names())}"
        )
    return ENCODERS.get(family)(
        arg, device=device, batch_size=batch_size, frames_per_clip=frames_per_clip
    )


def _no_arg(family: str, arg: str | None) -> None:
    if arg is not None:
        raise EncoderError(f"encoder '{family}' takes no argument, got '{family}:{arg}'")


def _model_arg(family: str, arg: str | None) -> str:
    if arg is None:
        raise EncoderError(
            f"encoder '{family}' needs a model: '{family}:<hub id or local directory>', e.g. "
            f"'{family}:openai/clip-vit-base-patch32'"
            if family == "clip"
            else f"encoder '{family}' needs a model: '{family}:<hub id or local directory>'"
        )
    return arg


@ENCODERS.register("offline")
def _offline(arg: str | None, *, device: str, batch_size: int, frames_per_clip: int) -> Encoder:
    from momentkit.encoders.offline import OfflineEncoder

    _no_arg("offline", arg)
    return OfflineEncoder(
        "minilm", device=device, batch_size=batch_size, frames_per_clip=frames_per_clip
    )


@ENCODERS.register("offline-glove")
def _offline_glove(
    arg: str | None, *, device: str, batch_size: int, frames_per_clip: int
) -> Encoder:
    from momentkit.encoders.offline import OfflineEncoder

    _no_arg("offline-glove", arg)
    return OfflineEncoder(
        "glove", device=device, batch_size=batch_size, frames_per_clip=frames_per_clip
    )


@ENCODERS.register("clip")
def _clip(arg: str | None, *, device: str, batch_size: int, frames_per_clip: int) -> Encoder:
    from momentkit.encoders.clip import ClipEncoder

    return ClipEncoder(
        _model_arg("clip", arg),
        device=device,
        batch_size=batch_size,
        frames_per_clip=frames_per_clip,
    )


@ENCODERS.register("siglip")
def _siglip(arg: str | None, *, device: str, batch_size: int, frames_per_clip: int) -> Encoder:
    from momentkit.encoders.siglip import SiglipEncoder

    return SiglipEncoder(
        _model_arg("siglip", arg),
        device=device,
        batch_size=batch_size,
        frames_per_clip=frames_per_clip,
    )


@ENCODERS.register("motion")
def _motion(arg: str | None, *, device: str, batch_size: int, frames_per_clip: int) -> Encoder:
    from momentkit.encoders.motion import MotionEncoder

    if arg is None:
        return MotionEncoder(device=device)
    if not arg.isdigit():
        raise EncoderError(f"'motion:{arg}': the argument is frames per clip, e.g. 'motion:8'")
    return MotionEncoder(int(arg), device=device)


@ENCODERS.register("bam")
def _bam(arg: str | None, *, device: str, batch_size: int, frames_per_clip: int) -> Encoder:
    from momentkit.encoders.bam import build_bam_encoder

    return build_bam_encoder(
        arg, device=device, batch_size=batch_size, frames_per_clip=frames_per_clip
    )


@ENCODERS.register("clip_slowfast")
def _clip_slowfast(
    arg: str | None, *, device: str, batch_size: int, frames_per_clip: int
) -> Encoder:
    from momentkit.encoders.clip_slowfast import (
        DEFAULT_CLIP,
        ClipSlowFastEncoder,
        default_slowfast_path,
        parse_args,
    )

    args = parse_args(arg)
    slowfast: str | None = args.get("slowfast")
    if slowfast is None:
        found = default_slowfast_path()
        if found is None:
            raise EncoderError(
                "clip_slowfast needs the SlowFast weights: slowfast=<SLOWFAST_8x8_R50.pkl> "
                "(SlowFast model zoo), $MOMENTKIT_SLOWFAST, or "
                "~/.cache/momentkit/SLOWFAST_8x8_R50.pkl; slowfast=none for the CLIP-only pipeline"
            )
        slowfast = str(found)
    elif slowfast.lower() == "none":
        slowfast = None
    return ClipSlowFastEncoder(
        args.get("clip", DEFAULT_CLIP),
        slowfast,
        mode=args.get("mode", "default"),
        tokenizer=args.get("tokenizer"),
        device=device,
        batch_size=min(batch_size, 16),
        clip_len=_seconds(args.get("clip_len", "2")),
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise EncoderError(f"clip_slowfast: clip_len={text} is not a positive number of seconds")
    return value
