"""`memgen <command> --help` for every subcommand (issue 8: each with `--help`), in-process through launch.cli.main:
it exits 0 and names the command's key options."""

from __future__ import annotations

import pytest

from launch import cli

# command (argv before --help) -> what its help must name
EXPECTED = {
    ("demo",): ["usage: memgen demo", "--out", "--preset", "miniature-demo", "key=value"],
    ("data",): ["usage: memgen data", "--task", "--out", "--kind", "--split", "--size", "--seed", "KEY=VALUE"],
    ("sft",): ["usage: memgen sft", "--preset", "--out", "--stop-after", "key=value"],
    ("rl",): ["usage: memgen rl", "--preset", "--out", "--stop-after", "overrides"],
    ("eval",): ["usage: memgen eval", "--preset", "--out", "overrides"],
    ("sweep",): ["usage: memgen sweep", "--preset", "--out", "--lrs", "--freeze", "--budgets", "--rl-preset",
                 "--eval-preset", "--vmap"],
    ("report",): ["usage: memgen report", "RUN_DIR", "--out", "metrics.jsonl"],
    ("predict",): ["usage: memgen predict", "--out", "--split", "--task", "--rl-preset", "--samples", "INPUT"],
    ("plan",): ["usage: memgen plan", "--model", "--mesh", "--devices", "--gpu", "--batch", "--seq", "--freeze"],
    ("convert",): ["usage: memgen convert", "hf-to-orbax", "orbax-to-hf"],
    ("convert", "hf-to-orbax"): ["usage: memgen convert hf-to-orbax", "--hf", "--out"],
    ("convert", "orbax-to-hf"): ["usage: memgen convert orbax-to-hf", "--orbax", "--step", "--out",
                                 "--max-shard-size"],
    ("bench",): ["usage: memgen bench", "--out", "--only", "--preset", "--quick"],
}


def _help(argv: list[str], capsys, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps to the terminal width; keep option names on one line
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--help"])
    assert exit_.value.code == 0, argv
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    return captured.out


def test_every_subcommand_has_a_help_test():
    assert {argv[0] for argv in EXPECTED} == set(cli.COMMANDS)


@pytest.mark.parametrize("argv", sorted(EXPECTED), ids=" ".join)
def test_subcommand_help_exits_zero_and_names_its_options(argv, capsys, monkeypatch):
    text = _help(list(argv), capsys, monkeypatch)
    for needle in EXPECTED[argv]:
        assert needle in text, f"memgen {' '.join(argv)} --help does not mention {needle!r}:\n{text}"
    if len(argv) == 1:  # the command's one-line description (launch.cli.COMMANDS) heads its help
        assert cli.COMMANDS[argv[0]][1].split(",")[0] in " ".join(text.split())


def test_top_level_help_lists_every_subcommand(capsys, monkeypatch):
    text = _help([], capsys, monkeypatch)
    assert text.startswith("usage: memgen")
    for name in cli.COMMANDS:
        assert f"    {name} " in text, name
