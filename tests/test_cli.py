import subprocess
import sys

from rlab.cli import COMMANDS, main


def test_help_lists_every_design_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ["train", "eval", "classifier train", "classifier eval", "bench attacks", "bench rl-attack",
                 "plot returns", "plot robustness", "demo"]:
        assert name in COMMANDS and name in out


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'train'" in err.lower()


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "rlab.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "rlab <command>" in r.stdout
