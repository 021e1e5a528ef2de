"""The pipeline record: which feature pipeline made a set of features.

A model only works on features made the way its training features were. ``momentkit extract``
writes a record into every stream folder it fills (``FEAT_DIR/<stream>/pipeline.json``);
``momentkit train`` copies the record of its video-feature folders into each checkpoint
(``features.json`` beside ``experiment.json``); converters of official checkpoints write the
record of the features the official model was trained on. ``Predictor.from_checkpoint`` reads
it, builds that pipeline, and refuses encoders that compute other features.

Format (JSON)::

    {
      "format": "momentkit.features/1",
      "pipeline": "clip_slowfast",          # or "clip", or an encoder spec ("offline", ...)
      "mode": "default",                    # or "lighthouse" (clip_slowfast / clip only)
      "clip_len": 2.0,
      "video_streams": {"clip": 512, "slowfast": 2304},
      "text_stream": "clip_text",
      "text_dim": 512,
      "models": {"clip": "ViT-B/32", "slowfast": "SLOWFAST_8x8_R50"},
      "weights": {"clip": "<path or hub id used>", "slowfast": "<path used>"}   # hints
    }

``weights`` says where the weights were when the features were made; another machine may
keep them elsewhere (``encoder=`` / ``--encoder`` overrides them, see :func:`encoder_spec`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from momentkit.utils.errors import MomentkitError

FORMAT = "momentkit.features/1"
STREAM_RECORD = "pipeline.json"  # in each stream folder written by momentkit extract
CHECKPOINT_RECORD = "features.json"  # in a checkpoint directory

#: what each benchmark pipeline's models are (the released weights)
MODELS = {
    "clip_slowfast": {"clip": "ViT-B/32", "slowfast": "SLOWFAST_8x8_R50"},
    "clip": {"clip": "ViT-B/32"},
}
#: the standard stream widths of each pipeline with the released weights
STREAMS = {
    "clip_slowfast": {"clip": 512, "slowfast": 2304},
    "clip": {"clip": 512},
}


#: momentkit's synthetic datasets (their features are generated, not extracted)
SYNTHETIC = frozenset({"synth", "synth_tad", "synth_long"})


class RecordError(MomentkitError):
    """A pipeline record that cannot be read, or features that disagree with it."""


def make_record(
    pipeline: str,
    *,
    mode: str = "default",
    clip_len: float = 2.0,
    video_streams: Mapping[str, int] | None = None,
    text_stream: str | None = "clip_text",
    text_dim: int | None = 512,
    weights: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """A record (see the module doc); ``video_streams`` defaults to the pipeline's standard
    widths. Converters of official checkpoints call this (through
    :func:`momentkit.interop.convert.features_record`)."""
    streams = dict(video_streams if video_streams is not None else STREAMS.get(pipeline, {}))
    record: dict[str, Any] = {
        "format": FORMAT,
        "pipeline": pipeline,
        "mode": mode,
        "clip_len": float(clip_len),
        "video_streams": {k: int(v) for k, v in streams.items()},
        "text_stream": text_stream,
        "text_dim": int(text_dim) if text_dim is not None else None,
    }
    if pipeline in MODELS:
        record["models"] = dict(MODELS[pipeline])
    if weights:
        record["weights"] = {k: v for k, v in weights.items() if v}
    return record


def read_record(path: str | Path) -> dict[str, Any]:
    """A record file (``pipeline.json`` / ``features.json``).

    Raises:
        RecordError: unreadable JSON or not a record (naming the file).
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RecordError(f"{path}: not a readable pipeline record ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or "pipeline" not in record:
        raise RecordError(
            f"{path}: not a momentkit pipeline record (expected format '{FORMAT}'); remove it "
            "or re-extract the features"
        )
    return record


def stream_record(stream_dir: str | Path) -> dict[str, Any] | None:
    """The record of a feature folder (a packed store: of the folder it was packed from)."""
    folder = Path(stream_dir)
    index = folder / "index.json"
    if index.is_file():
        try:
            source = json.loads(index.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError):
            source = None
        if isinstance(source, str) and source:
            folder = Path(source)
    file = folder / STREAM_RECORD
    return read_record(file) if file.is_file() else None


def training_record(video_features: Sequence[str | Path]) -> dict[str, Any] | None:
    """The record shared by the training video-feature folders, or ``None`` when none has one.

    Raises:
        RecordError: the folders come from different pipelines (or only some have a record).
    """
    records = [(str(d), stream_record(d)) for d in video_features]
    found = [(d, r) for d, r in records if r is not None]
    if not found:
        return None
    first_dir, first = found[0]
    keys = ("pipeline", "mode", "clip_len")
    for d, r in records:
        if r is None or any(r.get(k) != first.get(k) for k in keys):
            what = "has no pipeline record" if r is None else f"was made by {describe(r)}"
            raise RecordError(
                f"video features {d} {what} but {first_dir} by {describe(first)}; a model "
                "must be trained on the streams of one pipeline. Re-extract them together"
            )
    return first


def describe(record: Mapping[str, Any]) -> str:
    """``clip_slowfast (mode default, 2.0 s clips)``."""
    mode = record.get("mode")
    extra = f"mode {mode}, " if mode else ""
    return f"{record.get('pipeline')} ({extra}{record.get('clip_len')} s clips)"


def encoder_spec(record: Mapping[str, Any]) -> str | None:
    """The encoder spec that rebuilds the record's pipeline, ``None`` if it is no known one.

    For ``clip_slowfast``/``clip`` the weights are the recorded ones when they exist here, else
    the default locations (:func:`momentkit.encoders.clip_slowfast.default_slowfast_path`).
    """
    pipeline = record.get("pipeline")
    if pipeline not in MODELS:
        return str(pipeline) if pipeline else None
    weights = record.get("weights") or {}
    clip = weights.get("clip") or "ViT-B/32"
    looks_local = Path(clip).is_absolute() or clip.startswith(".") or clip.endswith(".pt")
    if looks_local and not Path(clip).exists():
        clip = "ViT-B/32"  # a recorded local path that is not on this machine: the default
    args = [f"clip={clip}"]
    if pipeline == "clip_slowfast":
        from momentkit.encoders.clip_slowfast import default_slowfast_path

        recorded = weights.get("slowfast")
        path = recorded if recorded and Path(recorded).is_file() else default_slowfast_path()
        if path is None:
            raise RecordError(
                "the model was trained on clip_slowfast features, which need the SlowFast "
                "weights SLOWFAST_8x8_R50.pkl (SlowFast model zoo): put them at "
                "~/.cache/momentkit/SLOWFAST_8x8_R50.pkl, set MOMENTKIT_SLOWFAST, or pass "
                "encoder='clip_slowfast:clip=...,slowfast=PATH' (--encoder)"
            )
        args.append(f"slowfast={path}")
    if record.get("mode", "default") != "default":
        args.append(f"mode={record['mode']}")
    if float(record.get("clip_len", 2.0)) != 2.0:
        args.append(f"clip_len={float(record['clip_len']):g}")
    return "clip_slowfast:" + ",".join(args)


def check_encoder_matches(record: Mapping[str, Any], encoder: Any, where: str | Path) -> None:
    """Refuse an encoder whose features are not the recorded pipeline's.

    Raises:
        RecordError: naming the checkpoint, the recorded pipeline, the encoder and the fix.
    """
    mine = getattr(encoder, "pipeline_record", None)
    theirs = mine() if callable(mine) else {"pipeline": getattr(encoder, "name", "?")}
    want = record.get("pipeline")
    same_mode = record.get("inferred") or theirs.get("mode", record.get("mode")) == record.get(
        "mode"
    )  # a record inferred from stream names does not know the mode: either is accepted
    same = theirs.get("pipeline") == want and bool(same_mode)
    if want not in MODELS:
        same = theirs.get("pipeline") == want or getattr(encoder, "name", None) == want
    if not same:
        raise RecordError(
            f"{where}: the model was trained on {describe(record)} features, but encoder "
            f"'{getattr(encoder, 'name', encoder)}' computes {describe(theirs)} features; "
            "features of another pipeline give wrong results. Pass the recorded pipeline "
            f"(--encoder {encoder_spec_hint(record)}) or leave --encoder out"
        )


def encoder_spec_hint(record: Mapping[str, Any]) -> str:
    """A spec to show in messages (no file checks)."""
    if record.get("pipeline") in MODELS:
        mode = record.get("mode", "default")
        tail = "" if mode == "default" else f",mode={mode}"
        sf = ",slowfast=SLOWFAST_8x8_R50.pkl" if record["pipeline"] == "clip_slowfast" else ""
        return f"clip_slowfast:clip=ViT-B/32{sf}{tail}"
    return str(record.get("pipeline"))


def checkpoint_record(experiment: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record to store in a checkpoint of ``experiment`` (an ``experiment.json`` dict):
    its video-feature folders' shared record, ``None`` when they have none or disagree
    (training checks that at its start, :func:`check_training_features`)."""
    data = experiment.get("data") if isinstance(experiment, Mapping) else None
    folders = data.get("video_features") if isinstance(data, Mapping) else None
    if not folders:
        return None
    try:
        return training_record([str(f) for f in folders])
    except (RecordError, OSError):
        return None


def check_training_features(video_features: Sequence[str | Path]) -> None:
    """Refuse training on video streams made by different pipelines (see
    :func:`training_record`)."""
    training_record(video_features)


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_pipeline(
    ckpt: str | Path,
    video_features: Sequence[str | Path],
    video_streams: Sequence[str],
    dataset: str | None = None,
) -> dict[str, Any] | None:
    """The pipeline a checkpoint's model was trained on.

    In order: the checkpoint's ``features.json``; the record of its training feature folders
    (when they are on this machine); for a checkpoint without one, the benchmark pipeline its
    streams name (``clip`` + ``slowfast`` -> ``clip_slowfast``; a converted Lighthouse
    checkpoint on ``clip`` alone -> ``clip``), except on momentkit's synthetic datasets, whose
    generated features borrow those names; else ``None``.
    """
    ckpt = Path(ckpt)
    file = ckpt / CHECKPOINT_RECORD
    if file.is_file():
        return read_record(file)
    try:
        record = training_record([d for d in video_features if Path(d).is_dir()])
    except RecordError:
        record = None
    if record is not None:
        return record
    if dataset in SYNTHETIC:  # generated vectors named like the benchmark's streams
        return None
    names = set(video_streams)
    if {"clip", "slowfast"} <= names:
        return {**make_record("clip_slowfast", video_streams={}), "inferred": True}
    conversion = ckpt / "conversion.json"
    if names == {"clip"} and conversion.is_file():
        try:
            source = json.loads(conversion.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError):
            source = None
        if source == "lighthouse":
            return {**make_record("clip", video_streams={}), "inferred": True}
    return None


def pipeline_encoder_spec(record: Mapping[str, Any] | None) -> str | None:
    """The encoder spec of a benchmark pipeline record (``None`` for other records, whose
    encoders are found from the stream names as before)."""
    if record is None or record.get("pipeline") not in MODELS:
        return None
    return encoder_spec(record)


def check_pipeline_encoders(
    record: Mapping[str, Any] | None,
    encoders: Sequence[Any],
    video_streams: Sequence[str],
    where: str | Path,
) -> None:
    """Refuse encoders whose video features are not the recorded benchmark pipeline's."""
    if record is None or record.get("pipeline") not in MODELS:
        return
    seen: set[int] = set()
    for stream in video_streams:
        enc = next((e for e in encoders if stream in getattr(e, "video_streams", {})), None)
        if enc is not None and id(enc) not in seen:
            seen.add(id(enc))
            check_encoder_matches(record, enc, where)
