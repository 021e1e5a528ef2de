"""The word lists of the offline generator and a tokenizer that keeps every token's surface form.

:func:`load_lexicon` reads the built-in ``lexicon.json`` (or a user file of the same schema):

- ``synonyms``: word -> near-synonyms (semantic positives);
- ``antonyms``: word -> opposites (negatives);
- ``pos``: ``noun`` / ``verb`` / ``adjective`` word pools (which words may be edited, and the
  pool "unrelated" replacements are drawn from);
- ``temporal``: ``antonyms`` of temporal connectives (``after`` <-> ``before``).

Synonym and antonym relations are made symmetric on loading. Words are lower-case surface forms
(``talks``, ``talking``), so no morphology is needed.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from momentkit.utils.errors import FormatError
from momentkit.utils.io import read_json

BUILTIN_LEXICON = Path(__file__).with_name("lexicon.json")
EDITABLE_POS = ("noun", "verb", "adjective")
#: the keys of a lexicon file (``format``, ``version`` and ``about`` describe it, unread)
LEXICON_KEYS = ("synonyms", "antonyms", "pos", "temporal", "format", "version", "about")
_TOKEN = re.compile(r"[A-Za-z0-9']+(?:-[A-Za-z0-9']+)*|[^\sA-Za-z0-9']")
_NO_SPACE_BEFORE = set(",.;:!?)'")
#: words never edited (articles, prepositions, pronouns, auxiliaries)
STOPWORDS = frozenset(
    "a an the and or but of in on at to from with without by for into onto over under up "
    "down out off about through around along near behind between while after before then "
    "is are was were be been being has have had do does did it its he she they them him her "
    "his their this that these those there here who which what when where how some each one "
    "two three as s t".split()
)


def tokenize(text: str) -> list[str]:
    """Words and punctuation of ``text``, surface forms kept (``"a dog, jumping."`` -> 5)."""
    return _TOKEN.findall(text)


def detokenize(tokens: list[str]) -> str:
    """Join tokens with single spaces, none before punctuation."""
    out = ""
    for tok in tokens:
        if out and tok not in _NO_SPACE_BEFORE:
            out += " "
        out += tok
    return out


def match_case(word: str, like: str) -> str:
    """``word`` capitalised as ``like`` (``Dog`` -> ``Puppy``)."""
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


@dataclass(frozen=True)
class Lexicon:
    """Symmetric word relations and part-of-speech pools (see the module doc).

    Attributes:
        synonyms: word -> sorted near-synonyms.
        antonyms: word -> sorted antonyms.
        pos: part of speech -> sorted words.
        temporal_antonyms: connective -> its temporal opposite.
        source: the file it was read from.
        closed_vocabulary: replacements of negatives must come from the pools (a closed world
            such as the synthetic benchmark's; see :meth:`with_pools`).
    """

    synonyms: dict[str, tuple[str, ...]]
    antonyms: dict[str, tuple[str, ...]]
    pos: dict[str, tuple[str, ...]]
    temporal_antonyms: dict[str, str]
    source: str = ""
    closed_vocabulary: bool = False

    def with_pools(self, **pools: list[str] | tuple[str, ...]) -> Lexicon:
        """A closed-vocabulary copy whose part-of-speech pools are ``pools`` (e.g.
        ``noun=[...], verb=[...]``): only those words are edited or used as replacements."""
        unknown = sorted(set(pools) - set(EDITABLE_POS))
        if unknown:
            raise ValueError(f"unknown parts of speech {unknown}; use {', '.join(EDITABLE_POS)}")
        new_pos = {k: tuple(sorted(set(v))) for k, v in pools.items()}
        return dataclasses.replace(self, pos=new_pos, closed_vocabulary=True)

    def part_of_speech(self, word: str) -> str | None:
        """The first part of speech listing ``word`` (lower-case), else ``None``."""
        w = word.lower()
        for name in EDITABLE_POS:
            if w in self._pos_sets[name]:
                return name
        if w in self.synonyms or w in self.antonyms:  # related words inherit a pool
            for other in self.synonyms.get(w, ()) + self.antonyms.get(w, ()):
                for name in EDITABLE_POS:
                    if other in self._pos_sets[name]:
                        return name
        return None

    @functools.cached_property
    def _pos_sets(self) -> dict[str, frozenset[str]]:
        return {name: frozenset(self.pos.get(name, ())) for name in EDITABLE_POS}

    def related(self, word: str) -> set[str]:
        """``word``, its synonyms and antonyms (lower-case): never "unrelated" to it."""
        w = word.lower()
        return {w, *self.synonyms.get(w, ()), *self.antonyms.get(w, ())}


def _symmetric(pairs: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    out: dict[str, set[str]] = {}
    for word, others in pairs.items():
        for other in others:
            if other != word:
                out.setdefault(word, set()).add(other)
                out.setdefault(other, set()).add(word)
    return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


def _word_lists(obj: object, path: Path, field: str) -> dict[str, list[str]]:
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v)
        for k, v in obj.items()
    ):
        raise FormatError(path, None, field, "expected an object of word -> list of words")
    bad = [w for k, v in obj.items() for w in [k, *v] if not re.fullmatch(r"[a-z0-9']+", w)]
    if bad:
        raise FormatError(
            path, None, field, f"{bad[:3]} are not single lower-case words", "Split phrases"
        )
    return obj


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The built-in lexicon, or a JSON file of the same schema.

    Raises:
        FormatError: naming the file and the malformed field, or keys the schema does not
            have (``{"words": ...}`` would otherwise be ignored silently).
    """
    path = Path(path) if path is not None else BUILTIN_LEXICON
    data = read_json(path, "a lexicon (JSON)")  # FormatError: not UTF-8, invalid JSON
    if not isinstance(data, dict):
        raise FormatError(path, None, None, "expected a JSON object")
    unknown_keys = sorted(set(data) - set(LEXICON_KEYS))
    if unknown_keys:
        raise FormatError(
            path, None, unknown_keys[0], f"unknown key(s) {unknown_keys}",
            f"A lexicon holds {', '.join(LEXICON_KEYS)} (see the built-in {BUILTIN_LEXICON.name})",
        )  # fmt: skip
    synonyms = _word_lists(data.get("synonyms", {}), path, "synonyms")
    antonyms = _word_lists(data.get("antonyms", {}), path, "antonyms")
    pos = _word_lists(data.get("pos", {}), path, "pos")
    unknown = sorted(set(pos) - set(EDITABLE_POS))
    if unknown:
        raise FormatError(path, None, "pos", f"unknown parts of speech {unknown}",
                          f"Use {', '.join(EDITABLE_POS)}")  # fmt: skip
    temporal = data.get("temporal", {})
    if not isinstance(temporal, dict):
        raise FormatError(path, None, "temporal", 'expected an object {"antonyms": {...}}')
    temporal = temporal.get("antonyms", {})
    if not isinstance(temporal, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in temporal.items()
    ):
        raise FormatError(path, None, "temporal.antonyms", "expected word -> word")
    return Lexicon(
        synonyms=_symmetric(synonyms),
        antonyms=_symmetric(antonyms),
        pos={k: tuple(sorted(set(v))) for k, v in pos.items()},
        temporal_antonyms={k.lower(): v.lower() for k, v in temporal.items()},
        source=str(path),
    )
