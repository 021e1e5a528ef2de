"""Run line/lighthouse's feature extractor from a checkout, with random weights in the real formats.

Lighthouse's extractor (``lighthouse/feature_extractor``, ``lighthouse/frame_loaders``) needs
the ``ffmpeg`` binary and ``ffmpeg-python``, OpenAI's ``clip`` package (``clip-anytorch`` on PyPI
installs it), ``ftfy`` and ``fvcore``; the fixture script checks for them and says how to install
them. Modules its CLIP/SlowFast path imports but never calls are stood in when missing:
``torchvision`` (ResNet-152 and CLIP's PIL transforms), ``msclap`` (CLAP), ``librosa`` (PANN),
plus those of ``lighthouse_env.py``.

Nothing of the official code is copied or changed: it runs as released. Two things are pointed
elsewhere, from the outside: ``clip.load("ViT-B/32")`` reads a given TorchScript archive instead
of downloading OpenAI's (:func:`use_clip_archive`), and ``clip.tokenize`` may use a given BPE
vocabulary (:func:`use_bpe_vocabulary`).

Used by ``scripts/parity/lighthouse_features_fixtures.py`` and ``momentkit bench extract
--official-dir`` only (not by momentkit, not by CI).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import shutil
import sys
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lighthouse_env import _stand_in, install_stand_ins  # noqa: E402


class _Anything:
    """A callable stand-in accepting any arguments (torchvision transforms never applied)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stand-in called: this path of the official code is not used")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()


def check_requirements() -> None:
    """Exit with the install commands when the extractor's requirements are missing."""
    missing = []
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        missing.append("the ffmpeg binaries (apt-get install -y ffmpeg)")
    for module, package in (
        ("ffmpeg", "ffmpeg-python"),
        ("clip", "clip-anytorch --no-deps"),
        ("ftfy", "ftfy"),
        ("fvcore", "fvcore --no-deps"),
        ("regex", "regex"),
        ("PIL", "pillow"),
        ("pkg_resources", "'setuptools<81'"),
    ):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module} (pip install {package})")
    if missing:
        raise SystemExit("Lighthouse's feature extractor needs: " + "; ".join(missing))


def install_feature_stand_ins() -> None:
    """Stand-ins for what the CLIP/SlowFast path imports but never calls."""
    real_torchvision = "torchvision" not in sys.modules and (
        importlib.util.find_spec("torchvision") is not None
    )
    install_stand_ins()
    if not real_torchvision:
        tv = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        for name in ("Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"):
            setattr(transforms, name, _Anything)
        transforms.InterpolationMode = _Anything()  # type: ignore[attr-defined]
        tv.transforms = transforms  # type: ignore[attr-defined]
        tv.models = _Anything()  # type: ignore[attr-defined]
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.transforms"] = transforms
    _stand_in("msclap", CLAP=_Anything)
    _stand_in("librosa")
    for parent, children in {
        "torchlibrosa": {
            "stft": {"Spectrogram": _Anything, "LogmelFilterBank": _Anything},
            "augmentation": {"SpecAugmentation": _Anything},
        },
        "torchaudio": {"transforms": {}},
        "sklearn": {"cluster": {"KMeans": _Anything}},
    }.items():
        if importlib.util.find_spec(parent) is not None:
            continue
        module = types.ModuleType(parent)
        sys.modules[parent] = module
        for child, attrs in children.items():
            sub = types.ModuleType(f"{parent}.{child}")
            sub.__dict__.update(attrs)
            setattr(module, child, sub)
            sys.modules[f"{parent}.{child}"] = sub
    for name, module in list(sys.modules.items()):  # find_spec() must not fail on stand-ins
        if isinstance(module, types.ModuleType) and getattr(module, "__spec__", 1) is None:
            if getattr(module, "__file__", None) is None and "." not in name:
                module.__spec__ = importlib.machinery.ModuleSpec(name, None)


def import_extractor(official_dir: str | Path) -> types.SimpleNamespace:
    """Lighthouse's frame loaders and encoders, imported from the checkout ``official_dir``.

    Returns a namespace with ``CLIPLoader``, ``SlowFastLoader``, ``CLIPVision``, ``SlowFast``,
    ``CLIPText``, ``VisionEncoder``, ``TextEncoder`` and the ``clip`` package.
    """
    root = Path(official_dir).resolve()
    if not (root / "lighthouse" / "feature_extractor" / "vision_encoder.py").is_file():
        raise SystemExit(f"{root}: not a line/lighthouse checkout (lighthouse/feature_extractor/)")
    check_requirements()
    install_feature_stand_ins()
    sys.path[:0] = [str(root), str(root / "training")]
    names = {
        "CLIPLoader": ("lighthouse.frame_loaders.clip_loader", "CLIPLoader"),
        "SlowFastLoader": ("lighthouse.frame_loaders.slowfast_loader", "SlowFastLoader"),
        "CLIPVision": ("lighthouse.feature_extractor.vision_encoders.clip_v", "CLIPVision"),
        "SlowFast": ("lighthouse.feature_extractor.vision_encoders.slowfast", "SlowFast"),
        "CLIPText": ("lighthouse.feature_extractor.text_encoders.clip_t", "CLIPText"),
        "VisionEncoder": ("lighthouse.feature_extractor.vision_encoder", "VisionEncoder"),
        "TextEncoder": ("lighthouse.feature_extractor.text_encoder", "TextEncoder"),
    }
    out = {k: getattr(importlib.import_module(m), a) for k, (m, a) in names.items()}
    out["clip"] = importlib.import_module("clip")
    return types.SimpleNamespace(**out)


def import_predictors(official_dir: str | Path) -> types.ModuleType:
    """``lighthouse.models`` (``MomentDETRPredictor``, ``QDDETRPredictor``, ...)."""
    import_extractor(official_dir)
    return importlib.import_module("lighthouse.models")


def use_clip_archive(archive: str | Path) -> None:
    """Make ``clip.load("ViT-B/32")`` read ``archive`` instead of downloading OpenAI's file."""
    import clip.clip as clip_module

    path = str(Path(archive).resolve())
    clip_module._download = lambda url, root=None: path  # noqa: ARG005


def use_bpe_vocabulary(bpe_gz: str | Path) -> None:
    """Make ``clip.tokenize`` use the BPE merges of ``bpe_gz`` (a ``.txt.gz`` like OpenAI's)."""
    import clip.clip as clip_module
    from clip.simple_tokenizer import SimpleTokenizer

    clip_module._tokenizer = SimpleTokenizer(bpe_path=str(bpe_gz))
