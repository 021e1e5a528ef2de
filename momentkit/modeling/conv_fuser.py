"""LD-DETR's Convolutional Fuser (Zhao et al. 2025, section 3.3).

The fuser turns the unimodal clip features ``V'`` ``(B, T, d)`` and word features ``T'``
``(B, N, d)`` into the multimodal memory ``(B, T, d)`` the decoder reads. Its stages, in order
and without parameter sharing:

1. :class:`V2TExtractor` (equations 8-19, TR-DETR's visual refinement): a video-text
   correlation matrix, its row and column softmaxes, the fused concatenation
   ``[V' || T_v || V' o T_v || V' o V_t]`` and a pooled-text feature, mapped back to ``d``;
2. the T2V Encoder: clips attend to words (QD-DETR's text-to-video layers,
   :class:`~momentkit.modeling.transformer.CrossAttentionEncoder`);
3. Transformer Encoder 1 over the clips;
4. ``N`` :class:`ConvResidualBlock` s, ``X_i = act(X_{i-1} + BN(Conv(act(BN(Conv(X_{i-1}))))))``
   (:class:`ConvBlocks`; 5 by default, 4 on Charades-STA);
5. Transformer Encoder 2 over the clips.

Every stage can be switched off (``use_v2t=False`` or 0 layers / blocks), and the convolutional
blocks can sit at any of the five positions of the paper's table 8, ``conv_position`` ``p``
meaning "after the first ``p`` of the other four stages" (:func:`stage_order`; the paper's
design is ``p = 3``, between the two Transformer encoders).

Padding has two forms (:data:`PADDING_FORMS`):

- ``masked`` (default): padded clips are zeroed before every convolution and excluded from the
  batch-norm statistics (:class:`MaskedBatchNorm1d`), so they cannot change the valid clips'
  outputs; the T2V Encoder masks padded words only;
- ``official`` (``conv_padding`` / ``t2v_mask``, the release's ``ld_detr/methods.py`` and
  ``ld_detr/transformer.py``): the convolutions and batch norm run over the padding as they
  find it, and the T2V attention also applies the release's clip-by-word mask, built per video
  and repeated head-major but read batch-major by ``nn.MultiheadAttention``, so that head ``h``
  of video ``b`` uses the mask of video ``(b * nhead + h) mod B`` (:func:`official_t2v_allowed`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.dropout import Dropout
from momentkit.modeling.linear import Linear
from momentkit.modeling.transformer import CrossAttentionEncoder, TransformerEncoder, xavier_init_

#: the fuser's stages besides the convolutional blocks, in the paper's order
STAGES = ("v2t", "t2v", "encoder1", "encoder2")

#: values of ``conv_padding`` and ``t2v_mask``: momentkit's masking or the release's form
PADDING_FORMS = ("masked", "official")


def official_t2v_allowed(video_mask: Tensor, text_mask: Tensor, nhead: int) -> Tensor:
    """Which words each clip may attend to in the release's T2V Encoder, per head.

    The release (``ld_detr/transformer.py``, ``T2V_TransformerEncoderLayer_no_global``) blocks
    the pairs (padded clip, padded word) of each video, repeats the ``(B, T, N)`` block
    ``nhead`` times along dim 0 (head-major: row ``r * B + b``) and gives it to
    ``nn.MultiheadAttention``, which reads row ``b * nhead + h`` as head ``h`` of video ``b``.
    Head ``h`` of video ``b`` therefore uses the block of video ``(b * nhead + h) mod B``; with
    ``B = 1`` (or no padding) it only blocks words the key-padding mask blocks anyway.

    Args:
        video_mask: ``(B, T)`` bool, True = valid clip.
        text_mask: ``(B, N)`` bool, True = valid word.
        nhead: attention heads.

    Returns:
        ``(B, nhead, T, N)`` bool, True = may attend (to be combined with the word mask).
    """
    blocked = (~video_mask)[:, :, None] & (~text_mask)[:, None, :]  # (B, T, N)
    batch, length, words = blocked.shape
    return ~blocked.repeat(nhead, 1, 1).view(batch, nhead, length, words)


def stage_order(conv_position: int) -> tuple[str, ...]:
    """The fuser's stage names with ``"conv"`` inserted at ``conv_position`` (0 to 4).

    ``stage_order(3) == ("v2t", "t2v", "encoder1", "conv", "encoder2")`` (the paper's design).
    """
    if not 0 <= conv_position <= len(STAGES):
        raise ValueError(f"conv_position must be in [0, {len(STAGES)}], got {conv_position}")
    order = list(STAGES)
    order.insert(conv_position, "conv")
    return tuple(order)


class V2TExtractor(nn.Module):
    """Video-to-text feature extractor (LD-DETR equations 8-19; TR-DETR's refinement).

    With ``V'`` ``(B, T, d)`` clips and ``T'`` ``(B, N, d)`` words:

    - correlation ``A = Linear(V') + Linear(T')^T + (V' o w) T'^T`` ``(B, T, N)``;
    - ``A_r = softmax(A)`` over words (each clip's distribution over the query, rows) and
      ``A_c = softmax(A)`` over clips (each word's distribution over the video, columns);
    - ``T_v = A_r T'`` and ``V_t = A_r A_c^T V'`` ``(B, T, d)``;
    - ``F = Linear([V' || T_v || V' o T_v || V' o V_t])`` ``(B, T, d)``;
    - text pooling ``B = softmax(Linear(T'))`` over words, ``T_p = T'^T B`` ``(B, d)``;
    - output ``ReLU(Linear([F || T_p]))`` ``(B, T, d)``, ``T_p`` repeated on every clip.

    Dropout (``dropout``) applies to ``V'`` and ``T'`` where the correlation is computed, as in the
    official code. Padded words/clips are excluded from the softmaxes.
    """

    def __init__(self, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.video_score = Linear(d_model, 1, bias=False)
        self.text_score = Linear(d_model, 1, bias=False)
        self.joint_score = nn.Parameter(torch.empty(d_model))
        self.dropout = Dropout(dropout)
        self.fuse = Linear(4 * d_model, d_model)
        self.text_pool = Linear(d_model, 1, bias=False)
        self.output = Linear(2 * d_model, d_model)
        xavier_init_(self)
        bound = math.sqrt(3.0 / d_model)  # xavier-uniform of the official (1, 1, d) weight
        nn.init.uniform_(self.joint_score, -bound, bound)

    def correlation(self, video: Tensor, text: Tensor) -> Tensor:
        """``A`` ``(B, T, N)`` from ``video`` ``(B, T, d)`` and ``text`` ``(B, N, d)``."""
        joint = torch.matmul(video * self.joint_score, text.transpose(1, 2))
        return self.video_score(video) + self.text_score(text).transpose(1, 2) + joint

    @staticmethod
    def attention_maps(
        correlation: Tensor, video_mask: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(A_r, A_c)``: ``A`` softmaxed over valid words (dim 2) and over valid clips (dim 1).

        Args:
            correlation: ``(B, T, N)``.
            video_mask: ``(B, T)`` bool, True = valid; ``text_mask`` ``(B, N)`` likewise.
        """
        rows = correlation.masked_fill(~text_mask[:, None, :], float("-inf")).softmax(dim=2)
        cols = correlation.masked_fill(~video_mask[:, :, None], float("-inf")).softmax(dim=1)
        return rows, cols

    def forward(self, video: Tensor, text: Tensor, video_mask: Tensor, text_mask: Tensor) -> Tensor:
        """``video`` ``(B, T, d)``, ``text`` ``(B, N, d)``, their masks -> ``(B, T, d)``."""
        a = self.correlation(self.dropout(video), self.dropout(text))
        a_rows, a_cols = self.attention_maps(a, video_mask, text_mask)
        text_for_clip = torch.matmul(a_rows, text)  # T_v (B, T, d)
        video_for_word = torch.matmul(a_cols.transpose(1, 2), video)  # A_c^T V' (B, N, d)
        video_for_clip = torch.matmul(a_rows, video_for_word)  # V_t (B, T, d)
        fused = self.fuse(
            torch.cat([video, text_for_clip, video * text_for_clip, video * video_for_clip], dim=-1)
        )
        pool_logits = self.text_pool(text).squeeze(-1).masked_fill(~text_mask, float("-inf"))
        pooled = torch.einsum("bn,bnd->bd", pool_logits.softmax(dim=1), text)  # T_p (B, d)
        pooled = pooled.unsqueeze(1).expand(-1, video.shape[1], -1)
        return F.relu(self.output(torch.cat([fused, pooled], dim=-1)))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` over ``(B, C, T)`` whose batch statistics skip padding.

    In training the mean and (biased) variance of each channel are taken over the valid time
    steps only and the running statistics updated from them (unbiased variance, as torch); in
    evaluation the running statistics are used. Same parameters and buffers as ``BatchNorm1d``.
    """

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """``x`` ``(B, C, T)``, ``mask`` ``(B, T)`` bool (True = valid) -> ``(B, C, T)``."""
        if mask is None or not self.training or not self.track_running_stats or bool(mask.all()):
            return super().forward(x)  # no padding: the native kernel computes the same
        weights = mask[:, None, :].to(torch.float32)  # (B, 1, T)
        count = weights.sum().clamp(min=2.0)
        xf = x.float()
        mean = (xf * weights).sum((0, 2)) / count  # (C,)
        centered = xf - mean[None, :, None]
        var = (centered.square() * weights).sum((0, 2)) / count
        with torch.no_grad():
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            momentum = 0.1 if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
            self.num_batches_tracked.add_(1)
        y = centered * torch.rsqrt(var + self.eps)[None, :, None]
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.to(x.dtype)


class ConvResidualBlock(nn.Module):
    """``X_i = act(X_{i-1} + BN(Conv(act(BN(Conv(X_{i-1}))))))`` over time (section 3.3).

    Two 1-D convolutions of ``kernel_size`` (3, same padding) over ``(B, d, T)``, each followed
    by batch normalisation; ReLU activations. With ``mask=None`` (the official form) nothing is
    zeroed and the batch norm takes its statistics over every time step, padding included.
    """

    def __init__(self, d_model: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        self.conv1 = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2)
        self.bn1 = MaskedBatchNorm1d(d_model)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2)
        self.bn2 = MaskedBatchNorm1d(d_model)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` ``(B, d, T)`` with zeros at padded steps, ``mask`` ``(B, T)`` -> ``(B, d, T)``.

        ``mask=None``: the official form, over every step as it is.
        """
        if mask is None:
            return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        keep = mask[:, None, :].to(x.dtype)
        h = F.relu(self.bn1(self.conv1(x), mask)) * keep
        return F.relu(x + self.bn2(self.conv2(h), mask)) * keep


class ConvBlocks(nn.Module):
    """``num_blocks`` :class:`ConvResidualBlock` s over the clips of ``(B, T, d)`` features."""

    def __init__(self, d_model: int, num_blocks: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ConvResidualBlock(d_model, kernel_size) for _ in range(num_blocks)
        )

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` ``(B, T, d)``, ``mask`` ``(B, T)`` -> ``(B, T, d)`` (zeros at padded clips).

        ``mask=None``: the official form (padded clips convolved and normalised as they are).
        """
        h = x.transpose(1, 2)  # (B, d, T)
        if mask is not None:
            h = h * mask[:, None, :].to(x.dtype)
        for block in self.blocks:
            h = block(h, mask)
        return h.transpose(1, 2)


class ConvolutionalFuser(nn.Module):
    """V2T Extractor -> T2V Encoder -> Transformer Encoder 1 -> conv blocks -> Encoder 2.

    Args:
        d_model, nhead, dim_feedforward, dropout, activation, pre_norm: transformer settings.
        use_v2t: include the :class:`V2TExtractor`.
        t2v_layers: layers of the T2V Encoder (0: off).
        encoder1_layers, encoder2_layers: layers of the two Transformer encoders (0: off).
        conv_blocks: convolutional residual blocks (0: off).
        conv_position: where the blocks sit among the other stages (see :func:`stage_order`).
        conv_kernel_size: temporal kernel of the convolutions.
        conv_padding: ``masked`` or ``official`` (:data:`PADDING_FORMS`, module doc).
        t2v_mask: ``masked`` or ``official`` (the release's per-head clip-by-word mask).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        use_v2t: bool = True,
        t2v_layers: int = 2,
        encoder1_layers: int = 2,
        conv_blocks: int = 5,
        encoder2_layers: int = 2,
        conv_position: int = 3,
        conv_kernel_size: int = 3,
        conv_padding: str = "masked",
        t2v_mask: str = "masked",
    ) -> None:
        super().__init__()
        for name, value in (("conv_padding", conv_padding), ("t2v_mask", t2v_mask)):
            if value not in PADDING_FORMS:
                raise ValueError(f"{name} must be one of {PADDING_FORMS}, got '{value}'")
        self.order = stage_order(conv_position)
        self.nhead = nhead
        self.conv_padding = conv_padding
        self.t2v_mask = t2v_mask
        layer_args = (dim_feedforward, dropout, activation, pre_norm)
        self.v2t = V2TExtractor(d_model, dropout) if use_v2t else None
        self.t2v = (
            CrossAttentionEncoder(
                d_model, nhead, t2v_layers, *layer_args, ffn_skip_norm=not pre_norm
            )
            if t2v_layers
            else None
        )
        self.encoder1 = (
            TransformerEncoder(d_model, nhead, encoder1_layers, *layer_args)
            if encoder1_layers
            else None
        )
        self.conv = ConvBlocks(d_model, conv_blocks, conv_kernel_size) if conv_blocks else None
        self.encoder2 = (
            TransformerEncoder(d_model, nhead, encoder2_layers, *layer_args)
            if encoder2_layers
            else None
        )

    def forward(
        self,
        video: Tensor,
        text: Tensor,
        video_mask: Tensor,
        text_mask: Tensor,
        video_pos: Tensor | None = None,
        text_pos: Tensor | None = None,
    ) -> Tensor:
        """Fuse clips and words into the multimodal memory.

        Args:
            video: ``(B, T, d)`` clips ``V'``; ``video_mask`` ``(B, T)``; ``video_pos``
                ``(B, T, d)`` positions added to attention queries/keys.
            text: ``(B, N, d)`` words ``T'``; ``text_mask`` ``(B, N)``; ``text_pos``
                ``(B, N, d)`` or ``None``.

        Returns:
            ``(B, T, d)`` memory.
        """
        x = video
        allowed = None
        if self.t2v_mask == "official":
            allowed = official_t2v_allowed(video_mask, text_mask, self.nhead)
        conv_mask = None if self.conv_padding == "official" else video_mask
        for name in self.order:
            if name == "v2t" and self.v2t is not None:
                x = self.v2t(x, text, video_mask, text_mask)
            elif name == "t2v" and self.t2v is not None:
                x = self.t2v(x, text, video_pos, text_pos, text_mask, allowed=allowed)
            elif name == "encoder1" and self.encoder1 is not None:
                x = self.encoder1(x, video_pos, video_mask)
            elif name == "conv" and self.conv is not None:
                x = self.conv(x, conv_mask)
            elif name == "encoder2" and self.encoder2 is not None:
                x = self.encoder2(x, video_pos, video_mask)
        return x


__all__ = [
    "PADDING_FORMS",
    "STAGES",
    "ConvBlocks",
    "ConvResidualBlock",
    "ConvolutionalFuser",
    "MaskedBatchNorm1d",
    "V2TExtractor",
    "official_t2v_allowed",
    "stage_order",
]
