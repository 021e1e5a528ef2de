"""Feature stores (.npz directory, packed), multi-stream sources, TEF, errors, `momentkit pack`."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.cli.main import main
from momentkit.features import (
    NpzFeatureStore,
    PackedFeatureStore,
    TextFeatureSource,
    VideoFeatureSource,
    append_tef,
    l2_normalize,
    open_feature_store,
    pack_features,
    temporal_endpoint_features,
)
from momentkit.utils.errors import FeatureError


def make_dir(
    root: Path, shapes: dict[str, tuple[int, ...]], field: str = "features", seed: int = 0
):
    """Write ``<root>/<key>.npz`` files of random float64 arrays; return them as float32."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, shape in shapes.items():
        a = rng.normal(size=shape) * 3
        np.savez(root / f"{key}.npz", **{field: a})
        arrays[key] = a.astype(np.float32)
    return arrays


def make_text_dir(root: Path, lengths: dict[int, int], dim: int = 6, seed: int = 1):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for qid, n in lengths.items():
        tokens, pooled = rng.normal(size=(n, dim)), rng.normal(size=dim)
        np.savez(root / f"qid{qid}.npz", last_hidden_state=tokens, pooler_output=pooled)
        out[qid] = (tokens.astype(np.float32), pooled.astype(np.float32))
    return out


def moment_detr_video(streams: list[np.ndarray], max_len: int) -> np.ndarray:
    """Reference: Moment-DETR's per-stream truncate + normalise, cut to shortest, concat, TEF."""
    feats = [
        s[:max_len] / (np.linalg.norm(s[:max_len], axis=-1, keepdims=True) + 1e-5) for s in streams
    ]
    n = min(len(f) for f in feats)
    v = torch.from_numpy(np.concatenate([f[:n] for f in feats], axis=1))
    st = torch.arange(0, n, 1.0) / n
    tef = torch.stack([st, st + 1.0 / n], dim=1)
    return torch.cat([v, tef], dim=1).numpy()


# ------------------------------------------------------------------------------------ stores
def test_npz_store_reads_float32_2d(tmp_path: Path) -> None:
    arrays = make_dir(tmp_path / "v", {"b": (4, 3), "a": (6, 3)})
    store = NpzFeatureStore(tmp_path / "v")
    assert store.keys() == ["a", "b"] and len(store) == 2
    assert "a" in store and "zzz" not in store
    assert store.dim == 3
    got = store.get("a")
    assert got.dtype == np.float32 and got.shape == (6, 3)
    np.testing.assert_array_equal(got, arrays["a"])
    np.testing.assert_array_equal(store.get("a", max_rows=2), arrays["a"][:2])


def test_npz_store_text_fields(tmp_path: Path) -> None:
    texts = make_text_dir(tmp_path / "t", {7: 5})
    tokens = NpzFeatureStore(tmp_path / "t").get("qid7")  # default: last_hidden_state
    np.testing.assert_array_equal(tokens, texts[7][0])
    pooled = NpzFeatureStore(tmp_path / "t", field="pooler_output").get("qid7")
    assert pooled.shape == (1, 6)
    np.testing.assert_array_equal(pooled[0], texts[7][1])


