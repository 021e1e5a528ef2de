"""SigLIP through Hugging Face ``transformers``: ``siglip:<hub id or local dir>``.

SigLIP was trained on texts padded to a fixed length (64 tokens) and pools the last token,
so queries are padded the same way; the token states returned exclude that padding.
Images are resized to a square without cropping, as SigLIP's processor does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from momentkit.encoders.hf import HFDualEncoder
from momentkit.encoders.preprocess import ImageTransform


class SiglipEncoder(HFDualEncoder):
    """SigLIP image tower per clip frame, text tower per query (see :class:`HFDualEncoder`).

    Streams: ``siglip`` ``(T, D)``; ``siglip_text`` ``(N, D)`` tokens and ``(D,)`` pooled,
    where ``D`` is the towers' width (SigLIP's joint space has the same width).
    """

    family = "siglip"
    model_class = "SiglipModel"

    def default_transform(self, image_size: int) -> ImageTransform:
        """Squash to ``image_size`` x ``image_size``, pixels mapped to [-1, 1]."""
        return ImageTransform(
            resize=(image_size, image_size), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3
        )

    def _image_dim(self, cfg: Any) -> int:
        return int(cfg.vision_config.hidden_size)

    def _token_dim(self, cfg: Any) -> int:
        hidden = cfg.text_config.hidden_size
        return int(
            getattr(cfg.text_config, "projection_size", hidden) if self.project_tokens else hidden
        )

    def _tokenize(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        length = min(64, self.model.config.text_config.max_position_embeddings)
        return self.tokenizer(
            list(queries),
            padding="max_length",
            truncation=True,
            max_length=length,
            return_attention_mask=True,
            return_tensors="pt",
        )

    def _image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).pooler_output

    def _text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # SigLIP attends over the padding too (it was trained so): no attention mask here.
        out = self.model.text_model(input_ids=batch["input_ids"])
        tokens = out.last_hidden_state
        if self.project_tokens:
            tokens = self.model.text_model.head(tokens)
        return tokens, out.pooler_output
