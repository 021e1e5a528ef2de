"""Search videos with natural-language queries: a trained checkpoint or the zero-shot scorer.

::

    predictor = Predictor.from_checkpoint("runs/qd_detr_qvh")     # or Predictor.zero_shot()
    video = predictor.encode_video("kitchen.mp4")                 # decode + encode once
    for result in predictor.predict(video, ["a man cuts onions", "someone opens the fridge"]):
        print(result.query, result.moments[0])                    # Moment(start, end, score)

A :class:`Predictor` is the encoders that turn a video into per-clip features plus a *scorer*
that turns those features and queries into :class:`~momentkit.inference.results.QueryResult`:

- :class:`ModelScorer`: a trained moment model. The video's streams are prepared exactly as in
  training (L2-normalised per stream, concatenated, TEF appended), the queries are encoded by
  the text stream the model was trained on, and all queries go through the model in one batch
  (the video repeated). A video longer than the model's training length (``data.max_v_len``
  clips) is cut into overlapping windows whose results are merged (:mod:`.windows`).
- :class:`~momentkit.inference.trimmed.TrimmedScorer`: a clip-trimming checkpoint
  (``momentkit.models.trimming``): on long videos, clip selection keeps a few clips per query
  and the MR model runs on those only, instead of on every clip through sliding windows.
- :class:`~momentkit.inference.zero_shot.ZeroShotScorer`: text-clip similarity, no training.

A checkpoint records the feature streams it was trained on (the folder names of
``data.video_features``/``data.text_features`` in ``experiment.json``, e.g. ``effnet``,
``imagenet_probs`` and ``minilm_text`` for ``momentkit extract --encoder offline``). The encoders
making them are found from those names, or given (``encoder=`` / ``--encoder``) for features
from a model the names do not identify (``clip`` features from ``clip:<model>``).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from momentkit.encoders.base import Encoder, PipelineEncoder
from momentkit.features.tef import TEF_DIM
from momentkit.inference.results import QueryResult, VideoEncoding
from momentkit.utils.errors import MomentkitError

if TYPE_CHECKING:
    from momentkit.models.base import MomentModel
    from momentkit.training.config import ExperimentConfig

EncoderLike = str | Encoder

#: stream name -> the encoder spec that writes it, for streams whose name identifies the model
STREAM_ENCODERS: dict[str, str] = {
    "minilm_text": "offline",
    "glove_text": "offline-glove",
    "effnet": "offline",
    "imagenet_probs": "offline",
    "motion": "motion",
    "bam": "bam",
}
#: the streams each inferable spec writes
SPEC_STREAMS: dict[str, frozenset[str]] = {
    "offline": frozenset({"effnet", "imagenet_probs", "minilm_text"}),
    "offline-glove": frozenset({"effnet", "imagenet_probs", "glove_text"}),
    "motion": frozenset({"motion"}),
    "bam": frozenset({"bam"}),
}


class PredictorError(MomentkitError):
    """A checkpoint and encoders that do not fit together, or bad queries/video features."""


class PredictorArgumentError(PredictorError, ValueError):
    """A :class:`Predictor` method called with an argument of the wrong type or value (a str
    where a list of queries is expected, a NaN ``top_k``, a clip length of 0 ...). Also a
    ``ValueError``, so callers that caught the ``ValueError`` of a bad ``clip_len`` still do."""


#: the most clips :meth:`Predictor.encode_video` and :meth:`Predictor.search` take by default,
#: and ``momentkit index/search/extract``'s ``--max-clips`` default (24 h of 2 s clips): a tiny
#: file may declare a duration of years
DEFAULT_MAX_CLIPS = 43_200


def _check_number(
    value: object, name: str, *, integer: bool = False, minimum: float = 0.0, strict: bool = True
) -> None:
    """Refuse a ``value`` that is not a finite real number (an integer with ``integer``) above
    ``minimum`` (or equal, without ``strict``), naming the argument ``name``."""
    import numbers

    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise PredictorArgumentError(
            f"{name} must be {what}, got {type(value).__name__} {value!r}"
            + (f"; pass {name}={value.strip()}" if isinstance(value, str) else "")
        )
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise PredictorArgumentError(f"{name} must be a finite number {bound}, got {value!r}")


class TooManyClipsError(PredictorError):
    """A video with more clips than the caller allows (``max_clips``), refused before decoding:
    a file of a few frames may declare a duration of years."""


def _human_duration(seconds: float) -> str:
    """``1000 h 0 min``, ``12 min 5 s``, ``42.0 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{seconds:.1f} s"


