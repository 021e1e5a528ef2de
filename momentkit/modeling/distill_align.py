"""Distill Align (LD-DETR, Zhao et al. 2025, section 3.2): momentum-distilled video-text alignment.

Contrastive alignment of the global video and query features, ALBEF style, with the one-hot
target softened by a momentum model so that semantically overlapping samples are not pushed
apart as hard negatives:

- momentum copies of both unimodal encoders, ``theta_m <- m * theta_m + (1 - m) * theta``
  (:func:`momentum_update_`), updated once per training forward, i.e. once per optimiser step;
- FIFO queues of the last ``l`` momentum global features of each modality
  (:class:`FeatureQueue`): ``Q_t = [G_mt; queue_t]``, ``Q_v = [G_mv; queue_v]`` ``(B + l, d)``;
- similarities ``S_v2t = s(G_v, Q_t)`` and ``S_v2tm = s(G_mv, Q_t)``: cosine similarity over a
  learnable temperature (0.07, clamped to ``[0.001, 0.5]``, as the official code);
- the distilled target ``S'_v2t = alpha * softmax(S_v2tm) + (1 - alpha) * I``
  (:func:`distillation_targets`, ``I`` the ``(B, B + l)`` identity: each video's own query);
- ``L_v2t = CE(S_v2t, S'_v2t)`` (soft-target cross-entropy over each row), the same for
  text-to-video, ``L_align = (L_v2t + L_t2v) / 2`` (:func:`distill_align_loss`).

The official release adds a term the paper does not describe (``similarity_predictor``):
``L_sim = -(cos(h(ReLU(G_v)), G_t) + cos(h(ReLU(G_t)), G_v)) / 2`` with a linear layer ``h``
(:func:`similarity_loss`; loss ``distill_sim``, term ``loss_sim``, weight 0.6 in the official
code, 0.4 in its Charades-STA script).

:class:`DistillAlign` holds the momentum encoders, the queues and the temperature; a model puts
its output under ``outputs["loss_align"]`` and the ``distill_align`` loss registered here hands it
to the criterion (weight ``loss_align``, 0.6 in the official code).

Defaults are the official code's (qingchen239/ld-detr): queue 65536, momentum 0.995, alpha 0.4,
temperature 0.07. Three switches (:data:`FORMS`) choose between momentkit's handling of padding
and the release's (``ld_detr/model.py``, ``ld_detr/methods.py``):

- ``global_mean``: ``masked`` (default) averages the *valid* clips / tokens; ``official``
  averages every position, padding included;
- ``encoder_padding``: ``masked`` (default) gives the momentum encoders the padding masks (padded
  rows come out as zeros); ``official`` projects the padded rows too;
- ``enqueue``: ``any`` (default) enqueues every batch, wrapping around the ring; ``official``
  drops a batch whose size does not divide the queue length.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from momentkit.modeling.linear import Linear, linear
from momentkit.modeling.losses import register_loss
from momentkit.modeling.matcher import Indices

if TYPE_CHECKING:
    from momentkit.modeling.criterion import LossConfig

#: the official code clamps its learnable temperature to this range before every use
TEMPERATURE_RANGE = (0.001, 0.5)

#: values of the :class:`DistillAlign` switches (the first is momentkit's default)
FORMS = {
    "global_mean": ("masked", "official"),
    "encoder_padding": ("masked", "official"),
    "enqueue": ("any", "official"),
}


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the valid rows: ``x`` ``(B, L, d)``, ``mask`` ``(B, L)`` bool -> ``(B, d)``.

    ``mask=None`` averages every row, padding included (the official code's ``x.mean(1)``).
    """
    if mask is None:
        return x.mean(1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def global_feature(x: Tensor, mask: Tensor | None) -> Tensor:
    """The L2-normalised global feature ``G``: the mean over valid clips / tokens, ``(B, d)``
    (over every position when ``mask`` is ``None``)."""
    return F.normalize(masked_mean(x, mask), dim=-1)


def similarity_loss(predictor: nn.Module, video: Tensor, text: Tensor) -> Tensor:
    """The official release's ``L_sim``: a negative cosine between predicted and actual features.

    ``L_sim = -(mean cos(h(ReLU(G_v)), G_t) + mean cos(h(ReLU(G_t)), G_v)) / 2``
    (``ld_detr/methods.py``, ``DistillAlign.forward``), gradients reaching both sides.

    Args:
        predictor: ``h``, ``(B, d) -> (B, d)``.
        video, text: ``(B, d)`` unit global features ``G_v``, ``G_t``.

    Returns:
        The scalar loss, in ``[-1, 1]``.
    """
    predicted_text = F.cosine_similarity(predictor(F.relu(video)), text, dim=1)
    predicted_video = F.cosine_similarity(predictor(F.relu(text)), video, dim=1)
    return -(predicted_text.mean() + predicted_video.mean()) / 2


@torch.no_grad()
def momentum_update_(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """``theta_m <- m * theta_m + (1 - m) * theta`` for every parameter, in place.

    Args:
        online: the trained encoder (``theta``).
        momentum: its momentum copy (``theta_m``), same architecture.
        m: momentum coefficient in ``[0, 1]`` (``1`` freezes the copy, ``0`` copies ``theta``).
    """
    for p_m, p in zip(momentum.parameters(), online.parameters(), strict=True):
        p_m.mul_(m).add_(p.detach().to(p_m.dtype), alpha=1.0 - m)


class FeatureQueue(nn.Module):
    """A FIFO ring buffer of ``length`` feature vectors (buffers: saved, never trained).

    ``features`` ``(length, dim)`` starts as random unit vectors (as the official code);
    :meth:`enqueue` overwrites the oldest rows. ``ptr`` is the row the next feature goes to, so
    :meth:`ordered` (oldest first) is ``features`` rolled by ``-ptr``.
    """

    features: Tensor
    ptr: Tensor

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"a feature queue needs length >= 1, got {length}")
        self.register_buffer("features", F.normalize(torch.randn(length, dim), dim=1))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))
        self.enqueues = 0  # batches written so far (for :meth:`similarity`'s backward check)

    def __len__(self) -> int:
        return self.features.shape[0]

    def next_rows(self, n: int) -> Tensor:
        """``(min(n, length),)`` the rows the next :meth:`enqueue` of ``n`` features writes."""
        length = len(self)
        return (self.ptr + torch.arange(min(n, length), device=self.ptr.device)) % length

    @torch.no_grad()
    def enqueue(self, x: Tensor, divisible_only: bool = False) -> None:
        """Append ``x`` ``(n, dim)`` (the last ``length`` rows if ``n > length``), in place.

        With ``divisible_only`` (the official code) a batch whose size ``n`` does not divide
        the queue length is dropped, not enqueued.

        A backward pass through similarities with the queue needs its contents from before
        the enqueue: compute them with :meth:`similarity` (or from ``features.clone()``).
        """
        length = len(self)
        if divisible_only and length % len(x):
            return
        x = x.detach()[-length:].to(self.features.dtype)
        self.features.index_copy_(0, self.next_rows(len(x)), x)
        self.ptr.copy_((self.ptr + len(x)) % length)
        self.enqueues += 1

    def ordered(self) -> Tensor:
        """``(length, dim)`` queue contents, oldest first."""
        return self.features.roll(-int(self.ptr), dims=0)

    def similarity(self, x: Tensor, enqueued: int) -> Tensor:
        """``x @ features^T`` ``(B, length)``, differentiable in ``x`` ``(B, dim)``.

        Its backward pass uses the queue as it is now, even after one :meth:`enqueue` of
        ``enqueued`` features in between (a training step: loss, enqueue, backward), without
        a copy of the queue: only the rows that enqueue overwrites are kept (32 of 65536 rows
        in LD-DETR, where copying both queues cost ~5 % of a step) and swapped back in for
        the backward matmul, which is the same ``grad @ features`` as with a copy.
        """
        return _QueueProduct.apply(x, self, self.next_rows(enqueued))


