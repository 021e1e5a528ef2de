"""Import line/lighthouse's training code from a checkout, on a machine without its extras.

Lighthouse's ``training/evaluate.py`` imports every model it supports and a few packages the
Moment-DETR / QD-DETR path never calls (``pandas`` in ``basic_utils``, ``torchvision`` in
TR-DETR's loss, ``einops`` in UVCOM). :func:`import_lighthouse` installs empty stand-ins for
those that are missing, plus a stand-in ``easydict`` (a dict with attribute access, the type
Lighthouse's options are), then imports the official modules from the checkout. Nothing of the
official code is copied: it runs as released.

Used by ``scripts/parity/lighthouse_fixtures.py`` only (not by momentkit, not by CI).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any


class EasyDict(dict):
    """Stand-in for ``easydict.EasyDict``: keys are attributes (what Lighthouse reads)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _stand_in(name: str, **attrs: Any) -> None:
    if importlib.util.find_spec(name) is not None:
        return
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def install_stand_ins() -> None:
    """Empty modules for the packages the Moment-DETR/QD-DETR path imports but never calls,
    and ``easydict.EasyDict`` (this module's :class:`EasyDict`, also so that pickles name it)."""
    if importlib.util.find_spec("easydict") is None:
        EasyDict.__module__ = "easydict"
        _stand_in("easydict", EasyDict=EasyDict)
    _stand_in("pandas")
    _stand_in("torchvision")
    _stand_in("einops", rearrange=None, repeat=None)


def import_lighthouse(official_dir: str | Path) -> types.SimpleNamespace:
    """The official modules the fixtures run, imported from the checkout ``official_dir``.

    Returns a namespace with ``moment_detr``, ``qd_detr`` (model + criterion builders),
    ``config`` (``BaseOptions``), ``dataset`` (labels, collate, ``prepare_batch_inputs``),
    ``evaluate`` (``compute_mr_results``, the official prediction + post-processing path) and
    ``easydict`` (the ``EasyDict`` class in use).
    """
    root = Path(official_dir).resolve()
    if not (root / "lighthouse" / "common" / "qd_detr.py").is_file():
        raise SystemExit(f"{root}: not a line/lighthouse checkout (lighthouse/common/ missing)")
    install_stand_ins()
    sys.path[:0] = [str(root), str(root / "training")]  # evaluate.py imports standalone_eval
    names = {
        "moment_detr": "lighthouse.common.moment_detr",
        "qd_detr": "lighthouse.common.qd_detr",
        "config": "training.config",
        "dataset": "training.dataset",
        "evaluate": "training.evaluate",
        "easydict": "easydict",
    }
    return types.SimpleNamespace(**{k: importlib.import_module(v) for k, v in names.items()})
