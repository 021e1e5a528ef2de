"""Feature extraction from videos and queries into the standard ``.npz`` layout."""

from momentkit.extraction.pipeline import (
    ExtractionConfig,
    ExtractionReport,
    Extractor,
    VideoResult,
    feature_file,
    read_queries,
    video_id,
)
from momentkit.extraction.runner import build_extractor, find_videos, run_extraction
from momentkit.utils.prefetch import prefetch

__all__ = [
    "ExtractionConfig",
    "ExtractionReport",
    "Extractor",
    "VideoResult",
    "build_extractor",
    "feature_file",
    "find_videos",
    "prefetch",
    "read_queries",
    "run_extraction",
    "video_id",
]
