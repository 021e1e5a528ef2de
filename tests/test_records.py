"""Annotation/prediction records, dataset loaders on every real file, malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from momentkit.data import (
    MomentAnnotation,
    load_annotations,
    load_predictions,
    save_annotations,
    save_predictions,
)
from momentkit.data.datasets import DATASETS, load_dataset
from momentkit.utils.errors import FormatError


@pytest.mark.parametrize(
    "name,split",
    [(n, s) for n in DATASETS for s in DATASETS.get(n).splits],
)
def test_every_shared_file_loads(shared_data: Path, name: str, split: str) -> None:
    records = load_dataset(name, split, shared_data)
    assert len(records) > 0
    spec = DATASETS.get(name)
    for r in records:
        assert r.duration > 0 and r.query is not None and r.vid
        if "hd" in spec.tasks and (split != "test"):
            assert len(r.saliency_scores) == len(r.relevant_clip_ids) > 0
        if spec.tasks == ("mr",):
            assert r.relevant_windows and all(w[1] >= w[0] for w in r.relevant_windows)
    if name == "tvsum":
        assert all(len(row) == 20 for r in records for row in r.saliency_scores)
        assert all(r.domain for r in records)
    if name == "youtube_highlights":
        assert {r.domain for r in records} >= {"dog"}
    if name == "qvhighlights" and split == "val":
        assert all(len(row) == 3 for r in records for row in r.saliency_scores)


def test_round_trip_preserves_rows(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "qvhighlights" / "highlight_val_release.jsonl"
    records = load_annotations(src)
    save_annotations(tmp_path / "out.jsonl", records)
    original = [json.loads(line) for line in src.read_text().splitlines()]
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert original == written
    preds = load_predictions(shared_data / "qvhighlights" / "sample_val_preds.jsonl")
    save_predictions(tmp_path / "p.jsonl", preds)
    assert load_predictions(tmp_path / "p.jsonl") == preds


def test_mean_saliency() -> None:
    a = MomentAnnotation(1, "q", "v", 10, [[2, 6]], [1, 2], [[1, 3, 2], [4, 4, 4]])
    assert a.mean_saliency(4) == [0.0, 2.0, 4.0, 0.0]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = '{"qid": 1, "query": "a", "vid": "v", "duration": 10, "relevant_windows": [[0, 2]]}'


@pytest.mark.parametrize(
    "bad,field,words",
    [
        (
            '{"qid": 2, "query": "a", "vid": "v", "duration": 10, "relevant_windows": [[5, 2]]}',
            "relevant_windows[0]",
            "before start",
        ),
        ('{"qid": 2, "query": "a", "vid": "v", "duration": -1}', "duration", "positive"),
        ('{"qid": 2, "query": "a", "vid": "v"}', "duration", "missing"),
        ('{"query": "a", "vid": "v", "duration": 3}', "qid", "missing"),
        ('{"qid": 2, "query": 5, "vid": "v", "duration": 3}', "query", "string"),
        (
            '{"qid": 2, "query": "a", "vid": "v", "duration": 3, "relevant_windows": [[0]]}',
            "relevant_windows[0]",
            "[start, end]",
        ),
        (
            '{"qid": 2, "query": "a", "vid": "v", "duration": 3, "relevant_clip_ids": [0, 1],'
            ' "saliency_scores": [[1, 2, 3]]}',
            "saliency_scores",
            "2 entries",
        ),
        ('{"qid": 1, "query": "a", "vid": "v", "duration": 3}', "qid", "duplicate"),
    ],
)
def test_malformed_rows_name_file_line_field(
    tmp_path: Path, bad: str, field: str, words: str
) -> None:
    path = _write(tmp_path, [GOOD, "", bad])
    with pytest.raises(FormatError) as info:
        load_annotations(path)
    err = info.value
    assert err.path == str(path) and err.line == 3 and err.field == field
    assert f"{path}:3: field '{field}'" in str(err) and words in str(err)


def test_invalid_json_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, '{"qid": 2, "query": '])
    with pytest.raises(FormatError, match=r"bad\.jsonl:2: invalid JSON"):
        load_annotations(path)


def test_prediction_window_needs_score(tmp_path: Path) -> None:
    path = _write(tmp_path, ['{"qid": 1, "pred_relevant_windows": [[0, 2]]}'])
    with pytest.raises(FormatError, match=r"\[start, end, score\]"):
        load_predictions(path)


def test_tvsum_label_error_names_line(tmp_path: Path) -> None:
    from momentkit.data.datasets import _labels_to_saliency

    path = _write(
        tmp_path,
        [
            '{"qid": "a", "query": "t", "vid": "a", "duration": 4, "label": [[1, 2]]}',
            '{"qid": "b", "query": "t", "vid": "b", "duration": 4, "label": [[]]}',
        ],
    )
    with pytest.raises(FormatError) as info:
        load_annotations(path, _labels_to_saliency)
    assert info.value.line == 2 and info.value.field == "label"


@pytest.mark.parametrize(
    "values, ok",
    [
        ([0.5, 1, 2.0], True),
        ([], True),
        ([1.0, float("nan")], False),
        ([1.0, float("inf")], False),
        ([True, 1.0], False),
        ([1e308, 1e308], True),  # the sum overflows, every value is finite
        ([10**400], False),  # beyond the float range
        (["1.0"], False),
    ],
)
def test_all_numbers_fast_path_agrees_with_the_elementwise_check(values, ok) -> None:
    from momentkit.data.records import _all_numbers, _is_number

    assert _all_numbers(values) is ok
    assert all(map(_is_number, values)) is ok
