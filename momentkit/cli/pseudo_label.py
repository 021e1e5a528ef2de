"""`momentkit pseudo-label`: relabel captioned clips as moment-retrieval pretraining data.

Each caption of ``--captions`` (JSONL rows ``{"vid", "caption" (or "query"), "start", "end",
"duration"[, "qid"]}``, times in seconds) is scored against every clip of its video with an
aligned video-text encoder; clips at least as similar as the clips of the caption's original
interval (its mean similarity by default) become the new relevant windows, graded 1-4 (see
:mod:`momentkit.pretraining.pseudo_label`). The output is a QVHighlights-format JSONL that
``momentkit train`` reads::

    momentkit pseudo-label --captions captions.jsonl --video-features feats/clip \\
        --text-features feats/clip_text --out pretrain.jsonl
    # or compute the caption features with an encoder's text tower (written to --text-out):
    momentkit pseudo-label --captions captions.jsonl --video-features feats/clip \\
        --text-encoder clip:openai/clip-vit-base-patch32 --text-out feats/caption_text \\
        --out pretrain.jsonl
    momentkit train --model sg_detr --preset qvhighlights --train pretrain.jsonl \\
        --video-features feats/clip --text-features feats/caption_text --out runs/pretrain
    momentkit train --model sg_detr --preset qvhighlights --train train.jsonl --val val.jsonl \\
        --video-features feats/clip --text-features feats/clip_text \\
        --init-from runs/pretrain --out runs/finetune

The video stream must live in the text encoder's embedding space (CLIP with CLIP text,
InternVideo2 with its text tower). A pretrained run is evaluated zero-shot with
``momentkit predict`` + ``momentkit evaluate``.
"""

from __future__ import annotations

import argparse
import sys

from momentkit.cli.common import at_least, positive_float

HELP = "pseudo-label captioned clips into moment-retrieval pretraining data (SG-DETR recipe)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``momentkit pseudo-label``."""
    parser.add_argument(
        "--captions",
        required=True,
        metavar="CAPTIONS.jsonl",
        help='rows {"vid", "caption", "start", "end", "duration"[, "qid"]} (seconds)',
    )
    parser.add_argument(
        "--video-features",
        required=True,
        metavar="DIR",
        help="clip features in the text space (.npz folder or packed store), one row per clip",
    )
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument(
        "--text-features",
        metavar="DIR",
        help="caption features qid<qid>.npz (pooler_output, else the mean of the tokens)",
    )
    text.add_argument(
        "--text-encoder",
        metavar="SPEC",
        help="compute the caption features with this encoder's text tower (e.g. "
        "clip:openai/clip-vit-base-patch32); needs --text-out",
    )
    parser.add_argument(
        "--text-out",
        metavar="DIR",
        help="with --text-encoder: write the caption features here (qid<qid>.npz), the "
        "--text-features of the pretraining run",
    )
    parser.add_argument("--out", required=True, metavar="PSEUDO.jsonl", help="output annotations")
    parser.add_argument(
        "--clip-len",
        type=positive_float,
        default=2.0,
        metavar="SECONDS",
        help="seconds per clip (2)",
    )
    parser.add_argument(
        "--threshold",
        default="mean",
        help="statistic of the in-interval similarities used as threshold: mean (default), "
        "median, min, max or a quantile such as q0.25",
    )
    parser.add_argument(
        "--annotators",
        type=at_least(1),
        default=3,
        help="saliency_scores columns, the grade repeated (3 as QVHighlights; 1 for one column)",
    )
    parser.add_argument(
        "--min-clips", type=at_least(1), default=1, help="shortest run of positive clips kept (1)"
    )
    parser.add_argument("--device", default="cpu", help="device of --text-encoder (cpu)")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=64, help="captions per --text-encoder batch (64)"
    )


