"""One CLI vocabulary (issue #33): every command's parser against the table in docs/cli.md.

The table is the documentation users read; this test makes it the
specification too: a flag's name, type and default must be the same in every
command that the table lists, no command may have one of the table's flags
without being listed, and the old spellings must keep working with a
deprecation message.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from dsfd import cli_options
from dsfd.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TYPES = {"path": cli_options.nonempty_path, "text": cli_options.nonempty_text,
         "int>=32": cli_options.max_size_value, "int": int}


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible_flags(command_parser):
    """{flag: action} of the options shown in --help (deprecated spellings are hidden)."""
    return {opt: a for a in command_parser._actions if a.help != argparse.SUPPRESS
            for opt in a.option_strings if opt.startswith("--")}


def _table(heading_free_text: str):
    rows = []
    for line in heading_free_text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`--"):
            rows.append({"flag": cells[0].strip("`"), "type": cells[2], "default": cells[3],
                         "commands": [c.strip() for c in cells[4].split(",")]})
    return rows


ROWS = _table(DOC.read_text().split("## Old spellings")[0])
def _old_rows():
    text = DOC.read_text().split("## Old spellings")[1]
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            rows.append((re.search(r"--[\w-]+", cells[0]).group(0), [c.strip() for c in cells[1].split(",")],
                         re.search(r"--[\w-]+", cells[2]).group(0)))
    return rows


def test_the_table_is_there_and_names_real_commands():
    commands = _commands()
    assert len(ROWS) >= 12, "docs/cli.md lost its vocabulary table"
    for row in ROWS:
        for c in row["commands"]:
            assert c in commands, f"docs/cli.md lists {row['flag']} for unknown command {c!r}"


@pytest.mark.parametrize("row", ROWS, ids=[r["flag"] for r in ROWS])
def test_every_listed_command_has_the_flag_with_the_same_type_and_default(row):
    commands = _commands()
    for name, sub in commands.items():
        flags = _visible_flags(sub)
        if name not in row["commands"]:
            assert row["flag"] not in flags, (f"dsfd {name} has {row['flag']} but docs/cli.md does not list it "
                                               f"there: add it to the table (same meaning) or rename the flag")
            continue
        assert row["flag"] in flags, f"dsfd {name} lacks {row['flag']} (docs/cli.md)"
        action = flags[row["flag"]]
        kind, default = row["type"], row["default"]
        if kind == "flag":
            assert action.nargs == 0, f"dsfd {name} {row['flag']} should take no value"
            if default == "off":
                assert action.default is False
            continue
        if kind.startswith("{"):
            assert list(action.choices) == kind.strip("{}").split(","), f"dsfd {name} {row['flag']} choices"
        else:
            assert action.type is TYPES[kind], f"dsfd {name} {row['flag']}: type {action.type} is not {kind}"
        if default == "(per command)":
            continue
        expected = None if default.startswith("(") else default
        assert action.default == expected, f"dsfd {name} {row['flag']}: default {action.default!r} != {expected!r}"


def test_progress_flags_share_one_destination():
    for name, sub in _commands().items():
        flags = _visible_flags(sub)
        if "--no-progress" in flags:
            assert flags["--no-progress"].dest == "progress" and flags["--no-progress"].default is True


@pytest.mark.parametrize("old,commands,new", _old_rows(), ids=lambda v: str(v))
def test_old_spellings_still_work_and_say_so(old, commands, new, capsys):
    # (old value, the same setting in the new spelling) per flag and command
    pairs = {"--format": {"detect": ["wider"] * 2, "eval": ["coco"] * 2, "train": ["yolo"] * 2},
             "--amp": {"train": ["bf16", "bfloat16"]}, "--images": {"anchors": ["7", "7"]},
             "--quiet": {"detect": [], "eval": []}}
    parser = build_parser()
    for command in commands:
        head = [command] + (["x.jpg"] if command == "detect" else [])
        values = pairs[old][command]
        old_args = parser.parse_args(head + [old] + values[:1])
        err = capsys.readouterr().err
        assert f"{old} is deprecated" in err and new in err, err
        new_args = parser.parse_args(head + [new] + values[1:])
        assert capsys.readouterr().err == ""  # the new spelling is silent
        assert vars(old_args) == vars(new_args), (command, old)


@pytest.mark.parametrize("argv", [
    ["detect", ""], ["detect", "x.jpg", "--weights", ""], ["detect", "x.jpg", "--out", ""],
    ["detect", "x.jpg", "--max-size", "0"], ["detect", "x.jpg", "--max-size", "31"],
    ["eval", "--weights", ""], ["eval", "--data", ""], ["eval", "--max-size", "16"], ["eval", "--device", ""],
    ["train", "--data", ""], ["train", "--weights", ""], ["train", "--resume", ""], ["train", "--out", ""],
    ["train", "--pretrained", ""], ["train", "--init-backbone", ""], ["train", "--images", ""],
    ["anchors", "--data", ""], ["anchors", "--out", ""], ["export", ""], ["export", "x.onnx", "--weights", ""],
])
def test_empty_and_meaningless_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"empty (path|value)|must be >= 32", err), err


def test_train_dtype_reaches_the_config_as_its_autocast_setting():
    from dsfd.training.cli import config_from_args

    parser = build_parser()
    for dtype, amp in cli_options.AMP_OF_DTYPE.items():
        cfg = config_from_args(parser.parse_args(["train", "--dtype", dtype, "--data", "d1", "--data", "d2"]))
        assert cfg.amp == amp and cfg.data == ["d1", "d2"] and isinstance(cfg.out, str)


def test_eval_passes_max_size_and_device_to_the_detector_for_wider_data(tmp_path, monkeypatch):
    """``eval --max-size`` was ignored for WIDER FACE data; now every detector option reaches the detector."""
    from dsfd.evaluation import cli as eval_cli

    seen = {}

    def fake_load(weights, accuracy_mode, dtype="auto", **options):
        seen.update(options, dtype=dtype)
        raise RuntimeError("stop here")

    monkeypatch.setattr(eval_cli, "_load_detector", fake_load)
    gt = tmp_path / "ground_truth"
    gt.mkdir()
    args = build_parser().parse_args(["eval", "--weights", "default", "--data", str(tmp_path), "--out",
                                      str(tmp_path / "o"), "--max-size", "1024", "--device", "cpu",
                                      "--dtype", "float32"])
    from types import SimpleNamespace

    with pytest.raises(RuntimeError, match="stop here"):
        eval_cli._run_detector(args, SimpleNamespace(events=[], names=[]), tmp_path, tmp_path / "p")
    assert seen == {"max_size": 1024, "device": "cpu", "dtype": "float32"}
