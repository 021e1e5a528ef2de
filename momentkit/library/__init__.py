"""A searchable video library: index a folder once, then find moments across all its videos.

::

    momentkit index videos/ --db library.db          # incremental: only new/changed files
    momentkit query "a dog catches a frisbee" --db library.db

- :mod:`.files`: finding videos and detecting new, changed, moved and deleted files;
- :mod:`.store`: the SQLite database (metadata, clips, feature streams, timings);
- :mod:`.space`: the retrieval space shared by clip and query vectors;
- :mod:`.vectors`: the FAISS vector index;
- :mod:`.indexer`: incremental, crash-safe indexing;
- :mod:`.library`, :mod:`.search`, :mod:`.engine`: two-stage search (coarse retrieval of
  candidate videos, then localisation by a predictor).
"""

from momentkit.library.engine import SearchEngine
from momentkit.library.files import VIDEO_EXTENSIONS, is_video_name, scan_videos
from momentkit.library.indexer import Indexer, IndexReport
from momentkit.library.library import Library
from momentkit.library.search import LibraryMoment, LibraryResult, VideoCandidate, search_library
from momentkit.library.space import RetrievalSpace
from momentkit.library.store import LibraryError, LibraryStore, VideoRecord
from momentkit.library.vectors import VectorIndex

__all__ = [
    "VIDEO_EXTENSIONS",
    "IndexReport",
    "Indexer",
    "Library",
    "LibraryError",
    "LibraryMoment",
    "LibraryResult",
    "LibraryStore",
    "RetrievalSpace",
    "SearchEngine",
    "VectorIndex",
    "VideoCandidate",
    "VideoRecord",
    "is_video_name",
    "scan_videos",
    "search_library",
]
