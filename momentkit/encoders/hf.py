"""Dual (image + text) encoders from Hugging Face ``transformers``: the shared machinery.

A model is named by a hub id (downloaded once into the Hugging Face cache) or a local
directory saved with ``save_pretrained`` (model, tokenizer and, optionally,
``preprocessor_config.json``). Subclasses (:mod:`momentkit.encoders.clip`,
:mod:`momentkit.encoders.siglip`) say which model class to load and how to read its towers.
"""

from __future__ import annotations

import contextlib
import json
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from momentkit.encoders.base import EncoderError, TextFeatures, TorchEncoder
from momentkit.encoders.preprocess import ImageTransform, as_triple
from momentkit.video.decode import FrameRequest


def read_preprocessor_config(model_id: str) -> dict[str, Any]:
    """The model's ``preprocessor_config.json`` as a dict (empty when it has none)."""
    local = Path(model_id)
    if local.is_dir():
        file = local / "preprocessor_config.json"
        return json.loads(file.read_text()) if file.is_file() else {}
    from transformers.utils import cached_file

    path = cached_file(
        model_id, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
    )
    return json.loads(Path(path).read_text()) if path else {}


def image_transform_from_config(cfg: dict[str, Any], default: ImageTransform) -> ImageTransform:
    """The :class:`ImageTransform` an HF image-processor config describes; ``default`` fills gaps.

    Understands both ``size: 224`` and ``size: {"shortest_edge": 224}`` (resize the shorter
    side) and ``size: {"height": h, "width": w}`` (resize to exactly h x w), and ``crop_size``
    as an int or ``{"height", "width"}`` when ``do_center_crop`` is on.
    """
    resize: int | tuple[int, int] = default.resize
    size = cfg.get("size")
    if isinstance(size, int):
        resize = size
    elif isinstance(size, dict) and "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    elif isinstance(size, dict) and {"height", "width"} <= size.keys():
        resize = (int(size["height"]), int(size["width"]))
    crop = default.crop
    if "do_center_crop" in cfg and not cfg["do_center_crop"]:
        crop = None
    elif "crop_size" in cfg:
        c = cfg["crop_size"]
        crop = int(c) if isinstance(c, int) else int(min(c["height"], c["width"]))
    mean = as_triple(cfg["image_mean"]) if "image_mean" in cfg else default.mean
    std = as_triple(cfg["image_std"]) if "image_std" in cfg else default.std
    return ImageTransform(resize=resize, crop=crop, mean=mean, std=std)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings and loading progress bars inside the block only."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


class HFDualEncoder(TorchEncoder):
    """A CLIP-like model: an image tower for clips and a text tower for queries.

    Each clip's ``K`` frames are embedded by the image tower (projected into the joint
    image-text space) and averaged. A query gives its text tower's token states
    (``last_hidden_state``, padding removed) and its pooled, projected embedding
    (``pooler_output``), the layout of Moment-DETR's QVHighlights CLIP features.

    Args:
        model_id: hub id or local directory.
        device: torch device.
        batch_size: images per forward pass.
        frames_per_clip: frames embedded (and averaged) per clip.
        project_tokens: also map token states into the joint space (by default they are the
            text tower's final hidden states, as in the QVHighlights features).

    Raises:
        EncoderError: the model, its tokenizer or its weights cannot be loaded.
    """

    family: str = ""  # stream names: <family> for clips, <family>_text for queries
    model_class: str = ""  # transformers class name

    def __init__(
        self,
        model_id: str,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        frames_per_clip: int = 1,
        project_tokens: bool = False,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        self.model_id = model_id
        self.project_tokens = project_tokens
        self.name = f"{self.family}:{model_id}"
        self.model, self.tokenizer, pre_cfg = self._load(model_id)
        default = self.default_transform(int(self.model.config.vision_config.image_size))
        self.transform = image_transform_from_config(pre_cfg, default)
        self.frame_request = FrameRequest(frames_per_clip, self.transform.short_side)
        cfg = self.model.config
        self.video_streams = {self.family: self._image_dim(cfg)}
        self.text_stream = f"{self.family}_text"
        self.text_dim = self._token_dim(cfg)

    def _load(self, model_id: str) -> tuple[Any, Any, dict[str, Any]]:
        import transformers

        cls = getattr(transformers, self.model_class)
        local = Path(model_id).is_dir()
        try:
            with quiet_transformers():
                model = cls.from_pretrained(model_id, local_files_only=local)
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    model_id, local_files_only=local
                )
            pre_cfg = read_preprocessor_config(model_id)
        except (OSError, ValueError) as e:
            where = "directory" if local else "Hugging Face hub id"
            raise EncoderError(
                f"cannot load {self.model_class} '{model_id}' ({where}): {e}. Give a directory "
                "saved with save_pretrained (model + tokenizer), or a hub id reachable online "
                "or already in the Hugging Face cache"
            ) from None
        return model.to(self.device).eval(), tokenizer, pre_cfg

    @abstractmethod
    def default_transform(self, image_size: int) -> ImageTransform:
        """The preprocessing of a model whose directory has no ``preprocessor_config.json``."""

    @abstractmethod
    def _image_dim(self, cfg: Any) -> int:
        """Channels of the image embedding."""

    @abstractmethod
    def _token_dim(self, cfg: Any) -> int:
        """Channels of the token states."""

    @abstractmethod
    def _image_embeds(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` -> ``(B, D)`` image embeddings in the joint space."""

    @abstractmethod
    def _text_states(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenized queries -> token states ``(B, L, Dt)`` and pooled embeddings ``(B, D)``."""

    def _tokenize(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(queries),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )

    @torch.inference_mode()
    def _encode_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        pixels = self.transform(images, self.device)
        return {self.family: self._image_embeds(pixels).float().cpu().numpy()}

    @torch.inference_mode()
    def encode_text(self, queries: Sequence[str]) -> list[TextFeatures]:
        """Token states ``(N_i, Dt)`` and pooled embedding ``(D,)`` of each query."""
        out: list[TextFeatures] = []
        for i in range(0, len(queries), self.batch_size):
            batch = self._tokenize(queries[i : i + self.batch_size])
            mask = batch["attention_mask"].bool()
            batch = {k: v.to(self.device) for k, v in batch.items()}
            tokens, pooled = self._text_states(batch)
            tokens, pooled = tokens.float().cpu(), pooled.float().cpu()
            out.extend(
                TextFeatures(tokens[j][mask[j]].numpy(), pooled[j].numpy())
                for j in range(len(tokens))
            )
        return out