def check_clip_count(
    path: str | Path,
    duration: float,
    clip_len: float,
    max_clips: int | None,
    option: str = "max_clips",
) -> int:
    """The clips of a ``duration``-second video cut into ``clip_len``-second clips.

    Raises:
        TooManyClipsError: more than ``max_clips`` (``None``: no limit), naming ``option``, the
            setting that raises the limit.
    """
    from momentkit.video.sampling import num_clips

    clips = num_clips(max(float(duration), 0.0), clip_len) if math.isfinite(duration) else -1
    if max_clips is not None and (clips < 0 or clips > max_clips):
        count = "an unbounded number of" if clips < 0 else f"{clips:,}"
        raise TooManyClipsError(
            f"{path}: the video declares {_human_duration(float(duration))} ({count} clips of "
            f"{clip_len:g} s), over the limit of {max_clips:,} clips per video ({option}); "
            "raise the limit to encode it, or cut the file"
        )
    return clips


class ClipLengthError(PredictorError):
    """A clip length shorter than the video's frame interval: every clip would hold the same
    frame again (and a 30 s video cut into 1 ms clips is 30,000 of them)."""


def check_clip_len_fits(
    path: str | Path, fps: float | None, clip_len: float, option: str = "--clip-len"
) -> None:
    """Refuse a ``clip_len`` shorter than one frame of a video of ``fps`` frames per second
    (``None``: the container does not tell, nothing is checked).

    Raises:
        ClipLengthError: naming ``option``, the frame interval and the shortest clip length.
    """
    if fps is None or not math.isfinite(fps) or fps <= 0:
        return
    interval = 1.0 / fps
    if clip_len < interval * (1 - 1e-6):
        shortest = math.ceil(interval * 1000) / 1000
        raise ClipLengthError(
            f"{path}: {option} {clip_len:g} s is shorter than the video's frame interval "
            f"({interval:.4g} s at {fps:g} fps), so clips would repeat the same frames. Give "
            f"{option} {shortest:g} or more"
        )


def check_video_clips(
    path: str | Path,
    clip_len: float,
    max_clips: int | None,
    *,
    clip_len_option: str = "--clip-len",
    max_clips_option: str = "--max-clips",
) -> int:
    """Probe ``path`` (its header only, nothing decoded) and refuse, before the work starts, a
    clip length shorter than its frame interval or more clips than ``max_clips``.

    Shared by ``momentkit search``, ``index`` and ``extract``: a tiny file may declare a
    duration of years, and a clip length of a millisecond cuts a short video into tens of
    thousands of clips; either would otherwise run for hours.

    Returns:
        The number of clips.

    Raises:
        VideoError: the file cannot be opened as a video.
        ClipLengthError: ``clip_len`` is shorter than one frame.
        TooManyClipsError: more clips than ``max_clips`` (``None``: no limit).
    """
    from momentkit.video.decode import probe

    info = probe(path)
    check_clip_len_fits(path, info.fps, clip_len, clip_len_option)
    return check_clip_count(path, info.duration, clip_len, max_clips, max_clips_option)


class Scorer(Protocol):
    """Turns a video's features and queries into results (the part after the encoders)."""

    @property
    def video_streams(self) -> tuple[str, ...]:
        """The streams read from a :class:`VideoEncoding`."""
        ...

    @property
    def window(self) -> int | None:
        """Most clips seen at once (longer videos use sliding windows); ``None``: no limit."""
        ...

    @property
    def description(self) -> str:
        """One line naming the method."""
        ...

    def predict(
        self, video: VideoEncoding, queries: Sequence[str], top_k: int | None
    ) -> list[QueryResult]:
        """One result per query, in order."""
        ...


