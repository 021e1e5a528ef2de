"""MS-DETR's Mutual Task Collaborative Decoder (MTCD), Ma et al., ACM MM 2025, Sec. 3.3.

Highlight detection (HD) and moment retrieval (MR) guide each other:

- **HD -> MR.** The saliency of clip ``x_i`` given the sentence token ``x_s`` is
  ``S(x_i) = (w_s^T x_s . w_v^T x_i) / sqrt(d)`` (:class:`SentenceSaliency`). The ``K`` most
  salient valid clips are selected (padding never; a video with fewer than ``K`` valid clips
  repeats its ranking, as the official code), ``q_k = LN(W x_k)``; each
  selected clip's span ``R_k = MLP_span(q_k)`` (an offset, in logit space, to the clip's own
  proposal ``(center of clip, w0)``) becomes its positional query through the sinusoidal
  encoding of equation 4, :func:`span_positional_query`::

      Phi(R_k) = [PE(2 pi c_k); PE(2 pi w_k)],
      PE(x)_{2i} = sin(x / T^{2i / (d/2)}),  PE(x)_{2i+1} = cos(x / T^{2i / (d/2)}),  T = 10^4

  (each coordinate gets ``d/2`` channels), which the anchor decoder maps to ``d`` channels with
  an MLP and refines layer by layer (DAB-DETR).

  This is DINO's two-stage query selection (:class:`~momentkit.modeling.query_selection.
  QuerySelection`), which the official release (``--use_tgt --use_interm``) uses: ``R_k`` is
  supervised directly (Hungarian matching + span / gIoU / label losses on the selected
  proposals, the ``query_selection`` loss) and enters the decoder detached, and the decoder's
  content queries are learned embeddings (``content="learned"``, the default). The paper's text
  can also be read as the selected clips being the content queries themselves:
  ``content="selected"`` feeds ``q_k`` (with gradient) instead. ``rank`` (:data:`RANK_MODES`)
  chooses what orders the clips: ``"saliency"`` (``S``, as the paper says) or ``"class_logit"``
  (the release: the raw foreground logit of the selection's class head on ``q_k``).
  ``candidates`` (:data:`CANDIDATE_MODES`) chooses which positions may be selected: ``"valid"``
  (valid clips only; a short video repeats its ranking) or ``"all"`` (the release's
  ``gen_encoder_output_proposals``: every position, padding included, competes; a padded
  position, or one whose proposal centre is not inside ``(0.01, 0.99)`` (the first and last clip
  of a video of 50 clips or more), gets zero memory and an infinite anchor logit, so a selected
  one starts from the anchor ``(1, 1)``).
- **MR -> HD.** The decoded moments refine the saliency (:func:`refine_saliency`): a clip inside
  a predicted moment gains ``lambda * max_k p_k m_k(i)``, with ``p_k`` the moment's foreground
  probability (the foreground constraint) and ``m_k(i)`` a soft membership of the clip in its
  boundaries; ``lambda`` is learned. ``refine`` (:data:`REFINE_MODES`) says whether the
  highlight losses reach the moment heads through this term: ``"detached"`` (the default) feeds
  the moments without gradient, so the losses train ``lambda`` and the encoder only;
  ``"joint"`` back-propagates them into ``p_k`` and the spans, where they raise the foreground
  probability of every moment that covers salient clips (on synth 5-6 of the 10 top moments
  end above 0.5 instead of 3, and MR mAP drops; docs/ms_detr.md); ``"off"`` leaves ``S`` as it
  is. The official release has no such term (its saliency is the encoder's ``S``), so this is
  our reading of the paper.

With ``query_selection=False`` (the "w/o MTCD" ablation) the decoder uses ``num_queries`` learned
anchors and zero content queries (QD-DETR's decoder) and the saliency is not refined.

Denoising queries (:mod:`momentkit.modeling.denoising`) share the decoder in training, in front
of the matching queries, under the group attention mask.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from momentkit.modeling.anchor_decoder import inverse_sigmoid
from momentkit.modeling.denoising import DenoisingQueries
from momentkit.modeling.heads import SpanHead
from momentkit.modeling.linear import Linear
from momentkit.modeling.masked_anchor_decoder import MIN_ANCHOR_WIDTH, MaskedAnchorDecoder
from momentkit.modeling.position_encoding import span_sine_encoding
from momentkit.modeling.query_selection import QuerySelection, SelectedQueries, top_k_wrapped

#: initial foreground prior of the class logits (the official init, as DINO)
CLASS_PRIOR = 0.01
#: width of the proposal of a selected clip (the official ``0.05 * 2``)
PROPOSAL_WIDTH = 0.1
#: what the decoder's content queries are under query selection (see the module docstring)
CONTENT_MODES = ("learned", "selected")
#: how the decoded moments refine the saliency (see the module docstring)
REFINE_MODES = ("joint", "detached", "off")
#: what ranks the clips for query selection (see the module docstring)
RANK_MODES = ("saliency", "class_logit")
#: which positions may be selected (see the module docstring)
CANDIDATE_MODES = ("valid", "all")
#: the release's proposal validity range (``gen_encoder_output_proposals``)
VALID_PROPOSAL_RANGE = (0.01, 0.99)


class SentenceSaliency(nn.Module):
    """``S(x_i) = (w_s^T x_s . w_v^T x_i) / sqrt(d)`` (QD-DETR's saliency, MS-DETR eq. 3)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.clip_proj = Linear(d_model, d_model)  # w_v
        self.sentence_proj = Linear(d_model, d_model)  # w_s

    def forward(self, clips: Tensor, sentence: Tensor) -> Tensor:
        """``clips`` ``(B, T, d)``, ``sentence`` ``(B, d)`` -> ``(B, T)`` scores."""
        d = clips.shape[-1]
        v, s = self.clip_proj(clips), self.sentence_proj(sentence)
        return torch.einsum("btd,bd->bt", v, s) / math.sqrt(d)


def clip_proposals(indices: Tensor, video_mask: Tensor, width: float = PROPOSAL_WIDTH) -> Tensor:
    """``(B, K, 2)`` cxw proposals of selected clips: their centre ``(i + 0.5) / T_valid``, ``w``.

    Spans are normalised by the valid timeline (``docs/architecture.md``).
    """
    valid = video_mask.sum(1, keepdim=True).clamp(min=1).to(torch.float32)
    centers = (indices.to(torch.float32) + 0.5) / valid
    return torch.stack([centers, torch.full_like(centers, width)], dim=-1)


def span_positional_query(spans: Tensor, d_model: int, temperature: float = 10000.0) -> Tensor:
    """``Phi(R_k)`` of equation 4: ``(..., 2)`` cxw spans -> ``(..., d_model)`` sinusoids.

    ``[PE(2 pi c); PE(2 pi w)]`` with ``PE(x)_{2i} = sin(x / T^{2i/(d/2)})`` and
    ``PE(x)_{2i+1} = cos(x / T^{2i/(d/2)})``.
    """
    return span_sine_encoding(spans, d_model, temperature)


def boundary_membership(spans: Tensor, video_mask: Tensor, sharpness: float = 4.0) -> Tensor:
    """Soft membership ``m_k(i)`` of each clip in each span, ``(B, K, T)`` in ``(0, 1)``.

    ``sigmoid(sharpness * T_valid * (w_k / 2 - |u_i - c_k|))`` with ``u_i = (i + 0.5) / T_valid``
    the clip centre: about 0.88 for a clip half a clip inside a boundary, 0.12 half a clip
    outside. Padded clips get 0.
    """
    valid = video_mask.sum(1).clamp(min=1).to(spans.dtype)  # (B,)
    t = torch.arange(video_mask.shape[1], device=spans.device, dtype=spans.dtype)
    centers = (t[None, :] + 0.5) / valid[:, None]  # (B, T)
    inside = spans[..., 1:2] / 2 - (centers[:, None, :] - spans[..., 0:1]).abs()  # (B, K, T)
    return torch.sigmoid(sharpness * valid[:, None, None] * inside) * video_mask[:, None, :]


def refine_saliency(
    saliency: Tensor, spans: Tensor, logits: Tensor, video_mask: Tensor, weight: Tensor
) -> Tensor:
    """MR -> HD: ``S'(x_i) = S(x_i) + lambda * max_k p_k m_k(i)``.

    Args:
        saliency: ``(B, T)`` scores ``S``.
        spans: ``(B, K, 2)`` predicted cxw moments; ``logits`` ``(B, K, 2)`` their class logits
            (class 0 foreground, ``p_k`` its softmax probability).
        video_mask: ``(B, T)``.
        weight: ``lambda``, a scalar tensor.

    Returns:
        ``(B, T)`` refined scores.
    """
    fg = logits.softmax(-1)[..., 0]  # (B, K)
    support = (fg[..., None] * boundary_membership(spans, video_mask)).amax(dim=1)  # (B, T)
    return saliency + weight * support


def select_queries(
    selection: QuerySelection,
    clips: Tensor,
    video_mask: Tensor,
    saliency: Tensor,
    rank: str = "saliency",
    candidates: str = "valid",
) -> SelectedQueries:
    """Select the ``K`` matching queries' anchors from the encoded clips.

    Args:
        selection: the query-selection head (``q_k = LN(W x_k)``, class head, ``MLP_span``,
            learned content).
        clips: ``(B, T, d)`` encoded clips; ``video_mask`` ``(B, T)``.
        saliency: ``(B, T)`` ``S``, the ranking when ``rank="saliency"``.
        rank: :data:`RANK_MODES`; candidates: :data:`CANDIDATE_MODES` (module docstring).

    Returns:
        :class:`~momentkit.modeling.query_selection.SelectedQueries` (anchors detached; with
        ``candidates="all"`` an anchor may be ``+inf``, which the decoder's sigmoid maps to 1).
    """
    batch, length = clips.shape[:2]
    every = torch.arange(length, device=clips.device).expand(batch, -1)
    proposals = clip_proposals(every, video_mask).to(clips.dtype)  # (B, T, 2)
    if candidates == "all":
        low, high = VALID_PROPOSAL_RANGE
        usable = video_mask & ((proposals > low) & (proposals < high)).all(-1)
        memory = clips.masked_fill(~usable[..., None], 0.0)
        logit = torch.log(proposals / (1 - proposals)).masked_fill(~usable[..., None], math.inf)
        eligible = torch.ones_like(video_mask)
    else:
        memory, logit, eligible = clips, inverse_sigmoid(proposals), video_mask
    hidden = selection.transform(memory)  # q_k for every position (B, T, d)
    logits = selection.class_embed(hidden)  # (B, T, 2)
    scores = saliency if rank == "saliency" else logits[..., 0]
    index = top_k_wrapped(scores.detach(), eligible, selection.num_queries)
    take = index[..., None]
    sel_hidden = hidden.gather(1, take.expand(-1, -1, hidden.shape[-1]))
    coords = selection.span_embed(sel_hidden) + logit.gather(1, take.expand(-1, -1, 2))
    content = selection.content.weight.unsqueeze(0).expand(batch, -1, -1)
    return SelectedQueries(
        anchors=coords.detach(),
        content=content,
        index=index,
        hidden=sel_hidden,
        enc_logits=logits.gather(1, take.expand(-1, -1, 2)),
        enc_spans=coords.sigmoid(),
    )


def release_selection_init_(selection: QuerySelection) -> None:
    """The release's initialisation of the selection head (``--use_tgt``): Xavier-uniform
    ``W`` (``enc_output``), the foreground prior on both class biases, ``MLP_span``'s last layer
    at zero (momentkit's default init differs only in the first two)."""
    nn.init.xavier_uniform_(selection.enc_output.weight)
    nn.init.constant_(selection.class_embed.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))


