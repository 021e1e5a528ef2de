"""SG-DETR's saliency blocks (Gordeev et al., "Saliency-Guided DETR for Moment Retrieval and
Highlight Detection", 2024, sections 3.2-3.4).

- :class:`PoolingEncoder` (3.2): a learned token gathers a sequence in ``num_layers``
  attention-pooling layers (the token cross-attends to the sequence, then a feed-forward block),
  giving one vector: the *sentence token* of a query, or a (non-)moment token of a video.
- :class:`LocalSaliency` (3.2): ``s_t = scale * cos(sentence, clip_t) + shift``, scale and
  shift learnable (initialised to 20 and 0).
- :class:`CrossModalEncoder` (3.3, SGCA): video-to-text cross-attention whose attention weights
  of clip ``t`` are multiplied by ``g_t = sigmoid(s_t)``, so a clip the query does not describe
  draws (almost) nothing from the text: the shared cross-attention layers with their ``gate``.
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

from momentkit.modeling.transformer import CrossAttentionEncoder


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


class CrossModalEncoder(CrossAttentionEncoder):
    """The Cross-Modal Transformer Encoder (3.3): a stack of SGCA layers (clips attend to words).

    Each layer is a :class:`~momentkit.modeling.transformer.CrossAttentionLayer` (post-norm by
    default, or pre-norm) whose attention weights of clip ``t`` are multiplied by the ``gate``
    ``g_t = sigmoid(s_t)`` (:class:`~momentkit.modeling.attention.MultiheadAttention`'s
    ``gate``): ``out_t = W_o sum_heads(g_t * softmax(q_t K^T / sqrt(d_h)) V)``, so the weights of
    each clip sum to ``g_t`` instead of 1.

    ``forward(clips, words, clip_pos, word_pos, word_mask, gate)``: ``clips`` ``(B, T, d)``,
    ``words`` ``(B, N, d)``, ``gate`` ``(B, T)`` in ``[0, 1]`` -> ``(B, T, d)``. With
    ``gate=None`` the layers are plain video-to-text cross-attention (the "w/o SGCA" ablation of
    table 2). Constructor arguments as :class:`CrossAttentionEncoder`.
    """


class SaliencyAmplifier(nn.Module):
    """Injects saliency scores into clip features (3.4): ``x_t * (1 + sigmoid(s_t))``.

    Parameter-free, so applying it a second time (with the global scores) needs no new weights.
    """

    def forward(self, features: Tensor, saliency: Tensor) -> Tensor:
        """``features`` ``(B, T, d)``, ``saliency`` ``(B, T)`` logits -> ``(B, T, d)``."""
        return features * (1.0 + saliency.sigmoid().unsqueeze(-1))
