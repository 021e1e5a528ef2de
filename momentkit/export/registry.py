"""The export formats by name, and ``--export FORMAT:PATH`` targets.

A target is a format and a path. Formats that describe one video (subtitles, chapters) write
one file per video: with several videos the path needs ``{video}`` in its file name, replaced
by the video's id made file-safe (``--export "srt:subs/{video}.srt"``). The other formats write
one file for everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from momentkit.export.chapters import write_ffmetadata, write_youtube
from momentkit.export.jsonfmt import write_document, write_qvh
from momentkit.export.model import Answer, by_video
from momentkit.export.paths import ExportError, fill, unique_slugs
from momentkit.export.subtitles import write_srt, write_vtt
from momentkit.export.table import write_csv

Writer = Callable[[Path, Sequence[Answer], dict[str, Any]], None]

#: the placeholder of per-video paths
VIDEO = "video"


@dataclass(frozen=True)
class Format:
    """An export format.

    Attributes:
        name: what ``--export`` calls it.
        suffix: its usual file extension (a path with it needs no ``FORMAT:``).
        per_video: one file per video (else one for all).
        description: one line for ``--help``.
        write: ``write(path, answers, document)``, atomic.
    """

    name: str
    suffix: str
    per_video: bool
    description: str
    write: Writer


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("json", ".json", False, "the --json document", write_document),
        Format("qvh", ".jsonl", False, "QVHighlights prediction JSON Lines", write_qvh),
        Format("csv", ".csv", False, "one row per moment", write_csv),
        Format("srt", ".srt", True, "SubRip subtitles, a cue per moment", write_srt),
        Format("vtt", ".vtt", True, "WebVTT subtitles, a cue per moment", write_vtt),
        Format("ffmetadata", ".ffmeta", True, "FFmpeg FFMETADATA chapters", write_ffmetadata),
        Format("youtube", ".txt", True, "YouTube-style 'M:SS title' chapter lines", write_youtube),
    )
}


def formats_help() -> str:
    """``name (description)`` of every format, for ``--help``."""
    return "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())


@dataclass(frozen=True)
class ExportTarget:
    """A format and the path (template) it is written to."""

    format: Format
    path: str

    @classmethod
    def parse(cls, spec: str) -> ExportTarget:
        """``FORMAT:PATH``, or a ``PATH`` whose extension names the format (``.json``,
        ``.jsonl``, ``.csv``, ``.srt``, ``.vtt``, ``.ffmeta``).

        Raises:
            ExportError: unknown format, or no path.
        """
        name, sep, path = spec.partition(":")
        if sep and name in FORMATS:
            if not path:
                raise ExportError(f"--export {spec}: no path after '{name}:'")
            return cls(FORMATS[name], path)
        by_suffix = [f for f in FORMATS.values() if f.suffix == Path(spec).suffix.lower()]
        if len(by_suffix) == 1 and by_suffix[0].suffix != ".txt":
            return cls(by_suffix[0], spec)
        raise ExportError(
            f"--export {spec}: give FORMAT:PATH with FORMAT one of {', '.join(FORMATS)} "
            "(e.g. --export csv:moments.csv)"
        )

    def check(self, videos: int | None) -> None:
        """Fail now, before any work, if the path cannot serve ``videos`` videos (``None``: not
        known yet, so a per-video format needs ``{video}``).

        Raises:
            ExportError: naming the target and the fix.
        """
        token = "{" + VIDEO + "}"
        if token in str(Path(self.path).parent):
            raise ExportError(f"--export {self.spec}: {token} may only appear in the file name")
        if self.format.per_video:
            if token not in self.path and (videos is None or videos > 1):
                example = Path(self.path).with_name(f"{token}{self.format.suffix}")
                raise ExportError(
                    f"--export {self.spec}: {self.format.name} writes one file per video and "
                    f"{'several videos' if videos else 'the candidate videos'} are searched; put "
                    f"{token} in the file name, e.g. --export {self.format.name}:{example}"
                )
        elif token in self.path:
            raise ExportError(
                f"--export {self.spec}: {self.format.name} writes one file for all videos; "
                f"drop {token} from the path"
            )

    @property
    def spec(self) -> str:
        return f"{self.format.name}:{self.path}"

    def write(self, answers: Sequence[Answer], document: dict[str, Any]) -> list[Path]:
        """Write the file(s); returns their paths.

        Raises:
            ExportError: a per-video format over several videos without ``{video}``.
        """
        if not self.format.per_video:
            path = Path(self.path)
            self.format.write(path, answers, document)
            return [path]
        groups = by_video(answers)
        token = "{" + VIDEO + "}"
        if token not in self.path:
            if len(groups) > 1:
                self.check(len(groups))
            path = Path(self.path)
            self.format.write(path, answers, document)
            return [path]
        slugs = unique_slugs(list(groups))
        written = []
        for vid, group in groups.items():
            path = fill(self.path, VIDEO, slugs[vid])
            self.format.write(path, group, document)
            written.append(path)
        return written