class _QueueProduct(torch.autograd.Function):
    """``x @ queue.features^T`` whose backward sees the features of the forward pass."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, queue: FeatureQueue, rows: Tensor) -> Tensor:
        features = queue.features
        ctx.queue, ctx.rows, ctx.enqueues = queue, rows, queue.enqueues
        ctx.kept = features.index_select(0, rows)
        return linear(x, features.to(x.dtype))  # x @ features^T (oneDNN where faster)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        queue: FeatureQueue = ctx.queue
        if queue.enqueues - ctx.enqueues > 1:
            raise RuntimeError(
                "a feature queue was enqueued more than once between a forward pass and its "
                "backward pass; backpropagate every training forward before the next one"
            )
        features = queue.features
        current = features.index_select(0, ctx.rows)
        features.index_copy_(0, ctx.rows, ctx.kept)
        try:
            return linear(grad, features.to(grad.dtype).t()), None, None  # grad @ features
        finally:
            features.index_copy_(0, ctx.rows, current)


def distillation_targets(momentum_sim: Tensor, alpha: float | Tensor) -> Tensor:
    """``S' = alpha * softmax(S_m) + (1 - alpha) * I``, row-wise over ``(B, B + l)``.

    Args:
        momentum_sim: ``(B, B + l)`` momentum similarities (logits); column ``i < B`` of row
            ``i`` is the sample's own pair.
        alpha: distillation coefficient: ``0`` gives the identity (one-hot) target, ``1`` the
            softmaxed momentum similarities.

    Returns:
        ``(B, B + l)`` targets; every row sums to 1.
    """
    identity = torch.zeros_like(momentum_sim)
    identity.diagonal().fill_(1.0)
    return alpha * momentum_sim.softmax(dim=1) + (1.0 - alpha) * identity


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_i -sum_j targets[i, j] * log_softmax(logits)[i, j]``; ``(B, K)`` inputs."""
    return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()


