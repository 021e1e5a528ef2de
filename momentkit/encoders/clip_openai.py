"""OpenAI's CLIP weights in Hugging Face ``transformers``' ``CLIPModel``, both directions.

The benchmark features were made with OpenAI's ``clip`` package and its ``ViT-B-32.pt`` (a
TorchScript archive, fp16 weights and fp32 norms/embeddings). momentkit runs CLIP through
``transformers`` and accepts either form of the same weights:

- OpenAI's archive (read with :mod:`momentkit.encoders.torchscript_archive`, never
  ``torch.jit.load``), mapped here onto ``CLIPModel`` (the sizes are read from the shapes, as
  OpenAI's ``build_model`` does; fp16 values are widened to fp32 exactly, as ``clip.load`` on
  the CPU does);
- a ``CLIPModel`` directory saved with ``save_pretrained``, or a hub id.

``in_proj`` of OpenAI's attention is split into ``q/k/v_proj``; ``proj`` / ``text_projection``
are transposed into ``visual_projection`` / ``text_projection`` (``nn.Linear`` weights).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from momentkit.encoders.base import EncoderError

#: OpenAI's model name -> the Hugging Face hub id of the same weights
HUB_IDS = {"ViT-B/32": "openai/clip-vit-base-patch32", "ViT-B/16": "openai/clip-vit-base-patch16"}

#: OpenAI's archive names that are no weights (sizes stored as tensors by some exports)
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "logit_scale")

_LAYER = r"(?P<tower>visual\.transformer|transformer)\.resblocks\.(?P<i>\d+)\."
_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_SINGLE = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}


def _layers(state: Mapping[str, Any], tower: str) -> int:
    found = {int(m[1]) for k in state if (m := re.match(rf"{tower}\.resblocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def hf_config_from_openai(state: Mapping[str, Any]) -> Any:
    """The ``CLIPConfig`` of an OpenAI ViT CLIP state dict, from its shapes.

    Raises:
        EncoderError: not the state dict of an OpenAI ViT CLIP (e.g. a ResNet CLIP).
    """
    from transformers import CLIPConfig

    try:
        conv = state["visual.conv1.weight"]
        vision_width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = int(state["ln_final.weight"].shape[0])
        embed_dim = int(state["text_projection"].shape[1])
        vocab, context = (
            state["token_embedding.weight"].shape[0],
            state["positional_embedding"].shape[0],
        )
    except KeyError as e:
        raise EncoderError(
            f"not an OpenAI ViT CLIP checkpoint: tensor {e} is missing (ResNet CLIPs are not "
            "supported; give ViT-B/32)"
        ) from None
    return CLIPConfig(
        projection_dim=embed_dim,
        text_config={
            "vocab_size": int(vocab),
            "hidden_size": text_width,
            "intermediate_size": 4 * text_width,
            "num_hidden_layers": _layers(state, "transformer"),
            "num_attention_heads": max(1, text_width // 64),
            "max_position_embeddings": int(context),
            "hidden_act": "quick_gelu",
            "projection_dim": embed_dim,
            "bos_token_id": int(vocab) - 2,
            "eos_token_id": int(vocab) - 1,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": 4 * vision_width,
            "num_hidden_layers": _layers(state, "visual.transformer"),
            "num_attention_heads": max(1, vision_width // 64),
            "image_size": patch * grid,
            "patch_size": patch,
            "hidden_act": "quick_gelu",
            "projection_dim": embed_dim,
        },
    )


def hf_state_from_openai(state: Mapping[str, Any], source: str | Path) -> dict[str, Any]:
    """OpenAI CLIP tensors -> ``CLIPModel`` state dict (fp32). Unknown tensors are refused."""
    import torch

    out: dict[str, Any] = {}
    for name, tensor in state.items():
        t = tensor.detach().to(torch.float32)
        if name in _NOT_WEIGHTS or name.endswith("attn_mask"):
            if name == "logit_scale":
                out["logit_scale"] = t
            continue
        if name in _SINGLE:
            out[_SINGLE[name]] = t
        elif name == "text_projection":
            out["text_projection.weight"] = t.T.contiguous()
        elif name == "visual.proj":
            out["visual_projection.weight"] = t.T.contiguous()
        elif m := re.fullmatch(_LAYER + r"(?P<rest>.+)", name):
            tower = "vision_model" if m["tower"] == "visual.transformer" else "text_model"
            base = f"{tower}.encoder.layers.{m['i']}."
            rest = m["rest"]
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight / bias
                for part, chunk in zip("qkv", t.chunk(3, 0), strict=True):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
                continue
            module, _, param = rest.rpartition(".")
            if module not in _BLOCK:
                raise EncoderError(f"{source}: unexpected CLIP tensor '{name}'")
            out[f"{base}{_BLOCK[module]}.{param}"] = t
        else:
            raise EncoderError(
                f"{source}: unexpected tensor '{name}' for an OpenAI ViT CLIP; the file holds "
                "another model"
            )
    return out


def openai_state_from_hf(state: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`hf_state_from_openai` (fp32): ``CLIPModel`` -> OpenAI names."""
    import torch

    single = {v: k for k, v in _SINGLE.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, Any] = {}
    qkv: dict[tuple[str, str], dict[str, Any]] = {}
    for name, t in state.items():
        if name.endswith("position_ids"):
            continue
        if name in single:
            out[single[name]] = t
        elif name == "logit_scale":
            out[name] = t
        elif name == "text_projection.weight":
            out["text_projection"] = t.T.contiguous()
        elif name == "visual_projection.weight":
            out["visual.proj"] = t.T.contiguous()
        elif m := re.fullmatch(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)", name):
            tower = "visual.transformer" if m[1] == "vision_model" else "transformer"
            base = f"{tower}.resblocks.{m[2]}."
            if pm := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", m[3]):
                qkv.setdefault((base, pm[2]), {})[pm[1]] = t
                continue
            module, _, param = m[3].rpartition(".")
            out[f"{base}{block[module]}.{param}"] = t
    for (base, kind), parts in qkv.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"], 0)
    return out


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip with ``<name>/data.pkl`` (a TorchScript / torch zip file)."""
    import zipfile

    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(re.fullmatch(r"[^/]+/data\.pkl", n) for n in z.namelist())


def load_openai_archive(path: str | Path) -> Any:
    """A ``CLIPModel`` (fp32, eval) with the weights of OpenAI's TorchScript archive ``path``.

    Raises:
        EncoderError: not an OpenAI ViT CLIP; the archive reader's errors for bad files.
    """
    import torch
    from transformers import CLIPModel

    from momentkit.encoders.hf import quiet_transformers
    from momentkit.encoders.torchscript_archive import read_torchscript_tensors

    tensors = read_torchscript_tensors(path)
    try:
        config = hf_config_from_openai(tensors)
    except EncoderError as e:
        raise EncoderError(f"{path}: {e}") from None
    state = hf_state_from_openai(tensors, path)
    with quiet_transformers(), torch.device("meta"):
        model = CLIPModel(config)
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise EncoderError(
            f"{path}: the archive lacks CLIP tensors ({', '.join(missing[:4])}); it is "
            "incomplete or another model"
        )
    for key, value in expected.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise EncoderError(
                f"{path}: tensor for '{key}' has shape {tuple(state[key].shape)}, expected "
                f"{tuple(value.shape)}; the archive is not a standard OpenAI ViT CLIP"
            )
    model = model.to_empty(device="cpu")
    model.load_state_dict(state, strict=False, assign=True)
    for name, buf in model.named_buffers():  # position_ids are not in the state dict
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1]).view_as(buf))
    return model.float().eval()
