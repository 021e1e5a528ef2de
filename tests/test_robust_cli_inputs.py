"""Bad command-line inputs of augment, train --resume, synth --set, cotrain and convert: each is
a one-line ``momentkit`` error naming the file, option or field (exit status 2, no traceback),
and no input file is replaced.

Every case runs ``momentkit``'s entry point in-process: ``main`` re-raises any exception that is
not a user-facing one, so a raw traceback fails the test.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cotrain_argv, error_of, synth_mr, synth_tad, usage_error

from momentkit.cli.main import build_parser, main
from momentkit.data.synth import SynthConfig
from momentkit.data.tad import load_class_features, load_tad_json
from momentkit.evaluation.tad import parse_thresholds
from momentkit.training.config import ConfigError
from momentkit.training.cotrain import CoTrainSpec
from momentkit.utils.errors import FormatError

pytestmark = pytest.mark.usefixtures("one_thread")

PARITY = Path(__file__).parent / "fixtures" / "parity" / "lighthouse_moment_detr_charades_sta"


def usage_error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The last line of the stderr of an argument ``momentkit`` refuses while reading the
    command line."""
    return usage_error(argv, capsys).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def mr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_mr(tmp_path_factory.mktemp("robust") / "mr")


@pytest.fixture(scope="module")
def tad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust") / "tad"
    return synth_tad(root)


