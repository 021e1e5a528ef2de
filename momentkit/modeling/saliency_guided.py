"""SG-DETR's saliency blocks (Gordeev et al., "Saliency-Guided DETR for Moment Retrieval and
Highlight Detection", 2024, sections 3.2-3.4).

- :class:`PoolingEncoder` (3.2): a learned token gathers a sequence in ``num_layers``
  attention-pooling layers (the token cross-attends to the sequence, then a feed-forward block),
  giving one vector: the *sentence token* of a query, or a (non-)moment token of a video.
- :class:`LocalSaliency` (3.2): ``s_t = scale * cos(sentence, clip_t) + shift``, scale and
  shift learnable (initialised to 20 and 0).
- :class:`SaliencyGuidedAttention` / :class:`SaliencyGuidedCrossAttentionLayer` /
  :class:`CrossModalEncoder` (3.3): video-to-text cross-attention whose attention weights of clip
  ``t`` are multiplied by ``g_t = sigmoid(s_t)``, so a clip the query does not describe draws
  (almost) nothing from the text.
- :class:`SaliencyAmplifier` (3.4): ``x_t <- x_t * (1 + sigmoid(s_t))``: clips are amplified by
  their saliency before the saliency offsets and again, with the global scores, before the
  detection heads.

Where the paper's equations did not survive in our copy, the choices are those of the public
code released with the paper, read for facts only: the gate multiplies the softmax weights
(before attention dropout and the output projection), the scale/shift initial values 20/0, and
the amplifier form ``x + x * sigmoid(s)``.

Shapes: ``B`` batch, ``T`` clips, ``N`` words, ``d`` width. Masks: bool, True = valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from momentkit.modeling.attention import (
    MultiheadAttention,
    merge_heads,
    scaled_dot_attention,
    split_heads,
)
from momentkit.modeling.dropout import Dropout
from momentkit.modeling.transformer import (
    CrossAttentionEncoder,
    FeedForward,
    with_pos,
    xavier_init_,
)


class PoolingEncoder(nn.Module):
    """A learned token attends to a sequence in ``num_layers`` attention-pooling layers (3.2).

    Each layer is a :class:`~momentkit.modeling.transformer.CrossAttentionLayer` whose only query
    is the pooled token: ``token <- norm(token + attn(token, x)); token <- norm(token + ffn)``.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int = 2,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a pooling encoder needs at least one layer, got {num_layers}")
        self.token = nn.Parameter(torch.randn(d_model))
        self.encoder = CrossAttentionEncoder(
            d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm
        )

    def forward(self, x: Tensor, mask: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        """``x`` ``(B, L, d)``, ``mask`` ``(B, L)`` (a valid token in every row) -> ``(B, d)``."""
        token = self.token.expand(x.shape[0], 1, -1)
        return self.encoder(token, x, None, pos, mask)[:, 0]


class LocalSaliency(nn.Module):
    """Local saliency scores (3.2): ``scale * cos(sentence, clip_t) + shift`` per clip.

    Args:
        init_scale: initial value of the learnable scale.
        init_shift: initial value of the learnable shift.
    """

    def __init__(self, init_scale: float = 20.0, init_shift: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))

    def forward(self, clips: Tensor, sentence: Tensor) -> Tensor:
        """``clips`` ``(B, T, d)``, ``sentence`` ``(B, d)`` -> ``(B, T)`` saliency logits."""
        cos = torch.einsum("btd,bd->bt", F.normalize(clips, dim=-1), F.normalize(sentence, dim=-1))
        return self.scale * cos + self.shift


class SaliencyGuidedAttention(MultiheadAttention):
    """Multi-head attention whose attention weights of query ``l`` are scaled by ``g_l`` (3.3).

    ``out_l = W_o sum_heads(g_l * softmax(q_l K^T / sqrt(d_h)) V)``: the weights of each query row
    sum to ``g_l`` instead of 1. Same parameters as
    :class:`~momentkit.modeling.attention.MultiheadAttention`; with ``gate=None`` it is exactly it.
    """

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_mask: Tensor | None = None,
        gate: Tensor | None = None,
    ) -> Tensor:
        """``query`` ``(B, L, d)``, ``key``/``value`` ``(B, S, d)``, ``key_mask`` ``(B, S)``,
        ``gate`` ``(B, L)`` in ``[0, 1]`` -> ``(B, L, d)``."""
        if gate is None:
            return super().forward(query, key, value, key_mask)
        d = self.d_model
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:d], b[:d])
        k = F.linear(key, w[d : 2 * d], b[d : 2 * d])
        v = F.linear(value, w[2 * d :], b[2 * d :])
        out = scaled_dot_attention(
            split_heads(q, self.nhead),
            split_heads(k, self.nhead),
            split_heads(v, self.nhead),
            key_mask,
            self.dropout,
            self.training,
        )  # (B, H, L, Dh)
        out = out * gate[:, None, :, None].to(out.dtype)
        return self.out_proj(merge_heads(out))


class SaliencyGuidedCrossAttentionLayer(nn.Module):
    """Clips attend to words with :class:`SaliencyGuidedAttention`, then a feed-forward block.

    Post-norm (default) or pre-norm, like
    :class:`~momentkit.modeling.transformer.CrossAttentionLayer`.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.cross_attn = SaliencyGuidedAttention(d_model, nhead, dropout)
        self.ffn = FeedForward(d_model, dim_feedforward, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        pos: Tensor | None = None,
        context_pos: Tensor | None = None,
        context_mask: Tensor | None = None,
        gate: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``(B, T, d)`` attends to ``context`` ``(B, N, d)`` with gate ``(B, T)``."""
        key = with_pos(context, context_pos)
        if self.pre_norm:
            h = self.norm1(x)
            attn = self.cross_attn(with_pos(h, pos), key, context, context_mask, gate)
            x = x + self.dropout1(attn)
            return x + self.dropout2(self.ffn(self.norm2(x)))
        attn = self.cross_attn(with_pos(x, pos), key, context, context_mask, gate)
        x = self.norm1(x + self.dropout1(attn))
        return self.norm2(x + self.dropout2(self.ffn(x)))


class CrossModalEncoder(nn.Module):
    """The Cross-Modal Transformer Encoder (3.3): a stack of SGCA layers (clips attend to words).

    With ``gate=None`` the layers are plain video-to-text cross-attention (the "w/o SGCA"
    ablation of table 2).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SaliencyGuidedCrossAttentionLayer(
                d_model, nhead, dim_feedforward, dropout, activation, pre_norm
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model) if pre_norm else None
        xavier_init_(self)

    def forward(
        self,
        clips: Tensor,
        words: Tensor,
        clip_pos: Tensor | None = None,
        word_pos: Tensor | None = None,
        word_mask: Tensor | None = None,
        gate: Tensor | None = None,
    ) -> Tensor:
        """``clips`` ``(B, T, d)``, ``words`` ``(B, N, d)``, ``gate`` ``(B, T)``: ``(B, T, d)``."""
        for layer in self.layers:
            clips = layer(clips, words, clip_pos, word_pos, word_mask, gate)
        return self.norm(clips) if self.norm is not None else clips


class SaliencyAmplifier(nn.Module):
    """Injects saliency scores into clip features (3.4): ``x_t * (1 + sigmoid(s_t))``.

    Parameter-free, so applying it a second time (with the global scores) needs no new weights.
    """

    def forward(self, features: Tensor, saliency: Tensor) -> Tensor:
        """``features`` ``(B, T, d)``, ``saliency`` ``(B, T)`` logits -> ``(B, T, d)``."""
        return features * (1.0 + saliency.sigmoid().unsqueeze(-1))
