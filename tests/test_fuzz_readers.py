"""Fuzzing every reader: a clear ``momentkit`` error or success, never another exception.

Hypothesis feeds each reader random bytes and mutations of a valid input (annotations and
predictions and the evaluators behind them, captions, corpora, ``.npz`` files, packed stores,
YAML configs and ``--set`` values, checkpoints: ``config.json`` + ``model.safetensors``, resume
states). The contract: the reader returns, or raises a :class:`MomentkitError` (whose message
names the file and field), or ``FileNotFoundError`` where a path is missing. Anything else
(``KeyError``, ``TypeError``, ``ValueError`` from numpy, ``RecursionError``, a safetensors or
scipy error) would reach the user as a traceback, and fails the test.

Bounded: few examples per reader and a deadline, the whole module well under a minute.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from momentkit.utils.errors import MomentkitError

pytestmark = pytest.mark.usefixtures("one_thread")

FUZZ = settings(
    max_examples=40,
    deadline=5000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
ALLOWED = (MomentkitError, FileNotFoundError)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from([-1, 0, 1, 2, 1e12, -1e-9, 2**31, "1", "", "../x", "a/b", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def clear_or_ok(fn: Callable[[], Any]) -> str:
    """``ok`` or ``error`` (a clear one); any other exception propagates and fails the test."""
    try:
        fn()
    except ALLOWED as e:
        assert str(e), "an error without a message"
        return "error"
    return "ok"


def mutate(base: dict[str, Any], data: st.DataObject, keys: list[str]) -> dict[str, Any]:
    """``base`` with some keys dropped or given random JSON values."""
    row = dict(base)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
        if data.draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = data.draw(json_values)
    return row


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ANNOTATION = {
    "qid": 7,
    "query": "a person sits down",
    "vid": "v1",
    "duration": 30,
    "relevant_windows": [[2, 10], [20, 24]],
    "relevant_clip_ids": [1, 2, 3],
    "saliency_scores": [[1, 2, 3], [4, 4, 4], [0, 1, 2]],
}
PREDICTION = {
    "qid": 7,
    "query": "a person sits down",
    "vid": "v1",
    "pred_relevant_windows": [[2.0, 10.0, 0.9], [0.0, 4.0, 0.2]],
    "pred_saliency_scores": [0.1] * 15,
}


# ------------------------------------------------------------------ annotations, predictions
@FUZZ
@given(st.data())
def test_annotations_predictions_and_evaluators(data):
    from momentkit.data.records import load_annotations, load_predictions
    from momentkit.evaluation import build_evaluator

    gt_rows = [mutate(ANNOTATION, data, list(ANNOTATION)), {**ANNOTATION, "qid": 8}]
    pred_rows = [mutate(PREDICTION, data, list(PREDICTION)), {**PREDICTION, "qid": 8}]
    name = data.draw(st.sampled_from(["qvhighlights", "grounding", "tvsum"]))
    clip_len = data.draw(st.sampled_from([2.0, 1.0, 0.5, 0.0, -2.0, math.nan]))
    with tempfile.TemporaryDirectory() as d:
        gt = write_lines(Path(d) / "gt.jsonl", gt_rows)
        pred = write_lines(Path(d) / "pred.jsonl", pred_rows)

        def evaluate() -> None:
            annotations = load_annotations(gt)
            predictions = load_predictions(pred)
            kwargs = {"clip_len": clip_len} if name == "qvhighlights" else {}
            evaluator = build_evaluator(name, annotations, gt_path=gt, **kwargs)
            evaluator.process(predictions, path=pred)
            evaluator.evaluate()

        clear_or_ok(evaluate)


@FUZZ
@given(st.binary(max_size=300))
def test_jsonl_readers_on_random_bytes(raw):
    from momentkit.data.records import load_annotations, load_predictions
    from momentkit.pretraining.pseudo_label import load_captions
    from momentkit.text_augment.corpus import load_corpus

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.jsonl"
        path.write_bytes(raw)
        for reader in (load_annotations, load_predictions, load_captions, load_corpus):
            clear_or_ok(lambda r=reader: r(path))


@FUZZ
@given(st.data())
def test_captions_and_corpus_rows(data):
    from momentkit.pretraining.pseudo_label import load_captions
    from momentkit.text_augment.corpus import load_corpus

    caption = {"qid": 1, "vid": "v", "caption": "a dog", "start": 0, "end": 4, "duration": 10}
    entry = {"aug_id": 1, "qid": 3, "query": "a dog", "kind": "positive",
             "dimension": "semantic", "edits": [["a", "b"]]}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        caps = write_lines(Path(d) / "c.jsonl", [mutate(caption, data, list(caption))])
        corpus = write_lines(Path(d) / "k.jsonl", [mutate(entry, data, list(entry))])
        clear_or_ok(lambda: load_captions(caps))
        clear_or_ok(lambda: load_corpus(corpus))


# -------------------------------------------------------------------------- feature stores
def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


VALID_NPZ = _npz_bytes(features=np.arange(40, dtype=np.float32).reshape(10, 4))


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.tuples(st.integers(0, len(VALID_NPZ) - 1), st.integers(0, 255)),
            min_size=1,
            max_size=6,
        ).map(lambda edits: _edit(VALID_NPZ, edits)),
    )
)
def test_npz_reader_on_damaged_files(raw):
    from momentkit.features import NpzFeatureStore

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "v.npz").write_bytes(raw)
        store = NpzFeatureStore(d)
        clear_or_ok(lambda: store.get("v"))


def _edit(raw: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(raw)
    for pos, value in edits:
        out[pos] = value
    return bytes(out)


@FUZZ
@given(
    st.sampled_from(["f4", "f2", "f8", "i4", "u1", "b1", "U3", "c8", "V4"]),
    st.lists(st.integers(0, 5), max_size=3),
    st.sampled_from(["features", "last_hidden_state", "other"]),
)
def test_npz_reader_on_arrays_of_any_dtype_and_shape(dtype, shape, name):
    from momentkit.features import NpzFeatureStore

    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "v.npz", **{name: np.zeros(shape, dtype=dtype)})
        clear_or_ok(lambda: NpzFeatureStore(d).get("v"))


@FUZZ
@given(st.data())
def test_packed_store_on_edited_indexes(data):
    from momentkit.features import PackedFeatureStore, open_feature_store, pack_features

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src"
        src.mkdir()
        for i in range(2):
            np.savez(src / f"v{i}.npz", features=np.ones((3, 4), np.float32))
        out = Path(d) / "packed"
        pack_features(open_feature_store(src), out, progress=False)
        index = json.loads((out / "index.json").read_text())
        keys = ["format", "version", "dtype", "dim", "rows", "field", "source", "items"]
        index = mutate(index, data, keys)
        if data.draw(st.booleans()) and isinstance(index.get("items"), dict):
            index["items"] = {"v0": data.draw(json_values), "v1": [3, 3]}
        (out / "index.json").write_text(json.dumps(index))

        def read_all() -> None:
            store = PackedFeatureStore(out)
            for key in store.keys():
                store.get(key)

        clear_or_ok(read_all)


# ---------------------------------------------------------------------------------- configs
@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_yaml_config_reader_on_random_text(text):
    from momentkit.training.config import load_config

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "preset.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        clear_or_ok(lambda: load_config(path))


@FUZZ
@given(st.data())
def test_yaml_config_reader_on_structured_configs(data):
    import yaml

    from momentkit.training.config import load_config

    obj = {
        "model": mutate({"name": "moment_detr", "hidden_dim": 16, "nheads": 2}, data,
                        ["name", "hidden_dim", "nheads", "dropout", "loss"]),
        "data": mutate({"clip_len": 2.0}, data, ["clip_len", "max_v_len", "video_features"]),
        "optim": mutate({"lr": 1e-4}, data, ["lr", "betas", "milestones", "scheduler"]),
        "trainer": mutate({"epochs": 3}, data, ["epochs", "patience", "device"]),
    }  # fmt: skip
    if data.draw(st.booleans()):
        obj = mutate(obj, data, list(obj))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "preset.yaml"
        path.write_text(yaml.safe_dump(obj), encoding="utf-8")
        clear_or_ok(lambda: load_config(path))


OVERRIDE_KEYS = [
    "model.hidden_dim", "model.nheads", "model.dropout", "model.loss", "model.loss.weights",
    "model.name", "optim.lr", "optim.betas", "optim.milestones", "optim.scheduler",
    "data.clip_len", "data.video_features", "data.max_v_len", "trainer.epochs",
    "trainer.patience", "trainer.device", "nosection.x", "model", "",
]  # fmt: skip


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(OVERRIDE_KEYS),
            st.one_of(
                st.text(max_size=20),
                st.sampled_from(["inf", "nan", "-1", "1e400", "[1,", "&x [*x]", "{a: 1}", "none"]),
            ),
        ).map(lambda kv: f"{kv[0]}={kv[1]}"),
        max_size=3,
    )
)
def test_set_overrides(overrides):
    from momentkit.training.config import build_config

    clear_or_ok(lambda: build_config("qd_detr", overrides=overrides))


# ------------------------------------------------------------------------------ checkpoints
TINY_MODEL = {
    "name": "moment_detr", "video_dim": 6, "text_dim": 4, "hidden_dim": 8, "nheads": 2,
    "dim_feedforward": 8, "num_queries": 2, "enc_layers": 1, "dec_layers": 1,
}  # fmt: skip
SIZE_VALUES = st.sampled_from([-1, 0, 1, 2, 3, 8, 4_000_000, 2**40, 1.5, "8", None, True])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from momentkit.models import build_model

    return build_model(TINY_MODEL).save_pretrained(tmp_path_factory.mktemp("ckpt") / "m")


@FUZZ
@given(st.data())
def test_checkpoint_loading(saved_model, data):
    import shutil

    from momentkit.models import MomentModel, build_model
    from momentkit.training.checkpoint import load_weights

    config = json.loads((saved_model / "config.json").read_text())
    keys = ["name", "hidden_dim", "nheads", "dropout", "num_queries", "video_dim", "loss",
            "activation", "position_embedding", "enc_layers"]  # fmt: skip
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=2, unique=True)):
        if key in ("hidden_dim", "nheads", "num_queries", "video_dim", "enc_layers"):
            config[key] = data.draw(SIZE_VALUES)
        else:
            config[key] = data.draw(json_values)
    weights = (saved_model / "model.safetensors").read_bytes()
    kind = data.draw(st.sampled_from(["valid", "random", "truncated", "edited"]))
    if kind == "random":
        weights = data.draw(st.binary(max_size=200))
    elif kind == "truncated":
        weights = weights[: data.draw(st.integers(0, len(weights) - 1))]
    elif kind == "edited":
        pos = data.draw(st.integers(0, min(len(weights) - 1, 300)))
        weights = _edit(weights, [(pos, data.draw(st.integers(0, 255)))])
    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "ckpt"
        shutil.copytree(saved_model, ckpt)
        (ckpt / "config.json").write_text(json.dumps(config))
        (ckpt / "model.safetensors").write_bytes(weights)
        clear_or_ok(lambda: MomentModel.from_pretrained(ckpt))
        model = build_model(TINY_MODEL)
        clear_or_ok(lambda: load_weights(model, ckpt))


@FUZZ
@given(json_values, st.binary(max_size=100))
def test_resume_state_loading(tree, tensors):
    from momentkit.training.checkpoint import load_state

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_text(json.dumps(tree))
        (Path(d) / "state.safetensors").write_bytes(tensors)
        clear_or_ok(lambda: load_state(d))
