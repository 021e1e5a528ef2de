"""CLIP's query tokenization exactly as OpenAI's ``clip.tokenize`` does it.

OpenAI cleans a query with ``ftfy.fix_text``, unescapes HTML entities twice, collapses white
space and lower-cases it, then applies its byte-level BPE and wraps the tokens in
``<|startoftext|>`` ... ``<|endoftext|>``; a query longer than the 77-token context is an error
(``truncate=False``), never cut. Hugging Face's CLIP tokenizers normalise differently (no HTML
unescaping; Unicode NFC and Rust lower-casing), so momentkit cleans the text OpenAI's way and
hands it to the Hugging Face BPE with its normaliser switched off: the token ids are OpenAI's.

The BPE vocabulary comes from a Hugging Face tokenizer (hub id or directory with
``vocab.json`` + ``merges.txt``) or from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``.
"""

from __future__ import annotations

import copy
import gzip
import html
import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from momentkit.encoders.base import EncoderError

CONTEXT_LENGTH = 77


def clean_text(text: str) -> str:
    """OpenAI's cleaning: ``ftfy.fix_text``, HTML unescaped twice, white space collapsed,
    lower-cased."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tokenizer_files_from_bpe(bpe_gz: str | Path, out_dir: str | Path) -> Path:
    """Write ``vocab.json`` + ``merges.txt`` (Hugging Face's CLIP format) for OpenAI's
    ``bpe_simple_vocab_16e6.txt.gz``-style merges file; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1] if m.strip()]
    base = list(_bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return out


def load_clip_tokenizer(source: str | Path) -> Any:
    """A fast CLIP tokenizer from a hub id, a directory, or an OpenAI ``.txt.gz`` BPE file.

    Raises:
        EncoderError: the tokenizer cannot be loaded.
    """
    from transformers import CLIPTokenizerFast

    from momentkit.encoders.hf import quiet_transformers

    path = Path(source)
    try:
        with quiet_transformers():
            if path.is_file() and path.name.endswith(".gz"):
                with tempfile.TemporaryDirectory() as tmp:
                    files = tokenizer_files_from_bpe(path, tmp)
                    return CLIPTokenizerFast(
                        vocab=str(files / "vocab.json"), merges=str(files / "merges.txt")
                    )
            return CLIPTokenizerFast.from_pretrained(str(source), local_files_only=path.is_dir())
    except (OSError, ValueError, TypeError) as e:
        raise EncoderError(
            f"cannot load a CLIP tokenizer from '{source}': {e}. Give tokenizer=<hub id, a "
            "directory with vocab.json + merges.txt, or OpenAI's bpe_simple_vocab_16e6.txt.gz>"
        ) from None


class ClipTokenizer:
    """OpenAI-exact CLIP token ids on top of a Hugging Face fast tokenizer.

    Args:
        tokenizer: a ``CLIPTokenizerFast`` (its BPE vocabulary is used; its normaliser is not).
    """

    def __init__(self, tokenizer: Any) -> None:
        backend = copy.deepcopy(tokenizer.backend_tokenizer)
        backend.normalizer = None
        backend.post_processor = None
        self.backend = backend
        self.sot = int(tokenizer.convert_tokens_to_ids("<|startoftext|>"))
        self.eot = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    def encode(self, queries: Sequence[str]) -> list[list[int]]:
        """``[sot, ..., eot]`` ids of each query.

        Raises:
            EncoderError: a query longer than the 77-token context (naming it and its length).
        """
        out = []
        for q in queries:
            ids = [self.sot, *self.backend.encode(clean_text(q), add_special_tokens=False).ids]
            ids.append(self.eot)
            if len(ids) > CONTEXT_LENGTH:
                raise EncoderError(
                    f"query {q[:60]!r}{'...' if len(q) > 60 else ''} is {len(ids) - 2} CLIP tokens "
                    f"long; CLIP reads at most {CONTEXT_LENGTH - 2}. Shorten it (the benchmark's "
                    "extractor refuses longer queries too)"
                )
            out.append(ids)
        return out