def digest(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------ 1. augment --out = an input
@pytest.mark.parametrize("link", ["same", "hardlink", "symlink"])
def test_augment_refuses_to_replace_its_annotations(mr, tmp_path, link, capsys) -> None:
    source = tmp_path / "train.jsonl"
    shutil.copy(mr / "annotations" / "train.jsonl", source)
    before = digest(source)
    out = source
    if link == "hardlink":
        os.link(source, out := tmp_path / "linked.jsonl")
    elif link == "symlink":
        (out := tmp_path / "sym.jsonl").symlink_to(source)
    err = error_of(["augment", str(source), "--out", str(out)], capsys)
    assert f"--out {out} is the input ANNOTATIONS {source}" in err
    assert "would replace the input" in err
    assert digest(source) == before


def test_augment_refuses_to_replace_its_lexicon(mr, tmp_path, capsys) -> None:
    from momentkit.text_augment.lexicon import BUILTIN_LEXICON

    lexicon = tmp_path / "lexicon.json"
    shutil.copy(BUILTIN_LEXICON, lexicon)
    before = digest(lexicon)
    argv = ["augment", str(mr / "annotations" / "train.jsonl"), "--out", str(lexicon)]
    err = error_of([*argv, "--lexicon", str(lexicon)], capsys)
    assert f"is the input --lexicon {lexicon}" in err
    assert digest(lexicon) == before


# -------------------------------------------------------------- 2. train --resume, damaged state
@pytest.fixture(scope="module")
def trained_run(mr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("robust") / "run"
    argv = [
        "train", "--model", "moment_detr", "--preset", "synth",
        "--train", str(mr / "annotations" / "train.jsonl"),
        "--val", str(mr / "annotations" / "val.jsonl"),
        "--video-features", str(mr / "features" / "slowfast"), str(mr / "features" / "clip"),
        "--text-features", str(mr / "features" / "clip_text"),
        "--out", str(run), "--epochs", "1", "--set", "model.hidden_dim=32",
    ]  # fmt: skip
    assert main(argv) == 0
    return run


def _intact(run: Path) -> dict:
    return json.loads((run / "last" / "state.json").read_text())


DAMAGED_STATES = [
    pytest.param(lambda s: {}, "trainer", "missing", id="empty object"),
    pytest.param(lambda s: [], "<top level>", "expected an object", id="list"),
    pytest.param(lambda s: None, "<top level>", "expected an object", id="null"),
    pytest.param(
        lambda s: {"trainer": {"epoch": "x"}}, "trainer.epoch", "expected an integer >= 0",
        id="epoch not a number",
    ),
    pytest.param(lambda s: {"trainer": {"epoch": 1}}, "optimizer", "missing", id="no optimizer"),
    pytest.param(
        lambda s: {**s, "trainer": {**s["trainer"], "bogus": 1}}, "trainer.bogus",
        "not a resume-state field", id="unknown counter",
    ),
    pytest.param(
        lambda s: {**s, "trainer": {**s["trainer"], "best_value": "x"}}, "trainer.best_value",
        "expected a finite number or null", id="best value not a number",
    ),
    pytest.param(
        lambda s: {**s, "optimizer": {}}, "optimizer", "cannot be loaded", id="empty optimizer"
    ),
    pytest.param(lambda s: {**s, "scheduler": 5}, "scheduler", "expected an object", id="sched"),
    pytest.param(
        lambda s: {**s, "world_size": "a"}, "world_size", "expected an integer >= 1", id="ws"
    ),
    pytest.param(lambda s: {**s, "rng": []}, "rng", "expected 1 random states", id="no rng"),
    pytest.param(
        lambda s: {**s, "rng": [{"python": 1}]}, "rng.0", "not a random state", id="bad rng"
    ),
]  # fmt: skip


@pytest.mark.parametrize("damage, field, problem", DAMAGED_STATES)
def test_resume_from_a_damaged_state_names_the_file_and_field(
    trained_run, tmp_path, damage, field, problem, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    state = run / "last" / "state.json"
    state.write_text(json.dumps(damage(_intact(run))))
    before = digest(state)
    err = error_of(["train", "--out", str(run), "--resume", "--epochs", "2"], capsys)
    assert f"{state}: field '{field}': {problem}" in err
    assert "The checkpoint is damaged" in err and "start a new run in another --out" in err
    assert digest(state) == before


def test_resume_from_an_intact_state_still_works(trained_run, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    assert _intact(run)["trainer"]["epoch"] == 2


# ------------------------------------------------------------------------------ 3. synth --set
BAD_SETS = [
    ("min_duration=abc", "field 'min_duration': expected float, got 'abc'"),
    ("negatives=abc", "field 'negatives': expected tuple"),
    ("negatives=[1]", "Give exactly 2 values"),
    ("event_clips=null", "field 'event_clips': expected tuple"),
    ("seed=abc", "field 'seed': expected int, got 'abc'"),
    ("num_train=-3", "SynthConfig.num_train: must be in [0, 10000000), got -3"),
    ("compress=maybe", "field 'compress': expected bool, got 'maybe'. Use true or false"),
    ("mode=null", "SynthConfig.mode: unknown mode 'null'"),
    ("clip_noise=nan", "field 'clip_noise': expected float, got 'nan'. NaN is not allowed"),
    ("clip_noise=inf", "field 'clip_noise': expected finite numbers, got 'inf'"),
    ("clip_noise=.inf", "field 'clip_noise'"),
    ("clip_noise=-1", "SynthConfig.clip_noise: must be >= 0"),
    ("max_duration=1e9", "SynthConfig.max_duration: must be in (0, 86400] seconds"),
    ("min_duration=6e2", "max_duration: 150 s is below min_duration 600 s"),
    ("long_event_prob=2", "SynthConfig.long_event_prob: must be a probability in [0, 1]"),
    ("nosuch=1", "field 'nosuch': unknown key. Valid keys: annotator_noise"),
    ("seed", "malformed override 'seed'"),
]


@pytest.mark.parametrize("item, message", BAD_SETS, ids=[b[0] for b in BAD_SETS])
def test_synth_set_values_are_checked(tmp_path, item, message, capsys) -> None:
    out = tmp_path / "o"
    argv = ["synth", str(out), "--train", "2", "--val", "1", "--no-progress", "--set", item]
    assert message in error_of(argv, capsys)
    assert not out.exists()  # refused before anything was written


def test_synth_set_parses_by_field_type_and_overrides_options(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    argv = ["synth", str(out), "--train", "2", "--val", "1", "--seed", "1", "--no-progress"]
    sets = ["min_duration=6e2", "max_duration=7e2", "negatives=[2,4]", "seed=5", "compress=true"]
    assert main([*argv, "--set", *sets]) == 0
    saved = json.loads((out / "synth_config.json").read_text())
    saved = saved.get("config", saved)
    assert saved["min_duration"] == 600.0 and saved["max_duration"] == 700.0
    assert saved["negatives"] == [2, 4] and saved["seed"] == 5 and saved["compress"] is True


def test_synth_config_refuses_wrong_types_from_python_and_json() -> None:
    from momentkit.utils.errors import MomentkitError

    with pytest.raises(MomentkitError, match="SynthConfig.clip_noise: expected a finite number"):
        SynthConfig(clip_noise=math.nan)
    with pytest.raises(MomentkitError, match="SynthConfig.seed: expected an integer, got 'x'"):
        SynthConfig.from_dict({"seed": "x"})
    with pytest.raises(MomentkitError, match="SynthConfig.negatives: expected 2 values"):
        SynthConfig.from_dict({"negatives": [1]})


# -------------------------------------------------------------------------- 4. cotrain --tad-tiou
BAD_TIOU = [
    ("abc", "'abc' is not a number"),
    ("0.5:0.05", "expected start:step:stop, got '0.5:0.05'"),
    ("0.9:0.1:0.1", "expected start <= stop and step > 0"),
    ("0:0:1", "expected start <= stop and step > 0"),
    ("1.5", "1.5 is outside (0, 1]"),
    ("0,0.5", "0 is outside (0, 1]"),
    ("nan", "'nan' is not a finite number"),
    ("inf", "'inf' is not a finite number"),
    (",", "no threshold in ','"),
    ("0.001:0.00001:1", "'0.001:0.00001:1' gives 99901 thresholds, more than 100"),
]


@pytest.mark.parametrize("text, message", BAD_TIOU, ids=[b[0] for b in BAD_TIOU])
def test_tad_tiou_is_checked_when_the_command_line_is_read(tmp_path, text, message, capsys):
    err = usage_error_of(["cotrain", "--out", str(tmp_path / "r"), "--tad-tiou", text], capsys)
    assert f"momentkit cotrain: error: argument --tad-tiou: {message}" in err
    with pytest.raises(ValueError, match="tIoU thresholds in \\(0, 1\\]|more than 100"):
        parse_thresholds(text)


def test_tad_tiou_accepted_forms() -> None:
    parse = build_parser("cotrain").parse_args
    args = parse(["cotrain", "--out", "r", "--tad-tiou", "0.5:0.05:0.95"])
    assert args.tad_tiou == tuple(round(0.5 + 0.05 * i, 6) for i in range(10))
    assert parse(["cotrain", "--out", "r", "--tad-tiou", "0.3, 0.5,1"]).tad_tiou == (0.3, 0.5, 1)
    with pytest.raises(ConfigError, match="--tad-tiou'?: expected tIoU thresholds in"):
        CoTrainSpec(tasks=("mr",), tad_tiou=(math.nan,)).validate()


# ----------------------------------------------------------- 5. cotrain --tad-class-features


def test_class_features_with_an_object_array_name_the_file_and_key(tad, tmp_path, capsys):
    bad = tmp_path / "cf_obj.npz"
    np.savez(bad, names=np.array([object()] * 8), pooler_output=np.zeros((8, 4), np.float32))
    argv = cotrain_argv(tad, tmp_path / "run", "--tad-class-features", str(bad))
    err = error_of(argv, capsys)
    assert f"{bad}: field 'names': cannot be read without pickle" in err
    assert "save_class_features" in err


@pytest.mark.parametrize("case", ["nan", "not zip", "numbers as names", "short"])
def test_class_feature_reader_refuses_malformed_files(tmp_path, case) -> None:
    path = tmp_path / "cf.npz"
    names, feats = np.array(["a", "b"]), np.zeros((2, 4), np.float32)
    if case == "nan":
        feats[1, 2] = np.nan
    elif case == "numbers as names":
        names = np.arange(2)
    elif case == "short":
        feats = feats[:1]
    if case == "not zip":
        path.write_text("hello")
    else:
        np.savez(path, names=names, pooler_output=feats)
    field = {"nan": "pooler_output", "not zip": None, "numbers as names": "names"}.get(
        case, "pooler_output"
    )
    with pytest.raises(FormatError) as e:
        load_class_features(path)
    assert e.value.path == str(path) and e.value.field == field


# ---------------------------------------------------------------------- 6. augment options
def test_augment_import_of_a_missing_module_is_one_line(mr, tmp_path, capsys) -> None:
    argv = ["augment", str(mr / "annotations" / "train.jsonl"), "--out", str(tmp_path / "c")]
    err = error_of([*argv, "--import", "nosuch_mod_xyz"], capsys)
    assert "--import nosuch_mod_xyz: cannot import it (No module named 'nosuch_mod_xyz')" in err
    assert not (tmp_path / "c").exists()


def test_augment_text_encoder_without_features_out_is_refused(mr, tmp_path, capsys) -> None:
    out = tmp_path / "c.jsonl"
    argv = ["augment", str(mr / "annotations" / "train.jsonl"), "--out", str(out)]
    err = error_of([*argv, "--text-encoder", "offline"], capsys)
    assert "--text-encoder needs --features-out DIR" in err
    assert not out.exists()


def test_augment_bad_text_encoder_is_refused_before_writing(mr, tmp_path, capsys) -> None:
    out, feats = tmp_path / "corpus" / "c.jsonl", tmp_path / "feats"
    argv = ["augment", str(mr / "annotations" / "train.jsonl"), "--out", str(out)]
    err = error_of([*argv, "--text-encoder", "bogus", "--features-out", str(feats)], capsys)
    assert "unknown encoder 'bogus'" in err
    assert not out.exists() and not out.parent.exists() and not feats.exists()


def test_augment_lexicon_with_unknown_keys_is_refused(mr, tmp_path, capsys) -> None:
    lexicon = tmp_path / "lex.json"
    lexicon.write_text('{"words": 3, "pos": {}}')
    out = tmp_path / "c.jsonl"
    argv = ["augment", str(mr / "annotations" / "train.jsonl"), "--out", str(out)]
    err = error_of([*argv, "--lexicon", str(lexicon)], capsys)
    assert f"{lexicon}: field 'words': unknown key(s) ['words']" in err
    assert not out.exists()


# ------------------------------------------------------------- 7. convert of crafted options
def _lighthouse_checkpoint(tmp_path: Path, **changes: object) -> Path:
    from momentkit.interop.parity import Fixture, write_official_checkpoint

    fx = Fixture(PARITY)
    path = tmp_path / "lh.ckpt"
    return write_official_checkpoint(
        path, fx.official_state(), {**fx.opt, **changes}, layout="plain"
    )


BAD_OPTIONS = [
    ("v_feat_dirs", 5, "option 'v_feat_dirs' is 5, expected a list of feature folders"),
    ("v_feat_dirs", "slowfast", "option 'v_feat_dirs' is 'slowfast', expected a list"),
    ("v_feat_dirs", [1, 2], "option 'v_feat_dirs' is [1, 2], expected a list"),
    ("a_feat_dirs", 3, "option 'a_feat_dirs' is 3, expected a list"),
    ("t_feat_dir", ["a", "b"], "option 't_feat_dir' is ['a', 'b'], expected one feature folder"),
    ("clip_length", math.nan, "option 'clip_length' = nan gives an invalid data.clip_len"),
    ("clip_length", 0, "option 'clip_length' = 0 gives an invalid data.clip_len: must be > 0"),
    ("lr", math.inf, "option 'lr' = inf gives an invalid optim.lr: must be > 0 and finite"),
    ("n_epoch", -1, "option 'n_epoch' = -1 gives an invalid trainer.epochs: must be >= 0"),
    ("bsz", 0, "option 'bsz' = 0 gives an invalid trainer.batch_size"),
    ("clip_length", "abc", "option 'clip_length' is 'abc', expected a number"),
]


@pytest.mark.parametrize(
    "option, value, message", BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v, _ in BAD_OPTIONS]
)
def test_convert_refuses_malformed_lighthouse_options(tmp_path, option, value, message, capsys):
    checkpoint = _lighthouse_checkpoint(tmp_path, **{option: value})
    out = tmp_path / "out"
    err = error_of(["convert", str(checkpoint), "--from", "lighthouse", "--out", str(out)], capsys)
    assert f"{checkpoint}: {message}" in err
    assert not out.exists()


def test_convert_maps_disabled_early_stopping(tmp_path, capsys) -> None:
    checkpoint = _lighthouse_checkpoint(tmp_path, max_es_cnt=-1)  # Lighthouse: -1 = disabled
    out = tmp_path / "out"
    assert main(["convert", str(checkpoint), "--from", "lighthouse", "--out", str(out)]) == 0
    assert json.loads((out / "experiment.json").read_text())["trainer"]["patience"] is None


# ------------------------------------------------------------------------------ 8. smaller ones
@pytest.mark.parametrize("command", ["train", "cotrain"])
def test_unknown_model_is_named_as_such(tmp_path, command, capsys) -> None:
    argv = [command, "--model", "nosuch", "--preset", "synth", "--out", str(tmp_path / "r")]
    err = error_of(argv, capsys)
    assert "field '--model': unknown model 'nosuch'. Known: " in err and "moment_detr" in err
    assert "no preset" not in err


def test_tad_segment_past_the_video_is_refused_as_in_mr(tad, tmp_path, capsys) -> None:
    data = json.loads((tad / "annotations" / "tad.json").read_text())
    vid, entry = next(iter(data["database"].items()))
    entry["annotations"][0]["segment"] = [0, 1e9]
    bad = tmp_path / "tad_bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="is outside the") as e:
        load_tad_json(bad)
    assert e.value.field == f"database.{vid}.annotations[0].segment"
    argv = cotrain_argv(tad, tmp_path / "run", "--tad-train", str(bad))
    assert f"{bad}: field 'database.{vid}.annotations[0].segment'" in error_of(argv, capsys)
