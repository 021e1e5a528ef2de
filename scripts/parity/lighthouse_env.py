"""Import line/lighthouse's training code from a checkout, on a machine without its extras.

Lighthouse's ``training/evaluate.py`` imports every model it supports and a few packages the
Moment-DETR / QD-DETR path never calls (``pandas`` in ``basic_utils``, ``torchvision`` in
TR-DETR's loss, ``einops`` in UVCOM). :func:`import_lighthouse` installs empty stand-ins for
those that are missing, plus a stand-in ``easydict`` (a dict with attribute access, the type
Lighthouse's options are), then imports the official modules from the checkout. Nothing of the
official code is copied: it runs as released.

The stand-ins live in :mod:`momentkit.benchmarks.official_env` (shared with ``momentkit bench
train/infer --official-dir``); this module keeps the names the fixture scripts import.
"""

from __future__ import annotations

from momentkit.benchmarks.official_env import (
    EasyDict,
    import_lighthouse,
    install_lighthouse_stand_ins,
    stand_in,
)

_stand_in = stand_in
install_stand_ins = install_lighthouse_stand_ins

__all__ = ["EasyDict", "_stand_in", "import_lighthouse", "install_stand_ins"]
