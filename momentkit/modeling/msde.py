"""MS-DETR's Motion-Semantics Disentangled Encoder (MSDE), Ma et al., ACM MM 2025, Sec. 3.2.

The video arrives as several feature streams concatenated on channels (QVHighlights:
SlowFast 2304 + CLIP 512 + 2 TEF channels). MSDE keeps the motion stream and the semantic
stream apart while the query is injected into each:

- the *Temporal Motion Cross-modal Transformer* (TMCT): motion-stream clips ``Q_v^m`` attend to
  the query words ``(K_t, V_t)``;
- the *Spatial Semantic Cross-modal Transformer* (SSCT): semantic-stream clips ``Q_v^s`` attend
  to the same words;

and only then are the two fused: ``F_v = phi(TMCT(Q_v^m, K_t, V_t) (+) SSCT(Q_v^s, K_t, V_t))``
with ``(+)`` channel concatenation and ``phi`` a projection back to the model width. A transformer
encoder over ``[sentence token; F_v]`` follows (in :mod:`momentkit.models.ms_detr`); the official
release prepends the sentence token before phi instead (``fuse_branches(..., token=)``).

Channels after the last named stream (the TEF) are shared: they are appended to every branch's
stream, as in the official code. With a single stream (or ``disentangle=False``, the "w/o MSDE"
ablation) MSDE degrades to one shared cross-modal transformer over all channels, which is
QD-DETR's text-to-video encoder.

Each cross-modal transformer is a stack of QD-DETR's T2V layers
(:class:`~momentkit.modeling.transformer.CrossAttentionEncoder`, ``ffn_skip_norm`` in post-norm).
The release's T2V layers build their padding mask as QD-DETR's code does (stacked head-major
where attention reads it video-major): :func:`tiled_t2v_allowed` reproduces it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from momentkit.modeling.mlp import InputProjection
from momentkit.modeling.transformer import CrossAttentionEncoder


def stream_slices(video_dim: int, stream_dims: Sequence[int]) -> tuple[list[slice], slice]:
    """Channel slices of each named stream and of the shared trailing channels.

    Args:
        video_dim: channels of ``video_feats``.
        stream_dims: widths of the leading streams, in channel order.

    Returns:
        ``(streams, shared)``: one slice per stream and the slice of the remaining channels
        (e.g. the 2 TEF channels; empty when there are none).

    Raises:
        ValueError: the streams need more channels than ``video_dim``.
    """
    if any(d < 1 for d in stream_dims) or sum(stream_dims) > video_dim:
        raise ValueError(
            f"model.stream_dims {list(stream_dims)} do not fit video_dim {video_dim}: each "
            "stream needs >= 1 channel and together they cannot exceed video_dim (the trailing "
            "channels, e.g. TEF, are shared by every stream)"
        )
    slices, start = [], 0
    for d in stream_dims:
        slices.append(slice(start, start + d))
        start += d
    return slices, slice(start, video_dim)


def tiled_t2v_allowed(video_mask: Tensor, text_mask: Tensor, nhead: int) -> Tensor:
    """The release's T2V attention mask, as "may attend" (``(B, H, T, N)`` bool).

    The release blocks (clip ``t``, word ``n``) when both are padding, builds that ``(T, N)``
    mask per video and stacks the videos with ``repeat(nhead, 1, 1)``; attention reads the stack
    video-major, so head ``h`` of video ``b`` gets the mask of video ``(b * H + h) mod B``. A
    valid clip of a padded batch can therefore lose words, depending on the other videos; a
    single video, or a batch without padding, is unaffected. Key padding is applied separately.

    Args:
        video_mask: ``(B, T)`` bool, True = valid clip; ``text_mask`` ``(B, N)`` likewise.
        nhead: ``H`` attention heads.
    """
    both_padded = (~video_mask)[:, :, None] & (~text_mask)[:, None, :]  # (B, T, N)
    b = len(video_mask)
    index = torch.arange(b, device=video_mask.device)[:, None] * nhead
    source = (index + torch.arange(nhead, device=video_mask.device)[None, :]) % b  # (B, H)
    return ~both_padded[source]


class CrossModalBranch(nn.Module):
    """One cross-modal transformer over one video stream (TMCT or SSCT; Sec. 3.2).

    ``InputProjection`` of the stream's channels (+ shared channels) to the model width, then
    ``num_layers`` layers in which clips attend to the query words.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        input_dropout: float,
        n_input_proj: int,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.proj = InputProjection(in_dim, d_model, n_input_proj, input_dropout)
        self.cross = CrossAttentionEncoder(
            d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm,
            ffn_skip_norm=not pre_norm,
        )  # fmt: skip

    def forward(
        self,
        stream: Tensor,
        video_mask: Tensor,
        video_pos: Tensor,
        text: Tensor,
        text_pos: Tensor | None,
        text_mask: Tensor,
    ) -> Tensor:
        """``stream`` ``(B, T, C)`` clips attend to ``text`` ``(B, N, d)``; returns ``(B, T, d)``.

        ``video_mask`` ``(B, T)``, ``video_pos`` ``(B, T, d)``, ``text_pos`` ``(B, N, d)`` or
        ``None``, ``text_mask`` ``(B, N)``.
        """
        clips = self.proj(stream, video_mask)
        return self.cross(clips, text, video_pos, text_pos, text_mask)


