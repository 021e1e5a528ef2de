"""Experiment configs: YAML presets, typed ``--set`` overrides, precise errors, schedules."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pytest
import torch

from momentkit.training.config import (
    ConfigError,
    ExperimentConfig,
    OptimConfig,
    apply_overrides,
    build_config,
    list_presets,
    load_config,
    resolve_preset,
    valid_keys,
)
from momentkit.training.optim import build_optimizer, build_scheduler, lr_factor


@dataclass
class ToyModelConfig:
    hidden_dim: int = 256
    dropout: float = 0.1
    aux_loss: bool = True
    position: str = "sine"
    layers: list[int] = field(default_factory=lambda: [2, 2])
    max_len: int | None = None


@dataclass
class OtherModelConfig:
    hidden_dim: int = 64
    t2v_layers: int = 2


TOYS = {"toy": ToyModelConfig, "other": OtherModelConfig}


def resolver(name: str) -> type:
    try:
        return TOYS[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known: other, toy") from None


def build(*args, **kwargs) -> ExperimentConfig:
    return build_config(*args, resolver=resolver, **kwargs)


def test_defaults_are_moment_detr_published_settings():
    cfg = build("toy")
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (1e-4, 1e-4, 0.1)
    assert (cfg.optim.scheduler, cfg.optim.lr_drop) == ("step", 400)
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (32, 200)
    assert (cfg.data.max_v_len, cfg.data.max_q_len, cfg.data.clip_len) == (75, 32, 2.0)


def test_overrides_are_parsed_by_field_type():
    cfg = build(
        "toy",
        overrides=[
            "model.hidden_dim=128",
            "optim.lr=2e-4",
            "model.aux_loss=false",
            "model.layers=[1, 3]",
            "trainer.patience=none",
            "optim.milestones=10,20",
            "optim.betas=[0.8, 0.9]",
            "data.video_features=a,b",
            "model.max_len=7",
        ],
    )
    assert cfg.model.hidden_dim == 128 and isinstance(cfg.model.hidden_dim, int)
    assert cfg.optim.lr == 2e-4
    assert cfg.model.aux_loss is False
    assert cfg.model.layers == [1, 3]
    assert cfg.trainer.patience is None
    assert cfg.optim.milestones == [10, 20]
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.data.video_features == ["a", "b"]
    assert cfg.model.max_len == 7


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        build("toy", overrides=["model.hiden_dim=3"])
    msg = str(e.value)
    assert "--set" in msg and "model.hiden_dim" in msg and "unknown key" in msg
    assert "model.hidden_dim" in msg and "model.dropout" in msg
    with pytest.raises(ConfigError, match="Valid keys: .*optim.lr"):
        build("toy", overrides=["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="Valid sections"):
        build("toy", overrides=["optimizer.lr=1"])


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("model.hidden_dim=1.5", "expected int"),
        ("model.aux_loss=maybe", "expected bool"),
        ("optim.scheduler=linear", "expected one of"),
        ("optim.lr=-1", "must be > 0"),
        ("trainer.batch_size=0", "must be > 0"),
        ("optim.betas=[0.9]", "exactly 2"),
        ("model.hidden_dim", "malformed override"),
        ("optim.lr=nan", "NaN"),
        ("trainer.device=tpu", "unknown device"),
    ],
)
def test_bad_values_are_reported(override, problem):
    with pytest.raises(ConfigError, match=problem):
        build("toy", overrides=[override])


def test_model_switch_keeps_shared_keys():
    cfg = build("toy", overrides=["model.hidden_dim=96", "model.name=other"])
    assert cfg.model_name == "other" and isinstance(cfg.model, OtherModelConfig)
    assert cfg.model.hidden_dim == 96
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        build("toy", overrides=["model.name=nope"])
    with pytest.raises(ConfigError, match="model.name.*missing"):
        build(None)


def test_yaml_preset_with_line_numbers(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text(
        "model:\n  name: toy\n  hidden_dim: 64\noptim:\n  lr: 1e-3\n  lr_drop: 40\n"
        "trainer:\n  epochs: 5\n"
    )
    cfg = build(None, preset=preset)
    assert cfg.model_name == "toy" and cfg.model.hidden_dim == 64
    assert cfg.optim.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string: coerced to float
    assert cfg.optim.lr_drop == 40 and cfg.trainer.epochs == 5
    # --set wins over the preset
    assert build(None, preset=preset, overrides=["trainer.epochs=9"]).trainer.epochs == 9

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: toy\noptim:\n  lr: 1.0e-4\n  warmup: 3\n")
    with pytest.raises(ConfigError) as e:
        build(None, preset=bad)
    assert f"{bad}:5: field 'optim.warmup': unknown key" in str(e.value)
    assert "optim.warmup_epochs" in str(e.value)

    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  name: toy\ntrainer:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"typo.yaml:4: field 'trainer.epochs': expected int"):
        build(None, preset=typo)

    with pytest.raises(ConfigError, match="preset is for model 'toy'"):
        build("other", preset=preset)


def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("model:\n  name: toy\n  hidden_dim: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: invalid YAML"):
        build(None, preset=p)


def test_json_round_trip(tmp_path):
    cfg = build("toy", overrides=["optim.milestones=[3]", "model.layers=[4]"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    again = load_config(path, resolver=resolver)
    assert again == cfg
    assert again.to_dict()["model"]["name"] == "toy"


def test_apply_overrides_returns_a_copy():
    cfg = build("toy")
    new = apply_overrides(cfg, ["trainer.seed=7"], resolver=resolver)
    assert new.trainer.seed == 7 and cfg.trainer.seed == 2018


def test_valid_keys_cover_every_field():
    keys = valid_keys(OptimConfig, "optim.")
    assert "optim.lr" in keys and "optim.warmup_epochs" in keys


def test_presets_exist_for_each_model_and_dataset():
    names = list_presets()
    for model in ("moment_detr", "qd_detr"):
        for dataset in ("qvhighlights", "charades_sta", "tacos", "synth"):
            assert f"{model}/{dataset}" in names
    assert resolve_preset("qvhighlights", "moment_detr").name == "qvhighlights.yaml"
    with pytest.raises(ConfigError, match="no preset 'nope'.*Available"):
        resolve_preset("nope", "moment_detr")


# ------------------------------------------------------------------------------------ schedules
def factors(scheduler: str, epochs: int, steps: int = 1, **kw) -> list[float]:
    cfg = OptimConfig(scheduler=scheduler, **kw)
    return [lr_factor(cfg, s, steps, epochs) for s in range(epochs * steps)]


def test_step_schedule_drops_every_lr_drop_epochs():
    f = factors("step", 9, steps=2, lr_drop=4, gamma=0.1)
    assert f[:8] == [1.0] * 8  # epochs 0-3
    assert f[8:16] == pytest.approx([0.1] * 8)  # epochs 4-7
    assert f[16:] == pytest.approx([0.01] * 2)  # epoch 8
    # Moment-DETR default: lr_drop 400 never triggers within 200 epochs
    assert set(factors("step", 200)) == {1.0}


def test_warmup_multistep_schedule():
    f = factors(
        "warmup_multistep", 6, steps=4, milestones=[3, 5], gamma=0.5, warmup_epochs=1.0,
        warmup_factor=0.2,
    )  # fmt: skip
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # linear warm-up over 4 steps
    assert f[4:12] == [1.0] * 8
    assert f[12:20] == pytest.approx([0.5] * 8)
    assert f[20:] == pytest.approx([0.25] * 4)


def test_cosine_schedule():
    f = factors("cosine", 10, steps=10, min_lr_ratio=0.1)
    assert f[0] == 1.0
    assert f[50] == pytest.approx(0.1 + 0.9 * 0.5)
    assert f[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(f, f[1:]))


def test_scheduler_drives_optimizer_lr():
    model = torch.nn.Linear(2, 1)
    cfg = OptimConfig(lr=1e-2, scheduler="step", lr_drop=2, gamma=0.5)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=3, total_epochs=5)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1e-2] * 6 + [5e-3] * 6)
    assert opt.param_groups[0]["weight_decay"] == 1e-4