def test_npz_store_cache_returns_read_only_arrays(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (4, 3)})
    store = NpzFeatureStore(tmp_path / "v", cache=True)
    first = store.get("a")
    (tmp_path / "v" / "a.npz").unlink()  # the second read must come from memory
    np.testing.assert_array_equal(store.get("a"), first)
    with pytest.raises(ValueError):
        first[0, 0] = 1.0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_packed_store_matches_npz_store(tmp_path: Path, dtype: str) -> None:
    make_dir(tmp_path / "v", {"x": (5, 4), "y": (1, 4), "z": (9, 4)})
    npz = NpzFeatureStore(tmp_path / "v")
    packed = pack_features(npz, tmp_path / "p", dtype=dtype, progress=False)
    assert isinstance(packed, PackedFeatureStore)
    assert packed.keys() == npz.keys() and len(packed) == 3 and packed.dim == npz.dim == 4
    assert "x" in packed and "w" not in packed
    for key in npz.keys():
        got = packed.get(key)
        assert got.dtype == np.float32 and got.shape == npz.get(key).shape
        if dtype == "float32":
            np.testing.assert_array_equal(got, npz.get(key))
        else:
            np.testing.assert_allclose(got, npz.get(key), rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(packed.get(key, max_rows=3), got[:3])
    reopened = open_feature_store(tmp_path / "p")
    assert isinstance(reopened, PackedFeatureStore)
    np.testing.assert_array_equal(reopened.get("z"), packed.get("z"))


def test_packed_store_pickles_without_its_data(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (50, 64)})
    store = pack_features(NpzFeatureStore(tmp_path / "v"), tmp_path / "p", progress=False)
    store.get("a")  # maps the file
    blob = pickle.dumps(store)
    assert len(blob) < 50 * 64 * 4  # the map is not shipped to DataLoader workers
    np.testing.assert_array_equal(pickle.loads(blob).get("a"), store.get("a"))


def test_packed_store_detects_truncated_data(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (5, 4)})
    pack_features(NpzFeatureStore(tmp_path / "v"), tmp_path / "p", progress=False)
    data = tmp_path / "p" / "data.bin"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(FeatureError, match="re-run `momentkit pack`"):
        PackedFeatureStore(tmp_path / "p")


def test_open_feature_store_picks_the_kind(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (2, 3)})
    assert isinstance(open_feature_store(tmp_path / "v"), NpzFeatureStore)
    store = NpzFeatureStore(tmp_path / "v")
    assert open_feature_store(store) is store
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatureError, match="neither .npz feature files nor a packed store"):
        open_feature_store(tmp_path / "empty")
    with pytest.raises(FeatureError, match="no such feature directory"):
        open_feature_store(tmp_path / "nope")


# ------------------------------------------------------------------------------------ errors
def test_missing_key_names_key_and_directory(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (2, 3)})
    with pytest.raises(FeatureError) as e:
        NpzFeatureStore(tmp_path / "v").get("vid_missing")
    assert "vid_missing" in str(e.value) and str(tmp_path / "v") in str(e.value)
    make_text_dir(tmp_path / "t", {1: 3})
    packed = pack_features(NpzFeatureStore(tmp_path / "t"), tmp_path / "tp", progress=False)
    with pytest.raises(FeatureError) as e:
        packed.get("qid99")
    assert "query 'qid99'" in str(e.value) and str(tmp_path / "tp") in str(e.value)