def similarities(
    x: Tensor, momentum: Tensor, queue: Tensor | FeatureQueue, temperature: float | Tensor
) -> Tensor:
    """``s(x, [momentum; queue]) = x [momentum; queue]^T / temperature``, ``(B, B + l)``.

    Args:
        x: ``(B, d)`` unit features; ``momentum`` ``(B, d)`` the batch's momentum features of the
            other modality and ``queue`` ``(l, d)`` the queued ones (never concatenated: the
            queue is large), or the :class:`FeatureQueue` holding them, which the batch's
            ``B`` momentum features will enter before the backward pass
            (:meth:`FeatureQueue.similarity`).
    """
    own = x @ momentum.T.to(x.dtype)  # (B, B)
    if isinstance(queue, FeatureQueue):
        queued = queue.similarity(x, len(momentum))  # (B, l)
    else:
        queued = linear(x, queue.to(x.dtype))  # (B, l): x @ queue^T
    return torch.cat([own, queued], dim=1) / temperature


def distill_align_loss(
    video: Tensor,
    text: Tensor,
    momentum_video: Tensor,
    momentum_text: Tensor,
    video_queue: Tensor | FeatureQueue,
    text_queue: Tensor | FeatureQueue,
    alpha: float | Tensor,
    temperature: float | Tensor,
) -> Tensor:
    """``L_align = (CE(S_v2t, S'_v2t) + CE(S_t2v, S'_t2v)) / 2`` (section 3.2).

    Args:
        video, text: ``(B, d)`` unit global features ``G_v``, ``G_t`` of the online encoders.
        momentum_video, momentum_text: ``(B, d)`` unit momentum global features ``G_mv``,
            ``G_mt``.
        video_queue, text_queue: ``(l, d)`` queued momentum features (any order), or the
            :class:`FeatureQueue` s holding them (see :func:`similarities`).
        alpha: distillation coefficient.
        temperature: similarities are cosines divided by it.

    Returns:
        The scalar loss; gradients reach ``video``, ``text`` and a tensor ``temperature``.
    """
    with torch.no_grad():
        temp = temperature.detach() if isinstance(temperature, Tensor) else temperature
        queues = [
            q.features if isinstance(q, FeatureQueue) else q for q in (text_queue, video_queue)
        ]
        sim_v2t_m = similarities(momentum_video, momentum_text, queues[0], temp)  # S_v2tm
        sim_t2v_m = similarities(momentum_text, momentum_video, queues[1], temp)  # S_t2vm
        target_v2t = distillation_targets(sim_v2t_m, alpha)
        target_t2v = distillation_targets(sim_t2v_m, alpha)
    sim_v2t = similarities(video, momentum_text, text_queue, temperature)  # S_v2t
    sim_t2v = similarities(text, momentum_video, video_queue, temperature)  # S_t2v
    loss_v2t = soft_cross_entropy(sim_v2t, target_v2t)
    loss_t2v = soft_cross_entropy(sim_t2v, target_t2v)
    return (loss_v2t + loss_t2v) / 2


