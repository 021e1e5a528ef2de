"""MomentDataset, collate (the batch dict), label sampling and the epoch sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.data.loader import (
    EpochSampler,
    MomentDataset,
    build_dataloader,
    collate,
    saliency_labels,
    set_loader_epoch,
    span_targets,
)
from momentkit.data.records import MomentAnnotation
from momentkit.features import NpzFeatureStore, pack_features
from momentkit.utils.errors import FeatureError, FormatError
from momentkit.utils.prefetch import prefetch

SF_DIM, CLIP_DIM, TXT_DIM = 5, 3, 4


def ann(qid, vid="v0", duration=20.0, windows=None, clip_ids=None, scores=None) -> MomentAnnotation:
    return MomentAnnotation(
        qid, f"query {qid}", vid, duration, windows or [], clip_ids or [], scores or []
    )


@pytest.fixture()
def feats(tmp_path: Path) -> Path:
    """Two video streams (v0: 12/11 clips, v1: 6/6 clips, v2: 40/40) and 3 queries."""
    rng = np.random.default_rng(0)
    for stream, dim, lengths in (("sf", SF_DIM, (12, 6, 40)), ("clip", CLIP_DIM, (11, 6, 40))):
        (tmp_path / stream).mkdir()
        for i, n in enumerate(lengths):
            np.savez(tmp_path / stream / f"v{i}.npz", features=rng.normal(size=(n, dim)))
    (tmp_path / "txt").mkdir()
    for qid, n in ((0, 3), (1, 7), (2, 5)):
        np.savez(
            tmp_path / "txt" / f"qid{qid}.npz",
            last_hidden_state=rng.normal(size=(n, TXT_DIM)),
            pooler_output=rng.normal(size=TXT_DIM),
        )
    return tmp_path


def annotations() -> list[MomentAnnotation]:
    return [
        ann(0, "v0", 24.0, [[4, 8]], [2, 3], [[1, 2, 3], [4, 4, 4]]),
        ann(1, "v1", 12.0, [[0, 4], [6, 12]], [0, 1, 3, 4, 5], [[1, 1, 1]] * 5),
        ann(2, "v2", 80.0, [[10, 20]]),  # MR-only, like Charades-STA
    ]


def dataset(feats: Path, **kw) -> MomentDataset:
    kw = {"max_v_len": 10, "max_q_len": 5, **kw}
    return MomentDataset(annotations(), [feats / "sf", feats / "clip"], feats / "txt", **kw)


# ------------------------------------------------------------------------------------ batches
def test_collate_shapes_masks_and_padding(feats: Path) -> None:
    ds = dataset(feats)
    assert len(ds) == 3 and ds.video_dim == SF_DIM + CLIP_DIM + 2 and ds.text_dim == TXT_DIM
    batch = collate([ds[i] for i in range(3)])
    B, T, Dv = batch["video_feats"].shape
    assert (B, T, Dv) == (3, 10, 10)  # v0: 11 clips cut to 10, v1: 6, v2: 40 cut to 10
    assert batch["video_feats"].dtype == torch.float32
    assert batch["video_mask"].dtype == torch.bool
    assert batch["video_mask"].sum(1).tolist() == [10, 6, 10]
    assert batch["text_feats"].shape == (3, 5, TXT_DIM)
    assert batch["text_mask"].sum(1).tolist() == [3, 5, 5]
    assert (batch["video_feats"][1, 6:] == 0).all() and (batch["text_feats"][0, 3:] == 0).all()
    # TEF of the 6-clip video are in the last two channels of its real clips
    assert torch.allclose(batch["video_feats"][1, :6, -2], torch.arange(6) / 6)
    assert batch["duration"].tolist() == [24.0, 12.0, 80.0]
    assert batch["duration"].dtype == torch.float32
    assert batch["clip_len"] == 2.0
    assert batch["qids"] == [0, 1, 2] and batch["vids"] == ["v0", "v1", "v2"]
    assert [a.qid for a in batch["annotations"]] == [0, 1, 2]
    assert [t["spans"].shape for t in batch["span_targets"]] == [(1, 2), (2, 2), (1, 2)]
    assert batch["span_targets"][0]["spans"].dtype == torch.float32
    assert batch["saliency_all_labels"].shape == (3, 10)
    for key in ("saliency_pos_labels", "saliency_neg_labels"):
        assert batch[key].shape == (3, 2) and batch[key].dtype == torch.int64
    assert set(batch) == {
        "video_feats", "video_mask", "text_feats", "text_mask", "duration", "clip_len",
        "qids", "vids", "annotations", "span_targets", "saliency_all_labels",
        "saliency_pos_labels", "saliency_neg_labels",
    }  # fmt: skip


def test_packed_and_npz_stores_give_identical_batches(feats: Path) -> None:
    packed = [
        pack_features(NpzFeatureStore(feats / d), feats / f"{d}.packed", progress=False)
        for d in ("sf", "clip", "txt")
    ]
    a = collate([dataset(feats)[i] for i in range(3)])
    ds_packed = MomentDataset(annotations(), packed[:2], packed[2], max_v_len=10, max_q_len=5)
    b = collate([ds_packed[i] for i in range(3)])
    for key in ("video_feats", "video_mask", "text_feats", "saliency_pos_labels"):
        assert torch.equal(a[key], b[key]), key


def test_options_change_the_features(feats: Path) -> None:
    item = dataset(feats, use_tef=False, normalize_video=False, normalize_text=False)[1]
    raw = np.load(feats / "sf" / "v1.npz")["features"].astype(np.float32)
    assert item.video.shape == (6, SF_DIM + CLIP_DIM)
    np.testing.assert_array_equal(item.video[:, :SF_DIM], raw)
    normed = dataset(feats)[1]
    np.testing.assert_allclose(np.linalg.norm(normed.video[:, :SF_DIM], axis=1), 1, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(normed.text, axis=1), 1, rtol=1e-4)


# ------------------------------------------------------------------------------------- labels
def test_span_targets_clip_to_truncated_video() -> None:
    # 8 clips of 2 s cover 16 s; [10, 20] is clipped to [10, 16]; [18, 20] lies outside
    got = span_targets([[2, 6], [10, 20], [18, 20]], num_clips=8, clip_len=2.0)
    np.testing.assert_allclose(got, [[0.25, 0.25], [0.8125, 0.375]])
    assert got.dtype == np.float32
    assert span_targets([], 8, 2.0).shape == (0, 2)


def test_span_targets_keep_a_seeded_subset_of_many_windows() -> None:
    windows = [[2 * i, 2 * i + 1] for i in range(8)]
    a = span_targets(windows, 20, 2.0, np.random.default_rng(3), max_windows=5)
    b = span_targets(windows, 20, 2.0, np.random.default_rng(3), max_windows=5)
    assert a.shape == (5, 2)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        span_targets(windows, 20, 2.0, None, max_windows=5)


def test_dataset_span_targets_for_a_hand_made_annotation(feats: Path) -> None:
    spans = dataset(feats)[1].spans  # v1 has 6 clips = 12 s; windows [0, 4] and [6, 12]
    np.testing.assert_allclose(spans, [[2 / 12, 4 / 12], [9 / 12, 6 / 12]], rtol=1e-6)


def test_saliency_labels_with_scores() -> None:
    a = ann(0, clip_ids=[2, 3, 4, 9], scores=[[1, 1, 1], [4, 4, 3], [0, 1, 0], [4, 4, 4]])
    for seed in range(20):
        all_, pos, neg = saliency_labels(
            a, num_clips=8, clip_len=2.0, rng=np.random.default_rng(seed)
        )
        # clip 9 lies past the 8 clips: ignored (it would otherwise be the best positive)
        np.testing.assert_allclose(all_, [0, 0, 1, 11 / 3, 1 / 3, 0, 0, 0], rtol=1e-6)
        assert pos[0] == 3 and neg[0] == 4  # highest / lowest scored relevant clip
        assert pos[1] in (2, 3, 4) and neg[1] in (0, 1, 5, 6, 7)
        assert pos.dtype == neg.dtype == np.int64


def test_saliency_labels_when_every_clip_is_relevant() -> None:
    a = ann(0, clip_ids=[0, 1, 2], scores=[[2], [5], [1]])  # e.g. TVSum: all clips scored
    _, pos, neg = saliency_labels(a, 3, 2.0, np.random.default_rng(0))
    assert pos.tolist() == [1, 1] and neg.tolist() == [2, 2]


def test_saliency_labels_when_annotated_clips_are_truncated_away() -> None:
    a = ann(0, clip_ids=[20, 21], scores=[[1], [2]])
    all_, pos, neg = saliency_labels(a, 5, 2.0, np.random.default_rng(0))
    assert not all_.any() and pos.tolist() == [4, 4] and neg[0] == 4 and neg[1] in range(4)


def test_saliency_labels_from_windows_only() -> None:
    a = ann(0, windows=[[2.5, 5.3]])  # 1 s clips -> clips 2, 3, 4 (Lighthouse's rule)
    for seed in range(20):
        all_, pos, neg = saliency_labels(a, 10, 1.0, np.random.default_rng(seed))
        np.testing.assert_array_equal(all_, [0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
        assert set(pos.tolist()) <= {2, 3, 4} and pos[0] != pos[1]
        assert not set(neg.tolist()) & {2, 3, 4} and neg[0] != neg[1]
    _, pos, neg = saliency_labels(ann(0, windows=[[0, 4]]), 2, 2.0, np.random.default_rng(0))
    assert pos.tolist() in ([0, 1], [1, 0]) and neg.tolist() == pos.tolist()  # nothing outside


def test_highlight_only_records_have_empty_span_targets(feats: Path) -> None:
    hd = ann(0, "v1", 12.0, clip_ids=[0, 1, 2], scores=[[1], [3], [2]])
    ds = MomentDataset([hd], [feats / "sf"], feats / "txt")
    batch = collate([ds[0]])
    assert batch["span_targets"][0]["spans"].shape == (0, 2)
    assert batch["saliency_all_labels"][0, :3].tolist() == [1, 3, 2]
    assert batch["saliency_pos_labels"][0, 0] == 1 and batch["saliency_neg_labels"][0, 0] == 0


# -------------------------------------------------------------------------------- determinism
def labels(ds: MomentDataset, index) -> tuple[list[int], list[int]]:
    item = ds[index]
    return item.saliency_pos.tolist(), item.saliency_neg.tolist()


def test_sampling_is_determined_by_seed_epoch_and_index(feats: Path) -> None:
    many = [ann(q, "v2", 80.0, [[10, 20]]) for q in range(3)] * 10
    ds = MomentDataset(many, [feats / "sf"], feats / "txt", seed=0)
    again = MomentDataset(many, [feats / "sf"], feats / "txt", seed=0)
    other_seed = MomentDataset(many, [feats / "sf"], feats / "txt", seed=1)

    def epoch_labels(d: MomentDataset, epoch: int) -> list:
        d.set_epoch(epoch)
        return [labels(d, i) for i in range(len(d))]

    e0, e1 = epoch_labels(ds, 0), epoch_labels(ds, 1)
    assert e0 != e1  # labels are resampled each epoch
    assert epoch_labels(again, 1) == e1 and epoch_labels(again, 0) == e0  # in any order
    assert epoch_labels(other_seed, 0) != e0
    assert [labels(ds, (1, i)) for i in range(len(ds))] == e1  # (epoch, index) from the sampler
    assert labels(ds, 3) != labels(ds, 6) or labels(ds, 4) != labels(ds, 7)  # per-index streams

    evaluation = MomentDataset(many, [feats / "sf"], feats / "txt", training=False)
    assert epoch_labels(evaluation, 0) == epoch_labels(evaluation, 5)


def test_dataloader_workers_reproduce_main_process_labels(feats: Path) -> None:
    many = [ann(q, "v2", 80.0, [[10, 20]]) for q in range(3)] * 4
    ds = MomentDataset(many, [feats / "sf", feats / "clip"], feats / "txt", seed=7)

    def run(num_workers: int) -> list[list[list[int]]]:
        loader = build_dataloader(ds, batch_size=4, num_workers=num_workers)
        epochs = []
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            epochs.append([b["saliency_pos_labels"].tolist() + b["qids"] for b in loader])
        return epochs

    main_process = run(0)
    assert main_process[0] != main_process[1]
    assert run(1) == main_process  # persistent workers still see the new epoch


# ------------------------------------------------------------------------------- bad datasets
def test_missing_features_fail_at_construction(feats: Path) -> None:
    with pytest.raises(FeatureError) as e:
        MomentDataset([ann(0, "ghost", windows=[[0, 2]])], [feats / "sf"], feats / "txt")
    assert "ghost" in str(e.value) and str(feats / "sf") in str(e.value)
    with pytest.raises(FeatureError) as e:
        MomentDataset([ann(42, "v0", windows=[[0, 2]])], [feats / "sf"], feats / "txt")
    assert "qid42" in str(e.value) and str(feats / "txt") in str(e.value)


def test_unlabelled_annotations(feats: Path) -> None:
    test_split = [ann(0, "v0"), ann(1, "v1")]
    with pytest.raises(FormatError, match="query 0 has neither relevant_windows"):
        MomentDataset(test_split, [feats / "sf"], feats / "txt")
    ds = MomentDataset(test_split, [feats / "sf"], feats / "txt", training=False)
    batch = collate([ds[0], ds[1]])
    assert "span_targets" not in batch and "saliency_pos_labels" not in batch
    mixed = MomentDataset([ann(0, "v0"), *annotations()[1:2]], [feats / "sf"], feats / "txt",
                          training=False)  # fmt: skip
    batch = collate([mixed[0], mixed[1]])
    assert batch["span_targets"][0]["spans"].shape == (0, 2)
    assert batch["saliency_pos_labels"][0].tolist() == [0, 0]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


# ------------------------------------------------------------------------------------ sampler
def test_epoch_sampler_orders() -> None:
    s = EpochSampler(10, seed=3)
    first = list(s)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {0}
    assert list(s) == first
    s.set_epoch(1)
    second = list(s)
    assert [i for _, i in second] != [i for _, i in first] and second[0][0] == 1
    assert [i for _, i in EpochSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_epoch_sampler_shards_like_distributed_sampler() -> None:
    shards = [EpochSampler(10, num_replicas=3, rank=r, seed=1) for r in range(3)]
    parts = [[i for _, i in s] for s in shards]
    assert [len(p) for p in parts] == [4, 4, 4] and all(len(s) == 4 for s in shards)
    assert set().union(*parts) == set(range(10))  # padded by wrapping around
    dropped = [
        [i for _, i in EpochSampler(10, num_replicas=3, rank=r, drop_last=True)] for r in range(3)
    ]
    assert [len(p) for p in dropped] == [3, 3, 3] and len(set().union(*dropped)) == 9
    with pytest.raises(ValueError, match="rank 3"):
        EpochSampler(10, num_replicas=3, rank=3)


def test_prefetched_loader_gives_the_same_batches(feats: Path) -> None:
    loader = build_dataloader(dataset(feats), batch_size=2)
    plain = [b["saliency_pos_labels"].tolist() for b in loader]
    assert [b["saliency_pos_labels"].tolist() for b in prefetch(loader)] == plain


# ------------------------------------------------------------------------- real annotations
@pytest.mark.parametrize("name", ["qvhighlights", "charades_sta", "tacos", "activitynet", "tvsum",
                                  "youtube_highlights"])  # fmt: skip
def test_real_annotations_give_valid_targets(shared_data: Path, tmp_path: Path, name: str) -> None:
    from momentkit.data.datasets import DATASETS, load_dataset

    spec = DATASETS.get(name)
    records = load_dataset(name, next(iter(spec.splits)), shared_data)[:40]
    rng = np.random.default_rng(0)
    (tmp_path / "v").mkdir()
    (tmp_path / "t").mkdir()
    for r in records:  # tiny random features with one row per clip of the video
        num_clips = max(1, int(np.ceil(r.duration / spec.clip_len)))
        np.savez(tmp_path / "v" / f"{r.vid}.npz", features=rng.normal(size=(num_clips, 4)))
        np.savez(tmp_path / "t" / f"qid{r.qid}.npz", last_hidden_state=rng.normal(size=(3, 4)))
    max_v_len = 75 if name == "qvhighlights" else None  # long videos: keep every clip
    ds = MomentDataset(
        records, [tmp_path / "v"], tmp_path / "t", clip_len=spec.clip_len, max_v_len=max_v_len
    )
    for i in range(len(ds)):
        item = ds[i]
        num_clips = item.video.shape[0]
        assert item.saliency_all.shape == (num_clips,)
        spans = item.spans
        assert ((spans >= 0) & (spans <= 1)).all() and (spans[:, 1] > 0).all()
        assert (spans[:, 0] - spans[:, 1] / 2 >= -1e-6).all()
        assert (spans[:, 0] + spans[:, 1] / 2 <= 1 + 1e-6).all()
        assert len(spans) == min(len(item.annotation.relevant_windows), 5)
        for clips in (item.saliency_pos, item.saliency_neg):
            assert ((clips >= 0) & (clips < num_clips)).all()
        if item.annotation.relevant_clip_ids and item.saliency_all.any():
            assert item.saliency_all[item.saliency_pos[0]] == item.saliency_all.max()
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["video_feats"].shape[:2] == batch["saliency_all_labels"].shape