def test_dimension_mismatch_names_both_files(tmp_path: Path) -> None:
    make_dir(tmp_path / "v", {"a": (2, 3)})
    np.savez(tmp_path / "v" / "b.npz", features=np.zeros((2, 5)))
    store = NpzFeatureStore(tmp_path / "v")
    store.get("a")
    with pytest.raises(FeatureError) as e:
        store.get("b")
    msg = str(e.value)
    assert "b.npz" in msg and "a.npz" in msg and "5 channels" in msg and "has 3" in msg
    with pytest.raises(FeatureError, match="b.npz"):
        pack_features(NpzFeatureStore(tmp_path / "v"), tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("bad,kind", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_values_are_rejected(tmp_path: Path, bad: float, kind: str) -> None:
    a = np.ones((4, 3))
    a[2, 1] = bad
    (tmp_path / "v").mkdir()
    np.savez(tmp_path / "v" / "bad.npz", features=a)
    with pytest.raises(FeatureError, match=rf"bad\.npz: features contain {kind}.*row 2"):
        NpzFeatureStore(tmp_path / "v").get("bad")


def test_malformed_files(tmp_path: Path) -> None:
    root = tmp_path / "v"
    root.mkdir()
    (root / "junk.npz").write_bytes(b"not a zip file at all")
    np.savez(root / "cube.npz", features=np.zeros((2, 3, 4)))
    np.savez(root / "two.npz", foo=np.zeros((2, 3)), bar=np.zeros((2, 3)))
    np.savez(root / "words.npz", features=np.array(["a", "b"]))
    store = NpzFeatureStore(root)
    with pytest.raises(FeatureError, match="junk.npz: cannot read"):
        store.get("junk")
    with pytest.raises(FeatureError, match=r"cube.npz.*shape \(2, 3, 4\)"):
        store.get("cube")
    with pytest.raises(FeatureError, match="two.npz: cannot tell which array.*foo"):
        store.get("two")
    with pytest.raises(FeatureError, match="words.npz.*expected numbers"):
        store.get("words")
    with pytest.raises(FeatureError, match=r"no array named 'nope' \(it holds: foo, bar\)"):
        NpzFeatureStore(root, field="nope").get("two")
    assert NpzFeatureStore(root, field="bar").get("two").shape == (2, 3)


def test_float16_overflow_is_reported(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    np.savez(tmp_path / "v" / "big.npz", features=np.full((2, 2), 1e6))
    with pytest.raises(FeatureError, match="big.*float16.*Inf"):
        pack_features(NpzFeatureStore(tmp_path / "v"), tmp_path / "p", dtype="float16")
    assert list(tmp_path.iterdir()) == [tmp_path / "v"]  # no store, no temporary left behind


# ---------------------------------------------------------------------------- TEF and streams
def test_tef_values() -> None:
    tef = temporal_endpoint_features(4)
    np.testing.assert_array_equal(tef, [[0, 0.25], [0.25, 0.5], [0.5, 0.75], [0.75, 1.0]])
    for n in (1, 7, 75):  # bit-identical to Moment-DETR's torch computation
        st = torch.arange(0, n, 1.0) / n
        ref = torch.stack([st, st + 1.0 / n], dim=1).numpy()
        np.testing.assert_array_equal(temporal_endpoint_features(n), ref)
    assert temporal_endpoint_features(0).shape == (0, 2)
    x = np.ones((3, 5), np.float32)
    out = append_tef(x)
    assert out.shape == (3, 7)
    np.testing.assert_array_equal(out[:, 5:], temporal_endpoint_features(3))


def test_l2_normalize() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    y = l2_normalize(x)
    np.testing.assert_allclose(y[0], [3 / (5 + 1e-5), 4 / (5 + 1e-5)], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])  # zero rows stay zero (no division by 0)
    big = np.random.default_rng(0).normal(size=(10, 32)).astype(np.float32) * 7
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(big), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_video_source_concatenates_cut_to_shortest(tmp_path: Path, packed: bool) -> None:
    a = make_dir(tmp_path / "slowfast", {"v": (10, 5)}, seed=0)["v"]
    b = make_dir(tmp_path / "clip", {"v": (8, 3)}, seed=1)["v"]
    stores = [open_feature_store(tmp_path / d) for d in ("slowfast", "clip")]
    if packed:
        stores = [
            pack_features(s, tmp_path / f"p{i}", progress=False) for i, s in enumerate(stores)
        ]
    source = VideoFeatureSource(stores)
    assert source.dim == 5 + 3 + 2 and "v" in source and "w" not in source
    out = source.get("v")
    assert out.shape == (8, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, moment_detr_video([a, b], max_len=75), rtol=1e-6, atol=1e-7)
    truncated = VideoFeatureSource(stores, max_len=6).get("v")
    np.testing.assert_allclose(
        truncated, moment_detr_video([a, b], max_len=6), rtol=1e-6, atol=1e-7
    )
    raw = VideoFeatureSource(stores, normalize=False, use_tef=False).get("v")
    np.testing.assert_array_equal(raw, np.concatenate([a[:8], b[:8]], axis=1))


def test_text_source_truncates_and_normalises(tmp_path: Path) -> None:
    texts = make_text_dir(tmp_path / "t", {3: 9})
    source = TextFeatureSource(open_feature_store(tmp_path / "t"), max_len=4)
    assert 3 in source and 4 not in source and source.dim == 6
    tokens = texts[3][0][:4]
    ref = tokens / (np.linalg.norm(tokens, axis=-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(source.get(3), ref, rtol=1e-6)
    raw = TextFeatureSource(open_feature_store(tmp_path / "t"), normalize=False).get(3)
    np.testing.assert_array_equal(raw, texts[3][0])


def test_video_without_clips_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    np.savez(tmp_path / "v" / "e.npz", features=np.zeros((0, 4)))
    with pytest.raises(FeatureError, match="video 'e' has 0 clips"):
        VideoFeatureSource([NpzFeatureStore(tmp_path / "v")]).get("e")


# ------------------------------------------------------------------------------------ the CLI
def test_pack_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arrays = make_dir(tmp_path / "src", {"v1": (3, 4), "v2": (6, 4)})
    out = tmp_path / "out" / "store"
    assert main(["pack", str(tmp_path / "src"), str(out), "--no-progress"]) == 0
    assert "packed 2 items (9 rows x 4 channels, float32" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", "index.json"]
    store = open_feature_store(out)
    for key, a in arrays.items():
        np.testing.assert_array_equal(store.get(key), a)

    # an existing store is kept unless --overwrite
    assert main(["pack", str(tmp_path / "src"), str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    make_dir(tmp_path / "src", {"v3": (2, 4)}, seed=5)
    args = ["pack", str(tmp_path / "src"), str(out), "--overwrite", "--dtype", "float16"]
    assert main([*args, "--no-progress"]) == 0
    store = open_feature_store(out)
    assert store.keys() == ["v1", "v2", "v3"] and store.dtype == np.float16
    assert sorted(p.name for p in out.parent.iterdir()) == ["store"]  # no temporaries left


def test_pack_cli_reports_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_dir(tmp_path / "src", {"a": (3, 4)})
    np.savez(tmp_path / "src" / "b.npz", features=np.full((3, 4), np.nan))
    out = tmp_path / "store"
    assert main(["pack", str(tmp_path / "src"), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "momentkit pack: error:" in err and "b.npz" in err and "NaN" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert main(["pack", str(tmp_path / "nope"), str(out)]) == 2
    assert "no such feature directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(12, dtype=">f8").reshape(4, 3),  # big-endian float64
        np.arange(5, dtype=np.int16),  # 1-d (a pooled query feature)
        np.zeros((0, 7), np.float32),  # no clips
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),  # zipfile's reader
    ],
)
@pytest.mark.parametrize("compressed", [False, True])
def test_read_npz_direct_read_equals_np_load(tmp_path: Path, array, compressed) -> None:
    """Uncompressed members are read straight into the array (one copy, CRC checked); every
    kind of member reads as np.load reads it."""
    from unittest.mock import patch

    from momentkit.features import npz

    file = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(file, features=array)
    returned = []
    real = npz._read_stored
    with patch.object(npz, "_read_stored", lambda *a: returned.append(real(*a)) or returned[-1]):
        got, name = npz.read_npz(file, None)
    expected = np.load(file)["features"].astype(np.float32)
    assert name == "features" and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected if expected.ndim == 2 else expected[None])
    took_direct = len(returned) == 1 and returned[0] is not None
    assert took_direct is (not compressed and not np.isfortran(array))


def test_read_npz_direct_read_checks_the_crc(tmp_path: Path) -> None:
    """A flipped data byte in an uncompressed member is caught by its CRC-32, as zipfile's
    own reader catches it."""
    from momentkit.features.npz import read_npz

    file = tmp_path / "a.npz"
    np.savez(file, features=np.ones((64, 256), np.float32))  # larger than zipfile's read-ahead
    raw = bytearray(file.read_bytes())
    at = raw.rindex(np.float32(1.0).tobytes()) + 1  # inside the last value
    raw[at] ^= 0x01
    file.write_bytes(bytes(raw))
    with pytest.raises(FeatureError, match="a.npz: array 'features' fails its CRC-32 check"):
        read_npz(file, None)