def stream_name(store: str | Path) -> str:
    """The stream a feature store holds: its folder name, or for a packed store (``momentkit
    pack``) the folder name of the ``.npz`` directory it was packed from; a ``_features``
    suffix is dropped, so the released QVHighlights folders ``slowfast_features``,
    ``clip_features`` and ``clip_text_features`` hold the streams ``slowfast``, ``clip`` and
    ``clip_text`` that ``momentkit extract`` writes."""
    path = Path(store)
    index = path / "index.json"
    name = path.name
    if index.is_file():
        try:
            source = json.loads(index.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            source = None
        if isinstance(source, str) and source:
            name = Path(source).name
    return name.removesuffix("_features") or name


def checkpoint_streams(cfg: ExperimentConfig, where: Path) -> tuple[tuple[str, ...], str]:
    """``(video streams in order, text stream)`` a checkpoint was trained on.

    Raises:
        PredictorError: the experiment names no video or text features.
    """
    video = tuple(stream_name(p) for p in cfg.data.video_features)
    if not video or not cfg.data.text_features:
        raise PredictorError(
            f"{where}: experiment.json does not say which features the model was trained on "
            "(data.video_features / data.text_features are empty). Give video_streams= and "
            "text_stream= (the stream names) and encoder="
        )
    return video, stream_name(cfg.data.text_features)


def infer_encoder_specs(
    streams: Sequence[str], where: Path, cfg: ExperimentConfig | None = None
) -> list[str]:
    """Encoder specs that write ``streams`` (text stream first), from the stream names.

    Args:
        streams: the checkpoint's stream names (text stream first).
        where: the checkpoint (for messages).
        cfg: its experiment config: the message then says what it was trained on.

    Raises:
        PredictorError: a stream whose name does not identify its encoder.
    """
    specs: list[str] = []
    covered: set[str] = set()
    for stream in streams:
        if stream in covered:
            continue
        spec = STREAM_ENCODERS.get(stream)
        if spec is None:
            raise PredictorError(_unknown_stream_message(stream, streams, where, cfg))
        specs.append(spec)
        covered |= SPEC_STREAMS[spec]
    return specs


def _unknown_stream_message(
    stream: str, streams: Sequence[str], where: Path, cfg: ExperimentConfig | None
) -> str:
    trained = f"{where}: the model was trained on the feature streams {', '.join(streams)}"
    if cfg is not None:
        trained += f" of the '{cfg.data.dataset}' data"
    if cfg is not None and cfg.data.dataset in ("synth", "synth_tad", "synth_long"):
        return (
            f"{trained}: momentkit's synthetic benchmark (`momentkit synth`), whose features "
            "are generated vectors that no encoder computes from a video. Such a checkpoint "
            "answers queries on synthetic features only (`momentkit predict`); to search real "
            "videos, train on features extracted from videos (`momentkit extract`) or use "
            "zero-shot search"
        )
    return (
        f"{trained}; the name '{stream}' does not say which encoder made it. Pass the "
        "encoder(s) that extracted the training features (encoder= in Python, --encoder on the "
        "command line), e.g. clip:openai/clip-vit-base-patch32 when the 'clip' stream came "
        "from that CLIP model "
        "(features of extractors momentkit does not run cannot be computed from a video)"
    )


def build_encoders(encoder: EncoderLike | Sequence[EncoderLike], device: str) -> list[Encoder]:
    """Encoders from specs (``"offline"``, ``"clip:..."``) or ready instances, deduplicated."""
    from momentkit.encoders import build_encoder

    items = [encoder] if isinstance(encoder, str | Encoder) else list(encoder)
    out: list[Encoder] = []
    seen: set[str] = set()
    for item in items:
        enc = build_encoder(item, device=device) if isinstance(item, str) else item
        if enc.name not in seen:
            seen.add(enc.name)
            out.append(enc)
    return out


def producer(encoders: Sequence[Encoder], stream: str) -> Encoder | None:
    """The first encoder writing ``stream`` (video or text), or ``None``."""
    for enc in encoders:
        if stream in enc.video_streams or stream == enc.text_stream:
            return enc
    return None


def check_encoders(
    encoders: Sequence[Encoder],
    video_streams: Sequence[str],
    text_stream: str,
    model_config: Any,
    use_tef: bool,
    where: Path,
) -> Encoder:
    """Check that ``encoders`` write every stream with the widths the model expects; return the
    text encoder.

    Raises:
        PredictorError: naming the missing stream or the mismatching width and the fix.
    """
    names = ", ".join(f"'{e.name}'" for e in encoders)
    written = ", ".join(
        [f"{s} ({d})" for e in encoders for s, d in e.video_streams.items()]
        + [f"{e.text_stream} ({e.text_dim})" for e in encoders if e.text_stream]
    )
    for stream in (*video_streams, text_stream):
        if producer(encoders, stream) is None:
            raise PredictorError(
                f"{where}: the model was trained on stream '{stream}' but encoder(s) {names} "
                f"write {written}. Pass the encoder(s) that extracted the training features "
                "(encoder= / --encoder, repeatable)"
            )
    dims = {s: producer(encoders, s).video_streams[s] for s in video_streams}  # type: ignore[union-attr]
    video_dim, tef = sum(dims.values()), TEF_DIM if use_tef else 0
    expected = getattr(model_config, "video_dim", None)
    if expected is not None and video_dim + tef != expected:
        parts = " + ".join(f"{s} ({d})" for s, d in dims.items())
        raise PredictorError(
            f"{where / 'config.json'}: field 'video_dim': the model takes {expected} channels "
            f"but {parts} from {names} give {video_dim}"
            + (f" + {tef} TEF" if tef else "")
            + f" = {video_dim + tef}. Pass the encoder(s) the training features were made with"
        )
    text_enc = producer(encoders, text_stream)
    assert text_enc is not None
    expected = getattr(model_config, "text_dim", None)
    if expected is not None and text_enc.text_dim != expected:
        raise PredictorError(
            f"{where / 'config.json'}: field 'text_dim': the model takes {expected}-d query "
            f"tokens but '{text_enc.name}' writes {text_stream} with {text_enc.text_dim}. Pass "
            "the encoder the query features were made with"
        )
    return text_enc


def training_window(cfg: ExperimentConfig, model: MomentModel) -> int | None:
    """Clips per window: the training ``data.max_v_len``; without one, the model's position
    table size if it has a learned table, else no limit."""
    if cfg.data.max_v_len is not None:
        return int(cfg.data.max_v_len)
    if getattr(model.config, "position_embedding", "sine") == "learned":
        return int(model.config.max_video_len)
    return None


# ------------------------------------------------------------------------------------ predictor
class Predictor:
    """Encoders plus a scorer: encode a video once, then answer any number of queries.

    Args:
        scorer: a :class:`ModelScorer`, a :class:`~.zero_shot.ZeroShotScorer` or any object
            of the :class:`Scorer` protocol.
        encoders: encoders writing every stream in ``scorer.video_streams``.
        clip_len: seconds per clip.
        clips_per_batch: clips handed to an encoder at once.
        decode_threads: FFmpeg decoder threads (0: FFmpeg chooses).

    Raises:
        PredictorError: a stream the scorer reads is written by no encoder.
    """

    def __init__(
        self,
        scorer: Scorer,
        encoders: Sequence[Encoder],
        clip_len: float,
        *,
        clips_per_batch: int = 16,
        decode_threads: int = 1,
    ) -> None:
        _check_number(clip_len, "clip_len (seconds per clip)")
        self.scorer = scorer
        self.encoders = list(encoders)
        self.clip_len = float(clip_len)
        self.clips_per_batch = clips_per_batch
        self.decode_threads = decode_threads
        self._reference_cache: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
        #: the calibration's reference texts (default: the shipped reference captions); a
        #: benchmark in another text space (the synthetic one) gives its own unrelated queries
        self.reference_texts: Sequence[str] | None = None
        self._video_encoders: dict[str, Encoder] = {}
        for stream in scorer.video_streams:
            enc = next((e for e in self.encoders if stream in e.video_streams), None)
            if enc is None:
                raise PredictorError(
                    f"no encoder writes video stream '{stream}' (encoders: "
                    f"{', '.join(e.name for e in self.encoders) or 'none'})"
                )
            self._video_encoders[stream] = enc

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "cpu",
        encoder: EncoderLike | Sequence[EncoderLike] | None = None,
        overlap: float = 0.5,
        nms_iou: float | None = 0.5,
        video_streams: Sequence[str] | None = None,
        text_stream: str | None = None,
        trim: bool = True,
    ) -> Predictor:
        """A predictor running a trained model.

        A clip-trimming checkpoint (model ``trimming``, :mod:`momentkit.models.trimming`)
        answers through :class:`~momentkit.inference.trimmed.TrimmedScorer`: clip selection on
        videos longer than its MR window (or, with ``trim=False``, its MR model on every clip
        in sliding windows). Any other model reads videos longer than its training length
        through sliding windows.

        Args:
            path: a run directory (``momentkit train --out``; its ``best/`` is used) or a
                checkpoint directory (``model.safetensors`` + ``config.json`` +
                ``experiment.json``).
            device: torch device of the model and encoders.
            encoder: spec(s) or instance(s) of the encoders that made the training features;
                default: inferred from the stream names (see the module doc).
            overlap: overlap of the sliding windows for videos longer than training's.
            nms_iou: IoU at or above which a lower-scored moment is dropped; ``None``: none.
            video_streams, text_stream: the stream names, when the training feature folders
                were named otherwise (default: read from ``experiment.json``).
            trim: with a trimming checkpoint, select clips (default) rather than run its MR
                model on every clip; ignored by other models.

        Raises:
            CheckpointError: no checkpoint at ``path``.
            PredictorError: the encoders do not write the streams/widths the model expects.
            EncoderError: an encoder cannot be built.
        """
        from momentkit.models import MomentModel
        from momentkit.training.pipeline import checkpoint_dir, load_experiment

        ckpt = checkpoint_dir(path)
        cfg = load_experiment(ckpt)
        if video_streams is None or text_stream is None:
            saved_video, saved_text = checkpoint_streams(cfg, ckpt)
            video_streams = tuple(video_streams or saved_video)
            text_stream = text_stream or saved_text
        video_streams = tuple(video_streams)
        model = MomentModel.from_pretrained(ckpt, device=device)
        from momentkit.extraction.record import (
            check_pipeline_encoders,
            checkpoint_pipeline,
            pipeline_encoder_spec,
        )

        record = checkpoint_pipeline(ckpt, cfg.data.video_features, video_streams, cfg.data.dataset)
        if encoder is None:  # the recorded benchmark pipeline, else from the stream names
            encoder = pipeline_encoder_spec(record) or infer_encoder_specs(
                (text_stream, *video_streams), ckpt, cfg
            )
        encoders = build_encoders(encoder, device)
        check_pipeline_encoders(record, encoders, video_streams, ckpt)
        text_encoder = check_encoders(
            encoders, video_streams, text_stream, model.config, cfg.data.use_tef, ckpt
        )
        if model.config.name == "trimming":
            from momentkit.inference.trimmed import TrimmedScorer

            trimmed = TrimmedScorer(
                model,  # type: ignore[arg-type]
                text_encoder,
                video_streams,
                clip_len=cfg.data.clip_len,
                trim=trim,
                overlap=overlap,
                use_tef=cfg.data.use_tef,
                normalize_video=cfg.data.normalize_video,
                normalize_text=cfg.data.normalize_text,
                max_q_len=cfg.data.max_q_len,
                nms_iou=nms_iou,
                device=device,
                batch_size=min(cfg.data.eval_batch_size, 16),
            )
            return cls(trimmed, encoders, cfg.data.clip_len)
        from momentkit.inference.model_scorer import ModelScorer

        scorer = ModelScorer(
            model,
            text_encoder,
            video_streams,
            clip_len=cfg.data.clip_len,
            window=training_window(cfg, model),
            overlap=overlap,
            use_tef=cfg.data.use_tef,
            normalize_video=cfg.data.normalize_video,
            normalize_text=cfg.data.normalize_text,
            max_q_len=cfg.data.max_q_len,
            nms_iou=nms_iou,
            device=device,
            batch_size=cfg.data.eval_batch_size,
        )
        return cls(scorer, encoders, cfg.data.clip_len)

    @classmethod
    def zero_shot(
        cls,
        encoder: EncoderLike = "offline",
        *,
        clip_len: float = 2.0,
        device: str = "cpu",
        temperature: float | None = 0.05,
    ) -> Predictor:
        """A predictor without training: text-clip similarity (see :mod:`.zero_shot`).

        Args:
            encoder: ``offline`` (default, no download), ``clip:<model>``, ``siglip:<model>``
                or an encoder instance with an image-text space.
            clip_len: seconds per clip.
            device: torch device of the encoder.
            temperature: class-weight softmax temperature of the ``offline`` bridge.
        """
        from momentkit.inference.zero_shot import ZeroShotScorer

        if not isinstance(encoder, str | Encoder):
            raise PredictorArgumentError(
                f"encoder must be an encoder spec (e.g. 'offline', 'clip:<model>') or an "
                f"Encoder instance, got {type(encoder).__name__} {encoder!r}"
            )
        _check_number(clip_len, "clip_len (seconds per clip)")
        _check_device(device)
        (enc,) = build_encoders(encoder, device)
        return cls(ZeroShotScorer(enc, clip_len, temperature), [enc], clip_len)

    # -- properties -------------------------------------------------------------------------
    @property
    def video_streams(self) -> dict[str, int]:
        """Stream name -> channels of every video stream read, in order."""
        return {s: enc.video_streams[s] for s, enc in self._video_encoders.items()}

    @property
    def window(self) -> int | None:
        """Most clips the scorer sees at once (longer videos use sliding windows)."""
        return self.scorer.window

    @property
    def description(self) -> str:
        """One line naming the method and its streams."""
        return self.scorer.description

    # -- work -------------------------------------------------------------------------------
    def encode_video(
        self,
        path: str | Path,
        progress: Callable[[int, int], None] | None = None,
        *,
        max_clips: int | None = DEFAULT_MAX_CLIPS,
    ) -> VideoEncoding:
        """Decode ``path`` once and compute every stream the scorer needs.

        Args:
            path: the video file.
            progress: called as ``progress(clips_done, clips_total)`` after every encoded
                batch of clips (and once with ``(0, total)`` before the first). An exception it
                raises propagates and stops the work (a caller's cancellation or time
                budget).
            max_clips: refuse a video of more clips than this before decoding it (default
                :data:`DEFAULT_MAX_CLIPS`, 24 h of 2 s clips, as the command line; ``None``: no
                limit). A clip length shorter than the video's frame interval is refused
                whatever the limit.

        Raises:
            PredictorArgumentError: ``path`` is not a path, ``max_clips`` not a positive
                integer.
            VideoError: the file cannot be decoded.
            ClipLengthError: the clip length is shorter than the video's frame interval.
            TooManyClipsError: more clips than ``max_clips``.
        """
        from momentkit.utils.prefetch import prefetch
        from momentkit.video.decode import ClipReader

        if not isinstance(path, str | Path) or (isinstance(path, str) and not path.strip()):
            raise PredictorArgumentError(
                f"encode_video needs the path of a video file (str or Path), got "
                f"{type(path).__name__} {path!r}"
            )
        if max_clips is not None:
            _check_number(max_clips, "max_clips", integer=True)
        # the checks of `momentkit search/index/extract`, on the header only: a clip length
        # shorter than a frame, or a file declaring years, would otherwise decode for hours
        check_video_clips(
            path,
            self.clip_len,
            max_clips,
            clip_len_option="clip_len",
            max_clips_option="max_clips (encode_video(..., max_clips=N), None: no limit)",
        )
        encoders = list(dict.fromkeys(self._video_encoders.values()))
        if len(encoders) == 1 and isinstance(encoders[0], PipelineEncoder):
            from momentkit.encoders.pipeline_video import encode_video_file

            return encode_video_file(  # decodes the way its benchmark pipeline does
                encoders[0], path, self.clip_len, threads=self.decode_threads, progress=progress
            )
        requests = {e.name: e.frame_request for e in encoders}
        reader = ClipReader(path, self.clip_len, requests, threads=self.decode_threads)
        parts: dict[str, list[np.ndarray]] = {s: [] for s in self._video_encoders}
        batch: list[dict[str, np.ndarray]] = []

        total, done = len(reader), 0
        if progress is not None:
            progress(0, total)

        def flush() -> None:
            nonlocal done
            for enc in encoders:
                feats = enc.encode_clips(np.stack([c[enc.name] for c in batch]))
                for stream in parts:
                    if self._video_encoders[stream] is enc:
                        parts[stream].append(np.asarray(feats[stream], dtype=np.float32))
            done += len(batch)
            batch.clear()
            if progress is not None:
                progress(done, total)

        for clip in prefetch(reader, 2 * self.clips_per_batch):
            batch.append(clip)
            if len(batch) == self.clips_per_batch:
                flush()
        if batch:
            flush()
        streams = {s: np.concatenate(p) for s, p in parts.items()}
        return VideoEncoding(str(path), reader.info.duration, self.clip_len, streams)

    def predict(
        self,
        video: VideoEncoding,
        queries: Sequence[str],
        *,
        top_k: int | None = 10,
        min_relevance: float | None = None,
        calibrate: bool = True,
    ) -> list[QueryResult]:
        """Moments (best first, seconds) and per-clip saliency of each query, in order.

        All queries are scored together (one batch for a trained model). With ``calibrate``
        (the default) every moment gets a relevance in [0, 1] against the reference captions
        and overlapping or nested moments are merged (:mod:`.calibration`); the reference
        captions' saliency is computed once per video.

        Args:
            video: from :meth:`encode_video`.
            queries: the texts.
            top_k: moments kept per query (``None``: all).
            min_relevance: drop moments below this relevance; a query left with none is
                reported with ``no_confident_match``. Needs ``calibrate``.
            calibrate: compute relevance and de-duplicate (``False``: the scorer's raw output).

        Raises:
            PredictorError: no queries, an empty query, a threshold outside [0, 1], or
                ``video`` lacks a stream or was encoded with another clip length.
            PredictorArgumentError: ``video`` is not a :class:`VideoEncoding`, ``queries`` is
                a str (not a list of them), ``top_k`` is not a positive integer.
        """
        from momentkit.inference.calibration import calibrate_result

        if not isinstance(video, VideoEncoding):
            raise PredictorArgumentError(
                f"video must be a VideoEncoding (from predictor.encode_video(path)), got "
                f"{type(video).__name__} {video!r:.80}"
            )
        queries = check_queries(queries)
        if top_k is not None:
            _check_number(top_k, "top_k (moments per query, or None for all)", integer=True)
        if min_relevance is not None:
            _check_number(min_relevance, "min_relevance", strict=False)
        if min_relevance is not None and not (0.0 <= min_relevance <= 1.0):
            raise PredictorError(
                f"the minimum relevance must be in [0, 1], got {min_relevance} (relevance is "
                "the share of unrelated reference captions a moment beats; 0.9 is a good start)"
            )
        if min_relevance is not None and not calibrate:
            raise PredictorError("a minimum relevance needs calibrate=True")
        if not math.isclose(video.clip_len, self.clip_len):
            raise PredictorError(
                f"{video.path}: encoded with {video.clip_len} s clips but this predictor uses "
                f"{self.clip_len} s clips; encode it with this predictor's encode_video"
            )
        missing = [s for s in self.scorer.video_streams if s not in video.streams]
        if missing:
            raise PredictorError(
                f"{video.path}: the encoding lacks stream(s) {', '.join(missing)} (it holds "
                f"{', '.join(video.streams) or 'none'}); encode it with this predictor's "
                "encode_video"
            )
        if video.num_clips == 0:
            raise PredictorError(f"{video.path}: the video has no clips (duration 0)")
        if not calibrate:
            return self.scorer.predict(video, queries, top_k)
        results = self.scorer.predict(video, queries, None)
        reference = self.reference_saliency(video)
        return [
            calibrate_result(r, reference, top_k=top_k, min_relevance=min_relevance)
            for r in results
        ]

    def reference_saliency(self, video: VideoEncoding) -> np.ndarray:
        """``(B, T)`` saliency of the reference captions on ``video`` (the calibration's null).

        Kept for the last :data:`REFERENCE_CACHE` videos, keyed by a fingerprint of the
        features read (not by the object: a server builds a new encoding per request), so
        several queries on one video pay for it once. A scorer with a ``saliency(video,
        texts)`` method (zero-shot) is asked for the saliency only; others run ``predict``.
        """
        from momentkit.inference.calibration import reference_captions

        captions = list(self.reference_texts or reference_captions())
        key = (_fingerprint(video, self.scorer.video_streams), len(captions), hash(tuple(captions)))
        if key in self._reference_cache:
            self._reference_cache.move_to_end(key)
            return self._reference_cache[key]
        saliency = getattr(self.scorer, "saliency", None)
        if callable(saliency):
            value = np.asarray(saliency(video, captions), dtype=np.float32)
        else:
            rows = self.scorer.predict(video, captions, 1)
            value = np.stack([np.asarray(r.saliency, dtype=np.float32) for r in rows])
        self._reference_cache[key] = value
        while len(self._reference_cache) > REFERENCE_CACHE:
            self._reference_cache.popitem(last=False)
        return value

    def search(
        self,
        path: str | Path,
        queries: Sequence[str],
        *,
        top_k: int | None = 10,
        max_clips: int | None = DEFAULT_MAX_CLIPS,
    ) -> list[QueryResult]:
        """:meth:`encode_video` (``max_clips`` as there) then :meth:`predict`."""
        return self.predict(self.encode_video(path, max_clips=max_clips), queries, top_k=top_k)

    def __repr__(self) -> str:
        return f"Predictor({self.description}, clip_len={self.clip_len}, window={self.window})"