def _encode_captions(args: argparse.Namespace, captions: list) -> dict:
    """Caption vectors from ``--text-encoder``, also written to ``--text-out``."""
    from pathlib import Path

    from momentkit.encoders import EncoderError, build_encoder
    from momentkit.extraction.pipeline import save_npz
    from momentkit.features import text_key
    from momentkit.utils.paths import safe_child

    out = Path(args.text_out)
    # every file name is checked before anything is written (a qid is data: never a path)
    paths = {
        c.qid: safe_child(out, f"{text_key(c.qid)}.npz", "qid", source=args.captions, line=c.line)
        for c in captions
    }
    encoder = build_encoder(args.text_encoder, device=args.device)
    if encoder.text_stream is None:
        raise EncoderError(
            f"encoder '{args.text_encoder}' has no text tower; pick one with a text stream "
            "(clip:..., siglip:..., offline) or pass --text-features"
        )
    vectors = {}
    for i in range(0, len(captions), args.batch_size):
        chunk = captions[i : i + args.batch_size]
        for cap, feats in zip(chunk, encoder.encode_text([c.caption for c in chunk]), strict=True):
            save_npz(
                paths[cap.qid],
                last_hidden_state=feats.last_hidden_state,
                pooler_output=feats.pooler_output,
            )
            vectors[cap.qid] = feats.pooler_output
    return vectors


def run(args: argparse.Namespace) -> int:
    """Label the captions and write ``--out``; exit status 1 when none could be labelled."""
    from momentkit.data.records import save_annotations
    from momentkit.features import open_feature_store
    from momentkit.pretraining.pseudo_label import (
        PseudoLabelConfig,
        StoreTextSource,
        label_corpus,
        load_captions,
    )
    from momentkit.utils.errors import FeatureError, FormatError
    from momentkit.utils.paths import refuse_overwriting_inputs

    if args.text_encoder and not args.text_out:
        print("momentkit pseudo-label: error: --text-encoder needs --text-out DIR", file=sys.stderr)
        return 2
    config = PseudoLabelConfig(args.clip_len, args.threshold, args.annotators, args.min_clips)
    try:
        config.validate()
    except ValueError as e:
        print(f"momentkit pseudo-label: error: {e}", file=sys.stderr)
        return 2
    inputs = [("--captions", args.captions), ("--video-features", args.video_features)]
    inputs.append(("--text-features", args.text_features))
    refuse_overwriting_inputs([("--out", args.out)], inputs)
    captions = load_captions(args.captions)
    if not captions:
        raise FormatError(args.captions, None, None, "holds no captions", "One JSON row a caption")
    videos = open_feature_store(args.video_features)
    if args.text_features:
        store = StoreTextSource(args.text_features)
        missing = store.missing(captions)
        if missing:
            shown = ", ".join(f"qid{c.qid} (line {c.line})" for c in missing[:3])
            raise FeatureError(
                f"{args.text_features}: no features for {len(missing)} caption(s) of "
                f"{args.captions}: {shown}{', ...' if len(missing) > 3 else ''}. Extract them "
                "(momentkit extract --queries) or pass --text-encoder SPEC --text-out DIR"
            )
        text, text_dim = store, store.dim
    else:
        vectors = _encode_captions(args, captions)
        text = lambda cap: vectors[cap.qid]  # noqa: E731
        text_dim = len(next(iter(vectors.values()))) if vectors else videos.dim
    if text_dim != videos.dim:
        raise FeatureError(
            f"the caption features have {text_dim} channels but {args.video_features} has "
            f"{videos.dim}: similarities need video and text in one embedding space (e.g. the "
            "clip stream with clip_text)"
        )
    annotations, report = label_corpus(captions, videos.get, text, config)
    save_annotations(args.out, annotations)
    print(report.summary())
    print(f"wrote {len(annotations)} pseudo-labelled queries to {args.out}")
    if not annotations:
        print(
            "momentkit pseudo-label: error: no caption could be labelled (see the reasons "
            "above); check that --video-features holds the captions' videos",
            file=sys.stderr,
        )
        return 1
    return 0
