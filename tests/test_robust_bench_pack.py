"""Bad inputs of ``bench``, ``pack``, ``cotrain``'s TAD files and ``demo --synthetic``: each is a
one-line error naming the file (line, option) and what to do, never a traceback, and no input
is ever replaced by an output (audit of 2026-12-07)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import cotrain_argv, error_of, synth_mr, synth_tad

from momentkit.cli.main import main
from momentkit.data.tad import load_class_list, load_tad_json
from momentkit.utils.errors import FormatError, MomentkitError

pytestmark = pytest.mark.usefixtures("one_thread")

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_mr(tmp_path_factory.mktemp("bench") / "S", num_train=10, num_val=6)


@pytest.fixture(scope="module")
def tad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "tad"
    return synth_tad(root)


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


# ------------------------------------------------------------ 1. bench outputs over their inputs
@pytest.fixture
def pred_gt(synth: Path, tmp_path: Path) -> tuple[Path, Path]:
    gt = tmp_path / "g.jsonl"
    gt.write_bytes((synth / "annotations" / "val.jsonl").read_bytes())
    pred = tmp_path / "p.jsonl"
    rows = [json.loads(line) for line in gt.read_text().splitlines()]
    pred.write_text(
        "".join(
            json.dumps({"qid": r["qid"], "vid": r["vid"], "pred_relevant_windows": [[0, 2, 0.9]]})
            + "\n"
            for r in rows
        )
    )
    return pred, gt


@pytest.mark.parametrize("target", ["gt", "pred", "gt hardlink", "gt symlink"])
def test_bench_evaluate_out_over_an_input_is_refused(pred_gt, tmp_path, capsys, target) -> None:
    pred, gt = pred_gt
    before = snapshot(pred, gt)
    out = {"gt": gt, "pred": pred}.get(target)
    if out is None:
        out = tmp_path / "link.json"
        (os.link if target == "gt hardlink" else os.symlink)(gt, out)
    argv = ["bench", "evaluate", "--pred", str(pred), "--gt", str(gt), "--repeat", "1"]
    err = error_of([*argv, "--out", str(out)], capsys)
    option = "--pred" if target == "pred" else "--gt"
    assert f"--out {out} is the input {option}" in err
    assert "Give the output another file name" in err
    assert snapshot(pred, gt) == before


def test_bench_evaluate_out_elsewhere_is_written(pred_gt, tmp_path, capsys) -> None:
    pred, gt = pred_gt
    out = tmp_path / "figures.json"
    argv = ["bench", "evaluate", "--pred", str(pred), "--gt", str(gt), "--repeat", "1"]
    assert main([*argv, "--expected", str(tmp_path / "none.json"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["num_queries"] == 6


@pytest.mark.parametrize("name", ["annotations/val.jsonl", "annotations/train.jsonl"])
def test_bench_probe_json_over_the_annotations_is_refused(synth, capsys, name) -> None:
    target = synth / name
    before = snapshot(target)
    argv = ["bench", "probe", "--data", str(synth), "--model", "qd_detr", "--steps", "2"]
    err = error_of(
        [*argv, "--every", "1", "--train", "10", "--val", "5", "--json", str(target)], capsys
    )
    assert f"--json {target} is the input --data" in err
    assert snapshot(target) == before


@pytest.mark.parametrize(
    "name", ["annotations/val.jsonl", "latent/val.jsonl", "synth_config.json", "features/clip/"]
)
def test_bench_calibration_out_over_a_data_file_is_refused(synth, capsys, name) -> None:
    if name.endswith("/"):  # a feature file, whichever is first
        target = sorted((synth / name).iterdir())[0]
    else:
        target = synth / name
    before = snapshot(target)
    argv = ["bench", "calibration", "--data", str(synth), "--queries", "5", "--bank", "5"]
    err = error_of([*argv, "--out", str(target)], capsys)
    assert f"--out {target} is " in err and "--data" in err
    assert snapshot(target) == before


def test_bench_calibration_out_beside_the_data_is_written(synth, capsys) -> None:
    out = synth / "calibration.json"
    argv = ["bench", "calibration", "--data", str(synth), "--queries", "5", "--bank", "5"]
    try:
        assert main([*argv, "--out", str(out)]) == 0
        assert json.loads(out.read_text())["queries"] == 5
    finally:
        out.unlink(missing_ok=True)


def test_bench_search_out_over_the_video_is_refused(tmp_path, capsys) -> None:
    video = tmp_path / "bv.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    before = snapshot(video)
    argv = ["bench", "search", "--clips", "200", "--dims", "8", "--queries", "2"]
    argv += ["--clips-per-video", "10", "--video", str(video), "--copies", "1"]
    err = error_of([*argv, "--e2e-repeat", "1", "--out", str(video)], capsys)
    assert f"--out {video} is the input --video" in err
    assert snapshot(video) == before


@pytest.mark.parametrize("bench", ["train", "infer"])
def test_bench_json_over_an_official_checkout_file_is_refused(tmp_path, capsys, bench) -> None:
    official = tmp_path / "official"
    official.mkdir()
    (official / "model.py").write_text("precious = 1\n")
    before = snapshot(official / "model.py")
    err = error_of(
        ["bench", bench, "--official-dir", str(official), "--json", str(official / "model.py")],
        capsys,
    )
    assert f"is a file of the input --official-dir {official}" in err
    assert snapshot(official / "model.py") == before


def test_bench_long_video_model_over_the_mr_checkpoint_is_refused(tmp_path, capsys) -> None:
    mr = tmp_path / "out" / "model"
    mr.mkdir(parents=True)
    (mr / "config.json").write_text('{"name": "qd_detr"}')
    (mr / "model.safetensors").write_bytes(b"weights")
    before = snapshot(mr / "config.json", mr / "model.safetensors")
    argv = ["bench", "long-video", "--out", str(tmp_path / "out"), "--mr-checkpoint", str(mr)]
    err = error_of(argv, capsys)
    assert f"is a file of the input --mr-checkpoint {mr}" in err
    assert snapshot(mr / "config.json", mr / "model.safetensors") == before


def test_bench_cli_out_over_a_video_is_refused(tmp_path, capsys) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"video bytes")
    err = error_of(
        ["bench", "cli", "--videos", str(videos), "--out", str(videos / "a.mp4")], capsys
    )
    assert f"is a file of the input --videos {videos}" in err
    assert (videos / "a.mp4").read_bytes() == b"video bytes"


# --------------------------------------------------------------------- 2. bench --expected
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a":', ":1: invalid JSON at column 6"),
        ("[1,2]", ": --expected: expected a JSON object of metrics, got list"),
        (DEEP, ": JSON nested too deeply"),
        ('\ufeff{"a": 1}'.encode("utf-16"), ":1: not UTF-8 text"),
    ],
)
def test_bench_evaluate_malformed_expected_is_named(pred_gt, tmp_path, capsys, text, message):
    pred, gt = pred_gt
    expected = tmp_path / "expected.json"
    (expected.write_bytes if isinstance(text, bytes) else expected.write_text)(text)
    argv = ["bench", "evaluate", "--pred", str(pred), "--gt", str(gt), "--repeat", "1"]
    err = error_of([*argv, "--expected", str(expected)], capsys)
    assert f"{expected}{message}" in err


# -------------------------------------------------------------------------- 3. bench --device
@pytest.mark.parametrize(
    ("bench", "device"), [("infer", "cuda"), ("infer", "cuda:7"), ("train", "cuda")]
)
def test_bench_cuda_without_such_a_gpu_is_a_clear_error(capsys, bench, device) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index < count:
        pytest.skip("this machine has that GPU")
    err = error_of(["bench", bench, "--device", device], capsys)
    assert f"device {device!r}: " in err and "--device cpu" in err


@pytest.mark.parametrize("bench", ["train", "infer"])
def test_bench_unknown_device_is_a_clear_error(capsys, bench) -> None:
    err = error_of(["bench", bench, "--device", "foo"], capsys)
    assert "unknown device 'foo'; use auto, cpu, cuda or cuda:N (--device)" in err


def test_benchmark_device_refuses_what_resolve_device_refuses() -> None:
    from momentkit.benchmarks.official import benchmark_device
    from momentkit.training.distributed import DeviceError

    assert benchmark_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'foo'"):
        benchmark_device("foo")


# ------------------------------------------------------------------- 4. pack of zero-row items
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_pack_keeps_zero_row_items_as_the_npz_store_reads_them(tmp_path, capsys, dtype) -> None:
    from momentkit.features import open_feature_store

    src = tmp_path / "empty0"
    src.mkdir()
    np.savez(src / "a.npz", features=np.zeros((0, 8), "f4"))
    full = np.arange(16, dtype="f4").reshape(2, 8)
    np.savez(src / "b.npz", features=full)
    out = tmp_path / "out"
    assert main(["pack", str(src), str(out), "--dtype", dtype, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "packed 2 items (2 rows x 8 channels" in captured.out
    npz, packed = open_feature_store(src), open_feature_store(out)
    assert packed.get("a").shape == npz.get("a").shape == (0, 8)
    np.testing.assert_array_equal(packed.get("b"), full)


def test_pack_features_of_only_empty_items(tmp_path) -> None:
    from momentkit.features import open_feature_store, pack_features

    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "a.npz", features=np.zeros((0, 8), "f4"))
    store = pack_features(open_feature_store(src), tmp_path / "out", progress=False)
    assert (len(store), store.rows, store.dim) == (1, 0, 8)
    assert open_feature_store(tmp_path / "out").get("a").shape == (0, 8)


def test_a_packed_video_of_zero_clips_is_refused_as_from_npz(tmp_path) -> None:
    from momentkit.features import open_feature_store, pack_features
    from momentkit.features.streams import VideoFeatureSource
    from momentkit.utils.errors import FeatureError

    src = tmp_path / "src"
    src.mkdir()
    np.savez(src / "v.npz", features=np.zeros((0, 8), "f4"))
    pack_features(open_feature_store(src), tmp_path / "out", progress=False)
    for folder in (src, tmp_path / "out"):
        with pytest.raises(FeatureError, match="video 'v' has 0 clips"):
            VideoFeatureSource([open_feature_store(folder)]).get("v")


# ----------------------------------------------------------------- 5. cotrain's TAD JSON readers
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (DEEP, ": JSON nested too deeply"),
        ('{"database": {}}'.encode("utf-16"), ":1: not UTF-8 text (byte 0xff at column 1"),
        (b'{"database":\n {"v": "\xff\xfe"}}', ":2: not UTF-8 text (byte 0xff at column 9"),
        ('{"database": ', ":1: invalid JSON at column 14"),
    ],
)
def test_tad_json_readers_name_the_file_and_line(tmp_path, content, message) -> None:
    for name, read in (("tad.json", load_tad_json), ("classes.json", load_class_list)):
        path = tmp_path / name
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
        with pytest.raises(FormatError) as e:
            read(path)
        assert str(e.value).startswith(f"{path}{message}"), str(e.value)


def test_class_list_text_not_utf8_names_the_line(tmp_path) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(b"run\njump\n\xff\xfeswim\n")
    with pytest.raises(FormatError, match=r"classes\.txt:3: not UTF-8 text"):
        load_class_list(path)


@pytest.mark.parametrize("option", ["--tad-train", "--tad-classes"])
@pytest.mark.parametrize("case", ["deep", "utf-16"])
def test_cotrain_bad_tad_files_are_clean_errors(tad, tmp_path, capsys, option, case) -> None:
    bad = tmp_path / "bad.json"
    if case == "deep":
        bad.write_text(DEEP)
    else:
        bad.write_bytes('{"database": {}}'.encode("utf-16"))
    argv = cotrain_argv(tad, tmp_path / "run", option, str(bad))
    err = error_of(argv, capsys)
    expected = ": JSON nested too deeply" if case == "deep" else ":1: not UTF-8 text"
    assert f"{bad}{expected}" in err


@pytest.mark.parametrize("text", ["[1]", "{", '{"spec": 1, "experiment": {}}'])
def test_cotrain_resume_from_a_damaged_cotrain_json_is_named(tmp_path, capsys, text) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "cotrain.json").write_text(text)
    err = error_of(["cotrain", "--out", str(run), "--resume"], capsys)
    assert f"{run / 'cotrain.json'}" in err


# ------------------------------------------------------------- 6. demo --synthetic --workdir
def test_demo_workdir_holding_user_files_is_refused_truthfully(tmp_path, capsys) -> None:
    work = tmp_path / "w3"
    mine = work / "synth" / "annotations" / "val.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"mine": 1}\n')
    err = error_of(["demo", "--synthetic", "--workdir", str(work)], capsys)
    assert "--force" not in err
    assert f"--workdir {work}: {work / 'synth'} holds annotations/val.jsonl" in err
    assert "Give another --workdir, or move" in err
    assert mine.read_text() == '{"mine": 1}\n'
    assert sorted(p.name for p in (work / "synth").iterdir()) == ["annotations"]


def test_demo_workdir_of_an_earlier_demo_is_replaced(tmp_path) -> None:
    work = tmp_path / "w"
    argv = ["demo", "--synthetic", "--workdir", str(work), "--train", "0", "--val", "3"]
    assert main(argv) == 0
    assert main(argv) == 0  # its own benchmark: replaced
    assert json.loads((work / "val_metrics.json").read_text())["brief"]


def test_errors_are_momentkit_errors() -> None:
    from momentkit.benchmarks.guards import refuse_outputs_over_inputs
    from momentkit.utils.errors import OutputError

    assert issubclass(OutputError, MomentkitError)
    refuse_outputs_over_inputs([("--out", None)], [("--gt", None)], [("--data", None)])
