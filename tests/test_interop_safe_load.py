"""Foreign pickles are read through an allow-list: data comes back, code never runs."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from momentkit.interop.safe_pickle import (
    OptionDict,
    UnreadableCheckpointError,
    UnsafeFileError,
    load_numpy_pickle,
    load_torch_checkpoint,
    options_to_dict,
)


def _official_like(tmp_path):
    """What LD-DETR's / MS-DETR's train.py saves: tensors (as if from cuda:0) and a Namespace."""
    opt = argparse.Namespace(
        hidden_dim=256, device=torch.device("cuda", 0), v_feat_dirs=["a", "b"], lr=1e-4
    )
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "opt": opt}
    state["optimizer"] = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}
    path = tmp_path / "model_best.ckpt"
    torch.save(state, path)
    return path


def test_reads_tensors_and_the_saved_namespace(tmp_path) -> None:
    ckpt = load_torch_checkpoint(_official_like(tmp_path))
    assert torch.equal(ckpt["model"]["w"], torch.arange(6.0).reshape(2, 3))
    assert ckpt["model"]["w"].device.type == "cpu"
    assert isinstance(ckpt["opt"], argparse.Namespace)
    assert ckpt["opt"].device == torch.device("cuda", 0) and ckpt["opt"].hidden_dim == 256
    assert options_to_dict(ckpt["opt"])["v_feat_dirs"] == ["a", "b"]
    assert ckpt["optimizer"]["state"][0]["exp_avg"].shape == (2,)


def test_reads_the_legacy_torch_format(tmp_path) -> None:
    path = tmp_path / "old.pth"
    torch.save({"a": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_checkpoint(path)["a"], torch.ones(3))


def test_easydict_options_come_back_as_an_option_dict(tmp_path) -> None:
    """Lighthouse saves an ``easydict.EasyDict``; easydict need not be installed to read it."""
    module = types.ModuleType("easydict")

    class EasyDict(dict):
        def __init__(self, d=None):
            super().__init__()
            for k, v in (d or {}).items():
                setattr(self, k, v)

        def __setattr__(self, k, v):
            super().__setitem__(k, v)
            super().__setattr__(k, v)

    EasyDict.__module__ = "easydict"
    EasyDict.__qualname__ = "EasyDict"
    module.EasyDict = EasyDict
    sys.modules["easydict"] = module
    try:
        path = tmp_path / "lighthouse.ckpt"
        torch.save({"model": {}, "opt": EasyDict({"clip_length": 2, "dset_name": "qv"})}, path)
    finally:
        del sys.modules["easydict"]
    opt = load_torch_checkpoint(path)["opt"]
    assert isinstance(opt, OptionDict) and opt.clip_length == 2 and opt["dset_name"] == "qv"


class _Payload:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint contains."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: _Payload(os.system, f"touch {marker}"),
        lambda marker: _Payload(subprocess.call, ["touch", str(marker)]),
        lambda marker: _Payload(eval, f"open({str(marker)!r}, 'w')"),
        lambda marker: _Payload(exec, f"open({str(marker)!r}, 'w')"),
    ],
)
def test_a_checkpoint_with_code_is_refused_before_anything_runs(tmp_path, payload) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"model": {"w": torch.ones(1)}, "opt": payload(marker)}, path)
    with pytest.raises(UnsafeFileError, match=r"evil\.ckpt: refused to load: the file names"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_a_class_of_the_official_code_is_refused(tmp_path) -> None:
    """Pickled objects of arbitrary classes would import their module: refused by name."""
    path = tmp_path / "module.ckpt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole module, not a state dict
    with pytest.raises(UnsafeFileError, match="torch.nn.modules.linear.Linear"):
        load_torch_checkpoint(path)


@pytest.mark.parametrize("cut", [0, 10, 300])
def test_empty_and_truncated_files_get_a_clear_error(tmp_path, cut) -> None:
    data = _official_like(tmp_path).read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[:cut])
    with pytest.raises(UnreadableCheckpointError, match=r"cut\.ckpt: "):
        load_torch_checkpoint(path)


def test_a_text_file_and_a_directory_get_a_clear_error(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(UnreadableCheckpointError, match="notes.txt"):
        load_torch_checkpoint(text)
    with pytest.raises(UnreadableCheckpointError, match="not a regular file"):
        load_torch_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_torch_checkpoint(tmp_path / "missing.ckpt")


def test_numpy_pickles_in_python2_layout(tmp_path) -> None:
    """Caffe2 weight files: {"blobs": {name: array}} pickled with protocol 2, read as latin-1."""
    blobs = {"conv1_w": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "lr": np.float32(0.1)}
    path = tmp_path / "SLOWFAST_8x8_R50.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": blobs, "model_iter": 196000}, f, protocol=2)
    got = load_numpy_pickle(path)
    assert np.array_equal(got["blobs"]["conv1_w"], blobs["conv1_w"])
    assert got["model_iter"] == 196000


def test_numpy_pickle_with_code_is_refused(tmp_path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "weights.pkl"
    with path.open("wb") as f:
        pickle.dump({"blobs": _Payload(os.system, f"touch {marker}")}, f, protocol=2)
    with pytest.raises(UnsafeFileError, match="posix.system|os.system"):
        load_numpy_pickle(path)
    assert not marker.exists()
