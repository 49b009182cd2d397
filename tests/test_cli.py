"""The cnnlab command: help texts, one-line errors with exit code 2, train / eval / resume."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from cnnlab.cli import build_parser, main
from cnnlab.data import write_idx


def run(capsys, *argv):
    """(exit code, stdout, stderr) of ``cnnlab *argv`` run in this process."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("cnnlab ")


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["data"]])
def test_help_explains_every_option(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and out.startswith("usage: cnnlab")
    parser = build_parser()
    for name in command:
        parser = next(a for a in parser._actions if a.dest == "command").choices[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):     # each sub-command has a line
            helps = {a.dest: a.help for a in action._choices_actions}
            assert set(helps) == set(action.choices) and all(helps.values()), helps
        else:
            assert action.help, f"cnnlab {' '.join(command)}: {action.option_strings} has no help"
    if command == ["train"]:
        for option in ("--model", "--data", "--epochs", "--batch-size", "--optimizer", "--lr",
                       "--seed", "--out", "--resume", "--limit"):
            assert option in out


def test_unknown_model_is_one_line_without_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "alexnet9", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "unknown model 'alexnet9'", "lenet")


@pytest.mark.parametrize("argv, words", [
    (["train", "--optimizer", "adamw"], ["unknown optimizer 'adamw'", "adam"]),
    (["train", "--data", "no/such/folder"], ["no/such/folder"]),
    (["train", "--epochs", "0"], ["--epochs must be at least 1"]),
    (["train", "--epochs", "many"], ["--epochs", "invalid int value"]),
    (["train", "--bogus"], ["unrecognized arguments: --bogus", "--help"]),
    (["frobnicate"], ["invalid choice", "--help"]),
])
def test_bad_options_are_one_line_errors(capsys, tmp_path, argv, words):
    code, _, err = run(capsys, *argv, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, *words)


def test_missing_and_corrupt_checkpoints(capsys, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path / "missing.npz"))
    assert_one_line_error(code, err, "missing.npz", "does not exist")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    code, _, err = run(capsys, "eval", str(bad))
    assert_one_line_error(code, err, "bad.npz")
    code, _, err = run(capsys, "train", "--resume", str(tmp_path))
    assert_one_line_error(code, err, "last.npz")


def test_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.npz")
    plain = subprocess.run([sys.executable, "-m", "cnnlab.cli", "eval", missing],
                           capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "cnnlab.cli", "eval", missing, "--debug"],
                           capture_output=True, text=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert "FileFormatError" in debug.stderr


def test_train_eval_and_resume(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--epochs", "1", "--limit", "200", "--quiet",
                            "--out", str(out))
    assert code == 0, err
    assert "test accuracy" in stdout and str(out) in stdout
    for name in ("last.npz", "best.npz", "metrics.json", "plot.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["model"]["name"] == "lenet" and metrics["run"]["data"]["limit"] == 200

    code, stdout, _ = run(capsys, "eval", str(out / "last.npz"), str(out))
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 2
    acc = metrics["final"]["test_acc"]
    assert all(f"accuracy {acc:.2%}" in line for line in lines), (lines, acc)

    # the folder holds a run: training into it again must be asked for with --resume
    code, _, err = run(capsys, "train", "--epochs", "1", "--limit", "200", "--out", str(out))
    assert_one_line_error(code, err, "--resume")
    code, _, err = run(capsys, "train", "--resume", str(out), "--lr", "0.5")
    assert_one_line_error(code, err, "--lr 0.5 differs")
    code, _, err = run(capsys, "train", "--resume", str(out), "--format", "safetensors")
    assert_one_line_error(code, err, "--format safetensors differs")
    code, stdout, err = run(capsys, "train", "--resume", str(out), "--epochs", "2", "--quiet")
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]

    # a finished run: more epochs must be asked for, never fewer
    code, _, err = run(capsys, "train", "--resume", str(out))
    assert_one_line_error(code, err, "finished its 2 epochs", "--epochs above 2")
    code, _, err = run(capsys, "train", "--resume", str(out), "--epochs", "1")
    assert_one_line_error(code, err, "trained 2 epochs already", "--epochs above 2")
    # resuming into another run's folder is refused; into a new one, the run goes on there
    other = tmp_path / "other"
    assert run(capsys, "train", "--epochs", "1", "--limit", "200", "--quiet", "--seed", "4",
               "--out", str(other))[0] == 0
    before = (other / "last.npz").read_bytes()
    code, _, err = run(capsys, "train", "--resume", str(out), "--epochs", "3", "--out",
                       str(other))
    assert_one_line_error(code, err, "already holds a run")
    assert (other / "last.npz").read_bytes() == before
    copy = tmp_path / "copy"
    code, _, err = run(capsys, "train", "--resume", str(out), "--epochs", "3", "--quiet",
                       "--out", str(copy))
    assert code == 0, err
    best = json.loads((copy / "metrics.json").read_text())["final"]["best_epoch"]
    assert (copy / "last.npz").is_file() and (copy / "best.npz").is_file() and best >= 1
    assert run(capsys, "eval", str(copy), "--tta", "10crop", "--json",
               str(tmp_path / "missing" / "r.json"))[2].count("does not exist") == 1