#: videos whose reference saliency a predictor keeps
REFERENCE_CACHE = 16


def _fingerprint(video: VideoEncoding, streams: Sequence[str]) -> tuple[object, ...]:
    """What identifies the features a scorer reads: clip grid, shapes and a hash of the data."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for name in streams:
        array = np.ascontiguousarray(video.streams[name])
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(array.data)
    return (video.clip_len, video.duration, video.num_clips, digest.hexdigest())


def check_queries(queries: object) -> list[str]:
    """The queries, each checked by :func:`check_query`.

    Raises:
        PredictorArgumentError: a single str (it would be searched one character per query)
            or something that is not a list of strings.
        PredictorError: no queries, or a bad query.
    """
    if isinstance(queries, str | bytes):
        raise PredictorArgumentError(
            f"queries must be a list of strings, got a {type(queries).__name__} "
            f"{queries!r:.60}: wrap it in a list ([query])"
        )
    if queries is None:
        checked: list[str] = []
    elif hasattr(queries, "__iter__"):
        checked = [check_query(q, i) for i, q in enumerate(queries)]  # type: ignore[arg-type]
    else:
        raise PredictorArgumentError(
            f"queries must be a list of strings, got {type(queries).__name__} {queries!r:.60}"
        )
    if not checked:
        raise PredictorError("no queries given; pass at least one non-empty query")
    return checked


def check_query(query: object, index: int) -> str:
    """``query`` stripped; a PredictorError names a non-string or blank query, or one holding
    a lone surrogate (text decoded with ``errors="surrogateescape"``), which no tokenizer
    reads."""
    if not isinstance(query, str) or not query.strip():
        raise PredictorError(f"query {index + 1} is {query!r}; queries must be non-empty text")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PredictorError(
            f"query {index + 1} ({query!r:.60}) holds an invalid character {query[e.start]!r} "
            f"at position {e.start} (a lone surrogate, not Unicode text); remove it, or decode "
            "the text with errors='replace'"
        ) from None
    return query.strip()


def _check_device(device: object) -> None:
    """Refuse an unknown device or a CUDA device this machine lacks (``resolve_device``)."""
    from momentkit.training.distributed import resolve_device

    if isinstance(device, str) or _is_torch_device(device):
        resolve_device(str(device))
    else:
        raise PredictorArgumentError(
            f"device must be a device name ('cpu', 'cuda', 'cuda:N', 'auto'), got "
            f"{type(device).__name__} {device!r}"
        )


def _is_torch_device(device: object) -> bool:
    import torch

    return isinstance(device, torch.device)
