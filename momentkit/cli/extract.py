"""`momentkit extract`: video and query features in the standard ``.npz`` layout.

Examples::

    momentkit extract videos/ --out feats                       # offline encoder, 2 s clips
    momentkit extract videos/ --out feats --queries val.jsonl --encoder offline --encoder motion
    momentkit extract a.mp4 --out feats --encoder clip:openai/clip-vit-base-patch32
    momentkit extract videos/ --out feats --queries val.jsonl \
        --encoder clip_slowfast:clip=ViT-B-32.pt,slowfast=SLOWFAST_8x8_R50.pkl   # QVHighlights
    momentkit extract videos/ --out feats --clip-len 1 --ray local     # Charades-style, on Ray
"""

from __future__ import annotations

import argparse

from momentkit.cli.common import add_max_clips_argument, at_least, positive_float
from momentkit.cli.index import DEFAULT_MAX_CLIPS

HELP = "extract clip features of videos (and queries) into FEAT_DIR/<stream>/<id>.npz"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `momentkit extract`."""
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="VIDEO_OR_DIR",
        help="video files, or directories searched recursively for videos",
    )
    parser.add_argument("--out", required=True, metavar="FEAT_DIR", help="feature directory")
    parser.add_argument(
        "--encoder",
        action="append",
        metavar="SPEC",
        help="encoder, repeatable: offline (default), offline-glove, clip:<hub id or dir>, "
        "siglip:<hub id or dir>, motion[:K], clip_slowfast:clip=<CLIP>,slowfast=<SLOWFAST_8x8_R50"
        ".pkl>[,mode=lighthouse] (the QVHighlights features: streams clip, slowfast, clip_text; "
        "slowfast=none for CLIP alone)",
    )
    parser.add_argument(
        "--queries", metavar="Q.jsonl", help="also encode the queries (rows with qid, query)"
    )
    parser.add_argument(
        "--clip-len",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="seconds per clip (default 2, as QVHighlights; Charades-STA models use 1)",
    )
    parser.add_argument(
        "--frames-per-clip",
        type=at_least(1),
        default=1,
        metavar="K",
        help="frames averaged per clip by appearance encoders (1 = the clip centre)",
    )
    parser.add_argument(
        "--streams", nargs="+", metavar="STREAM", help="write only these streams (default: all)"
    )
    parser.add_argument(
        "--batch-size", type=at_least(1), default=32, metavar="N", help="images per forward pass"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument(
        "--threads", type=at_least(1), metavar="N", help="torch CPU threads (default: torch's)"
    )
    parser.add_argument(
        "--decode-threads",
        type=at_least(0),
        default=1,
        metavar="N",
        help="FFmpeg threads per video (default 1; 0 = FFmpeg chooses)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run one Ray task per video on this cluster ('local' starts one here)",
    )
    parser.add_argument(
        "--ray-cpus-per-task",
        type=positive_float,
        default=1.0,
        metavar="C",
        help="CPUs (and torch threads) per video task with --ray (default 1)",
    )
    add_max_clips_argument(
        parser,
        DEFAULT_MAX_CLIPS,
        "fail a video",
        "A --clip-len shorter than a video's frame interval fails it too",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="re-extract files that already exist (without it, a file is re-extracted only "
        "when it was made from another video file, query text, encoder or clip length). With "
        "another encoder or --clip-len than the folder's, give every video of the folder: a run "
        "that would leave files of other videos in the old setting is refused before any work",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any video fails"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Extract, print the report, and return 1 when every video failed (or any, with --strict)."""
    import torch

    from momentkit.extraction import ExtractionConfig, build_extractor, find_videos, run_extraction
    from momentkit.training.distributed import resolve_device
    from momentkit.utils.errors import MomentkitError

    if not args.inputs and not args.queries:
        raise MomentkitError("nothing to extract: give videos or directories, and/or --queries")
    if args.clip_len <= 0 or args.frames_per_clip < 1:
        raise MomentkitError("--clip-len must be > 0 and --frames-per-clip >= 1")
    # once, before any video: a device this machine lacks would fail every video alike
    device = str(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = tuple(args.encoder or ["offline"])
    videos = find_videos(args.inputs)
    config = ExtractionConfig(
        clip_len=args.clip_len,
        streams=tuple(args.streams) if args.streams else None,
        overwrite=args.overwrite,
        decode_threads=args.decode_threads,
        max_clips=getattr(args, "max_clips", DEFAULT_MAX_CLIPS) or None,
    )
    build = {
        "device": device,
        "batch_size": args.batch_size,
        "frames_per_clip": args.frames_per_clip,
    }
    if args.ray:
        from momentkit.extraction.ray_backend import run_on_ray

        report = run_on_ray(
            specs,
            videos,
            args.out,
            config,
            address=args.ray,
            queries=args.queries,
            cpus_per_task=args.ray_cpus_per_task,
            progress=not args.quiet,
            **build,
        )
    else:
        extractor = build_extractor(specs, args.out, config, **build)
        report = run_extraction(extractor, videos, args.queries, progress=not args.quiet)
    print(report.summary())
    return report.exit_status(strict=args.strict)
