"""Hungarian matcher: cost terms, optimality against brute force, batching over layers."""

from __future__ import annotations

import itertools

import pytest
import torch

from momentkit.modeling.matcher import HungarianMatcher, MatcherConfig, matching_cost, pad_targets
from momentkit.structures.spans import generalized_temporal_iou, span_cxw_to_xx

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_cost(
    logits: torch.Tensor, spans: torch.Tensor, tgt: torch.Tensor, cfg: MatcherConfig
):
    """Cost matrix ``(Q, n)`` of one video, written independently of the matcher."""
    prob = logits.softmax(-1)[:, 0]
    l1 = torch.cdist(spans, tgt, p=1)
    giou = generalized_temporal_iou(span_cxw_to_xx(spans), span_cxw_to_xx(tgt))
    return cfg.cost_span * l1 - cfg.cost_giou * giou - cfg.cost_class * prob[:, None]


def random_spans(n: int, gen: torch.Generator) -> torch.Tensor:
    center = torch.rand(n, generator=gen) * 0.8 + 0.1
    width = torch.rand(n, generator=gen) * 0.3 + 0.02
    return torch.stack([center, width], -1)


def brute_force_min(cost: torch.Tensor) -> float:
    """Least total cost of a one-to-one assignment of min(Q, n) pairs."""
    q, n = cost.shape
    if n <= q:
        return min(
            sum(cost[r, c].item() for c, r in enumerate(rows))
            for rows in itertools.permutations(range(q), n)
        )
    return min(
        sum(cost[r, c].item() for r, c in enumerate(cols))
        for cols in itertools.permutations(range(n), q)
    )


def test_matching_cost_matches_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    cfg = MatcherConfig(cost_span=3.0, cost_giou=2.0, cost_class=5.0)
    logits, spans = (
        torch.randn(2, 4, 2, generator=gen),
        torch.stack([random_spans(4, gen) for _ in range(2)]),
    )
    targets = [random_spans(3, gen), random_spans(1, gen)]
    padded, counts = pad_targets(targets, torch.device("cpu"))
    assert padded.shape == (2, 3, 2) and counts.tolist() == [3, 1]
    cost = matching_cost(logits, spans, padded, cfg)
    for b, t in enumerate(targets):
        expected = reference_cost(logits[b], spans[b], t, cfg)
        assert torch.allclose(cost[b, :, : len(t)], expected, atol=1e-5)


@pytest.mark.parametrize("seed", range(12))
def test_matcher_is_optimal(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    num_queries = 5
    counts = [int(torch.randint(0, 7, (1,), generator=gen)) for _ in range(3)]
    logits = torch.randn(3, num_queries, 2, generator=gen)
    spans = torch.stack([random_spans(num_queries, gen) for _ in range(3)])
    targets = [random_spans(n, gen) for n in counts]
    cfg = MatcherConfig()
    indices = HungarianMatcher(cfg)(logits, spans, targets)
    for b, (rows, cols) in enumerate(indices):
        n = counts[b]
        assert len(rows) == len(cols) == min(num_queries, n)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        if n == 0:
            continue
        cost = reference_cost(logits[b], spans[b], targets[b], cfg)
        total = cost[rows, cols].sum().item()
        assert total == pytest.approx(brute_force_min(cost), abs=1e-4)


def test_matcher_recovers_a_permutation() -> None:
    targets = [torch.tensor([[0.2, 0.1], [0.5, 0.2], [0.8, 0.1]])]
    order = torch.tensor([2, 0, 1])
    spans = targets[0][order].unsqueeze(0)
    logits = torch.zeros(1, 3, 2)
    rows, cols = HungarianMatcher()(logits, spans, targets)[0]
    assert torch.equal(targets[0][cols], spans[0][rows])
    assert rows.dtype == cols.dtype == torch.int64


def test_match_layers_equals_matching_each_layer() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 6, 2, generator=gen)
    spans = torch.stack([torch.stack([random_spans(6, gen) for _ in range(2)]) for _ in range(3)])
    targets = [random_spans(2, gen), random_spans(4, gen)]
    matcher = HungarianMatcher()
    batched = matcher.match_layers(logits, spans, targets)
    for layer in range(3):
        single = matcher(logits[layer], spans[layer], targets)
        for (r1, c1), (r2, c2) in zip(batched[layer], single):
            assert torch.equal(r1, r2) and torch.equal(c1, c2)


def test_matcher_weights_change_the_assignment() -> None:
    # query 0 is confident but badly placed; query 1 is well placed but unsure
    spans = torch.tensor([[[0.2, 0.1], [0.7, 0.2]]])
    logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])
    targets = [torch.tensor([[0.7, 0.2]])]
    by_span = HungarianMatcher(MatcherConfig(cost_span=10, cost_giou=0, cost_class=0))
    by_class = HungarianMatcher(MatcherConfig(cost_span=0, cost_giou=0, cost_class=1))
    assert by_span(logits, spans, targets)[0][0].tolist() == [1]
    assert by_class(logits, spans, targets)[0][0].tolist() == [0]


def test_all_zero_costs_rejected() -> None:
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(MatcherConfig(0, 0, 0))
    with pytest.raises(ValueError, match="cost_giou"):
        MatcherConfig(cost_giou=-1).validate()