class MotionSemanticsDisentangledEncoder(nn.Module):
    """MSDE: per-stream cross-modal transformers fused by ``phi`` (Sec. 3.2, ``F_v``).

    Args:
        video_dim: channels of ``video_feats``.
        stream_dims: widths of the leading ``[motion, semantic]`` streams (``[2304, 512]`` for
            SlowFast + CLIP); the trailing channels are shared. One entry (or none) means a
            single stream.
        disentangle: ``False`` forces one shared cross-modal transformer over all channels
            (the "w/o MSDE" ablation).
        d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm: of each
            cross-modal transformer (``num_layers`` = the official ``cross_enc_layers``).
        input_dropout, n_input_proj: of the input projections (and of ``phi``).
        fuse_dropout: dropout of ``phi``'s layers (``None``: ``input_dropout``, as the official
            ``concat_vid_proj``).

    Attributes:
        branches: ``{"motion": TMCT, "semantic": SSCT}``, or ``{"shared": ...}`` when degraded.
    """

    def __init__(
        self,
        video_dim: int,
        stream_dims: Sequence[int],
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        input_dropout: float = 0.5,
        n_input_proj: int = 2,
        activation: str = "relu",
        pre_norm: bool = False,
        disentangle: bool = True,
        fuse_dropout: float | None = None,
    ) -> None:
        super().__init__()
        streams, shared = stream_slices(video_dim, stream_dims)
        self.disentangled = disentangle and len(streams) == 2
        if self.disentangled:
            names = ("motion", "semantic")
            self.slices = dict(zip(names, streams))
        else:
            names = ("shared",)
            self.slices = {"shared": slice(0, video_dim)}
        self.shared_slice = shared if self.disentangled else slice(video_dim, video_dim)

        def branch(width: int) -> CrossModalBranch:
            return CrossModalBranch(
                width, d_model, nhead, num_layers, dim_feedforward, dropout, input_dropout,
                n_input_proj, activation, pre_norm,
            )  # fmt: skip

        extra = shared.stop - shared.start if self.disentangled else 0
        self.branches = nn.ModuleDict(
            {n: branch(self.slices[n].stop - self.slices[n].start + extra) for n in names}
        )
        # phi: (+) of the branch outputs back to the model width (the official concat_vid_proj)
        self.fuse = (
            InputProjection(
                2 * d_model,
                d_model,
                n_input_proj,
                input_dropout if fuse_dropout is None else fuse_dropout,
            )
            if self.disentangled
            else None
        )

    def branch_inputs(self, video: Tensor) -> dict[str, Tensor]:
        """Each branch's input channels of ``video`` ``(B, T, Dv)``: ``{name: (B, T, C_b)}``."""
        shared = video[..., self.shared_slice]
        out = {}
        for name, sl in self.slices.items():
            x = video[..., sl]
            out[name] = torch.cat([x, shared], dim=-1) if shared.shape[-1] else x
        return out

    def project(self, video: Tensor, video_mask: Tensor | None) -> dict[str, Tensor]:
        """Each branch's input projection of ``video`` ``(B, T, Dv)``: ``{name: (B, T, d)}``.

        Separate from :meth:`interact` so a video paired with several queries is projected once.
        ``video_mask`` ``(B, T)``: padded rows come out as zeros; ``None``: every row projected
        (the release).
        """
        inputs = self.branch_inputs(video)
        return {name: b.proj(inputs[name], video_mask) for name, b in self.branches.items()}

    def interact(
        self,
        projected: dict[str, Tensor],
        video_pos: Tensor,
        text: Tensor,
        text_pos: Tensor | None,
        text_mask: Tensor,
        allowed: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Every branch's cross-modal transformer: ``{name: (B, T, d)}`` (TMCT / SSCT / shared).

        Args:
            projected: :meth:`project` outputs (rows may be repeated, one per video-text pair).
            video_pos: ``(B, T, d)``; text: ``(B, N, d)`` projected words; ``text_pos``
                ``(B, N, d)`` or ``None``; ``text_mask`` ``(B, N)``.
            allowed: ``(B, H, T, N)`` bool clip-by-word mask on top of ``text_mask``
                (:func:`tiled_t2v_allowed`; ``None``: every valid word).
        """
        return {
            name: b.cross(projected[name], text, video_pos, text_pos, text_mask, allowed=allowed)
            for name, b in self.branches.items()
        }

    def fuse_branches(
        self, outs: dict[str, Tensor], video_mask: Tensor | None, token: Tensor | None = None
    ) -> Tensor:
        """``F_v = phi(TMCT (+) SSCT)`` ``(B, T, d)`` (the shared branch's output when degraded).

        With ``token`` ``(B, 1, d)`` (the sentence token, as the official release) the token is
        prepended to every branch output before phi, which the cross-modal layers leave
        unchanged: the result is ``(B, 1 + T, d)``, row 0 ``phi([x_s; x_s])`` (``x_s`` itself
        when degraded).
        """
        if token is not None:
            outs = {name: torch.cat([token, x], dim=1) for name, x in outs.items()}
            if video_mask is not None:
                ones = video_mask.new_ones(len(video_mask), 1)
                video_mask = torch.cat([ones, video_mask], dim=1)
        if self.fuse is None:
            return outs["shared"]
        return self.fuse(torch.cat([outs["motion"], outs["semantic"]], dim=-1), video_mask)

    def forward(
        self,
        video: Tensor,
        video_mask: Tensor,
        video_pos: Tensor,
        text: Tensor,
        text_pos: Tensor | None,
        text_mask: Tensor,
    ) -> Tensor:
        """``F_v`` ``(B, T, d)`` from raw ``video`` ``(B, T, Dv)`` and projected ``text``.

        Args:
            video: the concatenated streams; ``video_mask`` ``(B, T)``; ``video_pos``
                ``(B, T, d)``.
            text: ``(B, N, d)`` projected query words; ``text_pos`` ``(B, N, d)`` or ``None``;
                ``text_mask`` ``(B, N)``.
        """
        projected = self.project(video, video_mask)
        outs = self.interact(projected, video_pos, text, text_pos, text_mask)
        return self.fuse_branches(outs, video_mask)
