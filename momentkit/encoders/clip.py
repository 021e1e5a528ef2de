"""CLIP through Hugging Face ``transformers``: ``clip:<hub id or local dir>``.

With ``openai/clip-vit-base-patch32`` this gives the 512-d features of QVHighlights'
``clip_features`` (one projected image embedding per 2 s clip) and ``clip_text_features``
(token states ``(N, 512)`` after the final layer norm, and the projected end-of-text
embedding ``(512,)``).
"""

from __future__ import annotations

from typing import Any

import torch

from momentkit.encoders.hf import HFDualEncoder
from momentkit.encoders.preprocess import ImageTransform

# The image statistics CLIP was trained with (OpenAI's preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEncoder(HFDualEncoder):
    """CLIP image tower per clip frame, text tower per query (see :class:`HFDualEncoder`).

    Streams: ``clip`` ``(T, projection_dim)``; ``clip_text`` ``(N, hidden)`` tokens and
    ``(projection_dim,)`` pooled (``(N, projection_dim)`` tokens with ``project_tokens``).
    """

    family = "clip"
    model_class = "CLIPModel"

    def default_transform(self, image_size: int) -> ImageTransform:
        """Shorter side to ``image_size``, centre crop, CLIP's statistics."""
        return ImageTransform(resize=image_size, crop=image_size, mean=CLIP_MEAN, std=CLIP_STD)

    def _image_dim(self, cfg: Any) -> int:
        return int(cfg.projection_dim)

    def _token_dim(self, cfg: Any) -> int:
        return int(cfg.projection_dim if self.project_tokens else cfg.text_config.hidden_size)

    def _image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)

    def _text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
        tokens = out.last_hidden_state
        if self.project_tokens:
            tokens = self.model.text_projection(tokens)
        return tokens, self.model.text_projection(out.pooler_output)