def test_diverging_run_exits_2_with_advice(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "seed_net", "--optimizer", "sgd", "--lr", "1e30",
                       "--epochs", "1", "--limit", "100", "--quiet", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "loss became", "lower --lr")


def test_eval_refuses_data_of_another_shape(capsys, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, "train", "--model", "seed_net", "--epochs", "1", "--limit", "64",
               "--quiet", "--out", str(out))[0] == 0
    settings = json.loads((out / "metrics.json").read_text())["run"]["train"]
    assert settings["lr"] == 0.01 and settings["augment"] == "none"     # seed_net's defaults
    folder = tmp_path / "small"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        images = rng.integers(0, 255, (n, 16, 16), np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    code, _, err = run(capsys, "eval", str(out), "--data", str(folder))
    assert_one_line_error(code, err, "28x28", "16x16")


def test_a_command_leaves_the_chooser_reports_as_it_found_them(capsys, tmp_path):
    """`cnnlab train` points the conv chooser's reports at the terminal while it runs; a
    program calling the CLI gets its own setting back afterwards."""
    from cnnlab.conv import CHOOSER
    marker = []
    CHOOSER.notify = marker.append
    try:
        assert run(capsys, "train", "--epochs", "1", "--limit", "64", "--quiet", "--out",
                   str(tmp_path / "r"))[0] == 0
        assert CHOOSER.notify == marker.append
    finally:
        CHOOSER.notify = None


def test_output_paths_are_checked_before_the_work(capsys, tmp_path):
    for argv in (["experiment", "augmentation", "--quick", "--json", str(tmp_path / "no" / "x.json")],
                 ["experiment", "transfer", "--quick", "--json", str(tmp_path / "no" / "x.json")],
                 ["features", "lenet-mnist-5k", "--layer", "fc2", "-o", str(tmp_path / "no" / "f.npz")]):
        code, out, err = run(capsys, *argv)
        assert_one_line_error(code, err, "does not exist")
        assert out == ""                                  # nothing was computed first


def test_runs_record_data_paths_absolute(tmp_path, monkeypatch):
    from cnnlab.train.commands import recorded_spec
    (tmp_path / "pk").mkdir()
    monkeypatch.chdir(tmp_path)
    assert recorded_spec("mnist-5k") == "mnist-5k"
    assert recorded_spec("pk") == str(tmp_path / "pk") and recorded_spec("missing") == "missing"


def test_quick_experiments_refuse_settings_they_would_ignore(capsys):
    for argv in (["experiment", "augmentation", "--quick", "--seeds", "5"],
                 ["experiment", "transfer", "--quick", "--per-class", "5"],
                 ["experiment", "transfer", "--quick", "--seeds", "2"]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "--quick")
