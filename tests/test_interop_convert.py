"""The conversion framework: explicit tensor tables, nothing silently dropped, clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from momentkit.cli.main import main
from momentkit.interop.convert import ConversionError, TensorRule, map_tensors
from momentkit.interop.parity import grad_signature, random_state, state_shapes


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(4)


RULES = [
    TensorRule(r"input_proj\.(?P<p>weight|bias)", "proj.{p}"),
    TensorRule(r"heads\.\d+\.(?P<p>weight|bias)", "head.{p}"),  # one head shared by layers
    TensorRule(r"ln\.(?P<p>weight|bias)", "norm.{p}"),
    TensorRule(r"txt_position_embed\..*", None, "never read by the forward"),
]


def official_state(model: Tiny) -> dict[str, torch.Tensor]:
    s = model.state_dict()
    return {
        "input_proj.weight": s["proj.weight"],
        "input_proj.bias": s["proj.bias"],
        "heads.0.weight": s["head.weight"],
        "heads.0.bias": s["head.bias"],
        "heads.1.weight": s["head.weight"].clone(),
        "heads.1.bias": s["head.bias"].clone(),
        "ln.weight": s["norm.weight"],
        "ln.bias": s["norm.bias"],
        "txt_position_embed.weight": torch.zeros(5, 4),
    }


def test_every_tensor_is_mapped_or_listed_as_unused() -> None:
    source, target = Tiny(), Tiny()
    state, mapped, unused = map_tensors(official_state(source), RULES, target, source="x.ckpt")
    target.load_state_dict(state)
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v)
    assert ["heads.1.weight", "head.weight"] in mapped
    assert unused == [["txt_position_embed.weight", "never read by the forward"]]


def test_an_unknown_tensor_is_an_error_naming_it() -> None:
    state = official_state(Tiny())
    state["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"x\.ckpt: unknown key layout.*decoder\.extra"):
        map_tensors(state, RULES, Tiny(), source="x.ckpt")


def test_shape_mismatch_missing_tensor_and_differing_ties_are_errors() -> None:
    state = official_state(Tiny())
    bad = {**state, "input_proj.weight": torch.zeros(4, 5)}
    with pytest.raises(ConversionError, match=r"shape \(4, 5\).*proj\.weight.*\(4, 3\)"):
        map_tensors(bad, RULES, Tiny(), source="x.ckpt")
    partial = {k: v for k, v in state.items() if not k.startswith("ln.")}
    with pytest.raises(ConversionError, match="does not fill momentkit tensors norm"):
        map_tensors(partial, RULES, Tiny(), source="x.ckpt")
    untied = {**state, "heads.1.bias": state["heads.1.bias"] + 1}
    with pytest.raises(ConversionError, match="differ"):
        map_tensors(untied, RULES, Tiny(), source="x.ckpt")


def test_random_state_is_deterministic_and_randomises_norms() -> None:
    shapes = state_shapes(Tiny().state_dict())
    a, b = random_state(shapes, seed=3), random_state(shapes, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["norm.weight"], torch.ones(4))  # scales are randomised too
    assert (a["norm.weight"] > 0.4).all()
    assert not torch.equal(random_state(shapes, seed=4)["proj.weight"], a["proj.weight"])
    sig = grad_signature({"w": torch.arange(4.0)})
    assert sig["w"][:2] == [6.0, 14.0]


def test_convert_cli_refuses_unknown_files_with_one_clear_line(tmp_path, capsys) -> None:
    path = tmp_path / "mystery.ckpt"
    torch.save({"weights": {"a": torch.ones(1)}}, path)
    assert main(["convert", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mystery.ckpt: unknown checkpoint layout" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_convert_cli_refuses_a_pickle_with_code(tmp_path, capsys) -> None:
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"model": {}, "opt": Evil()}, path)
    assert main(["convert", str(path), "--from", "ld_detr", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "evil.ckpt: refused to load" in err and not (tmp_path / "PWNED").exists()


def test_official_feature_folders_name_the_benchmark_pipeline(tmp_path) -> None:
    """The released QVHighlights folders name the streams momentkit extract writes, and a
    converted checkpoint trained on them records the clip_slowfast pipeline (mode unknown)."""
    from momentkit.inference.predictor import stream_name
    from momentkit.interop.convert import official_features_record

    assert stream_name("../features/qvhighlight/slowfast_features") == "slowfast"
    assert stream_name("feats/clip_text_features/") == "clip_text"
    assert stream_name("feats/effnet") == "effnet"
    record = official_features_record(
        ["../f/slowfast_features", "../f/clip_features"], "../f/clip_text_features", 2.0
    )
    assert record is not None and record["pipeline"] == "clip_slowfast" and record["inferred"]
    assert official_features_record(["f/clip"], "f/clip_text")["pipeline"] == "clip"
    assert official_features_record(["f/i3d_features"], "f/clip_text_features") is None
    assert official_features_record(["f/clip", "f/slowfast"], "f/glove") is None