class DistillAlign(nn.Module):
    """Momentum encoders, feature queues and temperature of Distill Align (section 3.2).

    Args:
        video_encoder, text_encoder: the model's unimodal encoders, called as
            ``encoder(feats (B, L, D), mask (B, L)) -> (B, L, d)``; they are copied (not kept)
            into momentum encoders whose parameters take no gradient.
        dim: width ``d`` of the encoders' outputs.
        queue_size: ``l``, momentum features kept per modality.
        momentum: ``m`` of the momentum update.
        alpha: distillation coefficient.
        temperature: initial learnable temperature.
        alpha_warmup_steps: ramp ``alpha`` linearly from 0 over this many training steps (the
            official code ramps it over the first epoch); 0 disables the ramp.
        similarity_predictor: add the official release's linear layer ``h`` and its loss
            ``loss_sim`` (:func:`similarity_loss`).
        global_mean: ``masked`` (means over valid positions) or ``official`` (over every
            position).
        encoder_padding: ``masked`` (momentum encoders given the masks) or ``official`` (padded
            rows projected too).
        enqueue: ``any`` (every batch enters the queues) or ``official`` (only batches whose
            size divides the queue length).
    """

    steps: Tensor

    def __init__(
        self,
        video_encoder: nn.Module,
        text_encoder: nn.Module,
        dim: int,
        queue_size: int = 65536,
        momentum: float = 0.995,
        alpha: float = 0.4,
        temperature: float = 0.07,
        alpha_warmup_steps: int = 0,
        similarity_predictor: bool = False,
        global_mean: str = "masked",
        encoder_padding: str = "masked",
        enqueue: str = "any",
    ) -> None:
        super().__init__()
        chosen = {
            "global_mean": global_mean,
            "encoder_padding": encoder_padding,
            "enqueue": enqueue,
        }
        for name, value in chosen.items():
            if value not in FORMS[name]:
                raise ValueError(f"{name} must be one of {FORMS[name]}, got '{value}'")
        self.momentum_video_encoder = copy.deepcopy(video_encoder).requires_grad_(False)
        self.momentum_text_encoder = copy.deepcopy(text_encoder).requires_grad_(False)
        self.video_queue = FeatureQueue(queue_size, dim)
        self.text_queue = FeatureQueue(queue_size, dim)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.register_buffer("steps", torch.zeros(1, dtype=torch.long))
        self.momentum = momentum
        self.alpha = alpha
        self.alpha_warmup_steps = alpha_warmup_steps
        self.global_mean = global_mean
        self.encoder_padding = encoder_padding
        self.enqueue_form = enqueue
        self.predictor: nn.Linear | None = None
        if similarity_predictor:
            self.predictor = Linear(dim, dim)
            nn.init.xavier_uniform_(self.predictor.weight)

    def current_alpha(self) -> Tensor:
        """The distillation coefficient of the next step (after the warm-up ramp), ``(1,)``."""
        if self.alpha_warmup_steps <= 0:
            return torch.full_like(self.steps, self.alpha, dtype=torch.float32)
        return self.alpha * (self.steps.float() / self.alpha_warmup_steps).clamp(max=1.0)

    @torch.no_grad()
    def momentum_step(self, encoders: Sequence[nn.Module]) -> None:
        """``theta_m <- m theta_m + (1 - m) theta`` for both momentum encoders.

        :meth:`forward` calls it; a model reproducing the official code, which also updates the
        momentum encoders in evaluation forwards, calls it there too.
        """
        momentum_update_(encoders[0], self.momentum_video_encoder, self.momentum)
        momentum_update_(encoders[1], self.momentum_text_encoder, self.momentum)

    def _masks(self, batch: dict[str, Any], form: str) -> tuple[Tensor | None, Tensor | None]:
        """The clip and token masks of a switch's ``form`` (``None``: every position)."""
        if form == "official":
            return None, None
        return batch["video_mask"].bool(), batch["text_mask"].bool()

    def losses(
        self,
        video: Tensor,
        text: Tensor,
        batch: dict[str, Any],
        encoders: Sequence[nn.Module],
    ) -> dict[str, Tensor]:
        """One training step of Distill Align: momentum update, losses, enqueue.

        Call it once per optimiser step (every training forward of a model is one step for the
        trainer), after the online encoders have run and before the optimiser updates them.

        Args:
            video: ``(B, T, d)`` online video encoder output ``V'``.
            text: ``(B, N, d)`` online text encoder output ``T'``.
            batch: the batch dict (``video_feats``/``video_mask``/``text_feats``/``text_mask``:
                the momentum encoders' inputs).
            encoders: the online ``(video_encoder, text_encoder)`` the momentum copies follow.

        Returns:
            ``{"loss_align": L_align}``, plus ``"loss_sim"`` with ``similarity_predictor``.
        """
        if not self.training:
            raise RuntimeError("Distill Align updates its momentum encoders: call it in training")
        video_mask, text_mask = self._masks(batch, self.global_mean)
        video_rows, text_rows = self._masks(batch, self.encoder_padding)
        alpha = self.current_alpha()
        self.steps += 1
        with torch.no_grad():
            self.momentum_step(encoders)
            momentum_video = self.momentum_video_encoder(batch["video_feats"], video_rows)
            momentum_text = self.momentum_text_encoder(batch["text_feats"], text_rows)
            g_mv = global_feature(momentum_video, video_mask)  # G_mv (B, d)
            g_mt = global_feature(momentum_text, text_mask)  # G_mt (B, d)
            self.temperature.clamp_(*TEMPERATURE_RANGE)
        # the queues themselves: the backward pass sees them as before this step's enqueue
        # (FeatureQueue.similarity), without copying them
        g_v, g_t = global_feature(video, video_mask), global_feature(text, text_mask)
        out = {
            "loss_align": distill_align_loss(
                g_v, g_t, g_mv, g_mt, self.video_queue, self.text_queue, alpha, self.temperature
            )
        }
        if self.predictor is not None:
            out["loss_sim"] = similarity_loss(self.predictor, g_v, g_t)
        divisible_only = self.enqueue_form == "official"
        self.video_queue.enqueue(g_mv, divisible_only)
        self.text_queue.enqueue(g_mt, divisible_only)
        return out

    def forward(
        self,
        video: Tensor,
        text: Tensor,
        batch: dict[str, Any],
        encoders: Sequence[nn.Module],
    ) -> Tensor:
        """``L_align`` of one training step (see :meth:`losses`, which also gives ``loss_sim``)."""
        return self.losses(video, text, batch, encoders)["loss_align"]


@register_loss("distill_align", ("loss_align",))
def loss_distill_align(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The model's ``L_align`` (``outputs["loss_align"]``, present in training mode only)."""
    if "loss_align" not in outputs:
        return {}
    return {"loss_align": outputs["loss_align"]}


@register_loss("distill_sim", ("loss_sim",))
def loss_distill_sim(
    outputs: dict[str, Any], batch: dict[str, Any], indices: Indices, config: LossConfig
) -> dict[str, Tensor]:
    """The official release's ``L_sim`` (``outputs["loss_sim"]``, training mode only; see
    :func:`similarity_loss`)."""
    if "loss_sim" not in outputs:
        return {}
    return {"loss_sim": outputs["loss_sim"]}
