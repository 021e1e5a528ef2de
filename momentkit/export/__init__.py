"""Writing search results: data formats, subtitles, chapters and cut clips.

- :mod:`.model`: :class:`Answer` (one query's moments in one video), built from a
  predictor's or a library's results;
- :mod:`.jsonfmt` (``json``, ``qvh``), :mod:`.table` (``csv``), :mod:`.subtitles` (``srt``,
  ``vtt``), :mod:`.chapters` (``ffmetadata``, ``youtube``): the writers, registered by name in
  :data:`FORMATS` (:mod:`.registry`); every write is atomic;
- :mod:`.clips`: each moment cut out as a file;
- :mod:`.paths`: file names built from data, which never leave their folder.
"""

from momentkit.export.clips import export_clips
from momentkit.export.model import Answer, ExportMoment, by_video, from_library, from_results
from momentkit.export.paths import ExportError, slugify, unique_slugs, video_ids
from momentkit.export.registry import FORMATS, ExportTarget, Format, formats_help

__all__ = [
    "FORMATS",
    "Answer",
    "ExportError",
    "ExportMoment",
    "ExportTarget",
    "Format",
    "by_video",
    "export_clips",
    "formats_help",
    "from_library",
    "from_results",
    "slugify",
    "unique_slugs",
    "video_ids",
]