class MutualTaskCollaborativeDecoder(nn.Module):
    """MTCD: saliency-driven query selection, anchor decoding (+ denoising), saliency refinement.

    Args:
        d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm: of the
            anchor decoder.
        num_queries: ``K``, matching queries.
        query_selection: top-K saliency queries (MTCD); ``False``: learned anchors (ablation).
        content: decoder content queries with ``query_selection``: ``"learned"`` embeddings
            (the official release, DINO's mixed selection) or the ``"selected"`` clips' ``q_k``.
        refine: how the decoded moments refine the saliency (MTCD's MR -> HD direction), one
            of :data:`REFINE_MODES`: ``"detached"``, ``"joint"`` (with gradient into the moment
            heads) or ``"off"``.
        aux: return ``aux_outputs`` for the earlier decoder layers.
        rank, candidates: how the clips are selected (:func:`select_queries`).
        min_anchor_width: lower bound of the anchor width in the decoder's width modulation
            (the release has none: ``0``).
        selection_init: ``"default"`` or ``"release"`` (:func:`release_selection_init_`).
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_layers: int,
        num_queries: int,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        activation: str = "relu",
        pre_norm: bool = False,
        query_selection: bool = True,
        content: str = "learned",
        refine: str = "detached",
        aux: bool = True,
        rank: str = "saliency",
        candidates: str = "valid",
        min_anchor_width: float = MIN_ANCHOR_WIDTH,
        selection_init: str = "default",
    ) -> None:
        super().__init__()
        for name, value, options in (
            ("content", content, CONTENT_MODES),
            ("refine", refine, REFINE_MODES),
            ("rank", rank, RANK_MODES),
            ("candidates", candidates, CANDIDATE_MODES),
            ("selection_init", selection_init, ("default", "release")),
        ):
            if value not in options:
                raise ValueError(f"MTCD {name} must be one of {options}, got {value!r}")
        self.rank, self.candidates = rank, candidates
        self.refine = refine
        self.d_model, self.num_queries, self.aux = d_model, num_queries, aux
        self.query_selection, self.content = query_selection, content
        self.decoder = MaskedAnchorDecoder(
            d_model, nhead, num_layers, dim_feedforward, dropout, activation, pre_norm
        )
        self.decoder.min_anchor_width = min_anchor_width
        if query_selection:
            # q_k = LN(W x_k) (the official enc_output + enc_output_norm), MLP_span, class head
            self.selection = QuerySelection(d_model, num_queries, [PROPOSAL_WIDTH])
            if selection_init == "release":
                release_selection_init_(self.selection)
        else:
            self.anchors = nn.Embedding(num_queries, 2)
        self.refine_weight = nn.Parameter(torch.ones(())) if refine != "off" else None
        self.label_embed = nn.Embedding(2, d_model)  # content of denoising queries
        self.head = SpanHead(d_model)
        nn.init.constant_(self.head.class_embed.bias, -math.log((1 - CLASS_PRIOR) / CLASS_PRIOR))
        nn.init.zeros_(self.head.span_embed.layers[-1].weight)
        nn.init.zeros_(self.head.span_embed.layers[-1].bias)

    def matching_queries(
        self, clips: Tensor, saliency: Tensor, video_mask: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor] | None]:
        """Content queries ``(B, K, d)``, their anchors ``(B, K, 2)`` before the sigmoid, and the
        selected proposals' predictions (``pred_logits`` / ``pred_spans``, for the
        ``query_selection`` loss; ``None`` without query selection)."""
        batch, length = clips.shape[:2]
        if not self.query_selection:
            anchors = self.anchors.weight.unsqueeze(0).expand(batch, -1, -1)
            return clips.new_zeros(batch, self.num_queries, self.d_model), anchors, None
        if self.rank == "saliency" and self.candidates == "valid":
            every = torch.arange(length, device=clips.device).expand(batch, -1)
            centers = clip_proposals(every, video_mask)[..., 0].to(clips.dtype)  # (B, T)
            sel = self.selection(clips, video_mask, centers, [length], scores=saliency)
        else:
            sel = select_queries(
                self.selection, clips, video_mask, saliency, self.rank, self.candidates
            )
        content = sel.hidden if self.content == "selected" else sel.content
        return content, sel.anchors, {"pred_logits": sel.enc_logits, "pred_spans": sel.enc_spans}

    def forward(
        self,
        clips: Tensor,
        video_pos: Tensor,
        video_mask: Tensor,
        saliency: Tensor,
        denoising: DenoisingQueries | None = None,
    ) -> dict[str, Any]:
        """Decode moments; returns the DETR output dict (``saliency_scores`` refined).

        Args:
            clips: ``(B, T, d)`` encoded clips; ``video_pos`` ``(B, T, d)``; ``video_mask``
                ``(B, T)``.
            saliency: ``(B, T)`` encoder saliency ``S``.
            denoising: denoising queries to decode in front of the matching queries
                (training); their predictions go to ``dn_pred_logits`` / ``dn_pred_spans`` /
                ``dn_queries`` of the output and of every ``aux_outputs`` entry.
        """
        tgt, anchors, selected = self.matching_queries(clips, saliency, video_mask)
        attn_mask = query_mask = None
        if denoising is not None and denoising.num_denoising > 0:
            dn_tgt = self.label_embed(denoising.input_labels)  # (B, D, d)
            dn_anchors = inverse_sigmoid(denoising.spans.to(anchors.dtype))
            tgt = torch.cat([dn_tgt, tgt], dim=1)
            anchors = torch.cat([dn_anchors, anchors], dim=1)
            attn_mask, query_mask = denoising.attn_mask, denoising.key_mask(self.num_queries)
        else:
            denoising = None
        hs, refs = self.decoder(clips, anchors, video_pos, video_mask, tgt, attn_mask, query_mask)
        out = self.head(hs, refs, aux=self.aux)
        if selected is not None:
            out["enc_outputs"] = selected
        if denoising is not None:
            for layer in [out, *out.get("aux_outputs", [])]:
                dn_logits, layer["pred_logits"] = denoising.split(layer["pred_logits"])
                dn_spans, layer["pred_spans"] = denoising.split(layer["pred_spans"])
                layer.update(dn_pred_logits=dn_logits, dn_pred_spans=dn_spans)
                layer["dn_queries"] = denoising
        if self.refine_weight is not None:
            spans, logits = out["pred_spans"], out["pred_logits"]
            if self.refine == "detached":
                spans, logits = spans.detach(), logits.detach()
            saliency = refine_saliency(saliency, spans, logits, video_mask, self.refine_weight)
        out["saliency_scores"] = saliency
        return out
