"""The `rlab` command line: one console script, subcommands from typed configs.

Each subcommand is a (module, config class, function) triple imported lazily, so
`rlab --help` is instant. A user
error prints one line and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from rlab.errors import PartialFailure, UserError

# name -> (module, config dataclass, function, one-line description)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "train": ("rlab.rl.trainer", "TrainConfig", "train", "train an RL agent (rlab train --help lists the algorithms) on a Gymnasium env"),
    "eval": ("rlab.rl.evaluation", "EvalConfig", "evaluate", "evaluate a trained agent's run folder; --video writes a GIF"),
    "classifier train": ("rlab.vision.classifier", "TrainConfig", "train", "train an image classifier (MNIST-5k, CIFAR-10, image folder)"),
    "classifier eval": ("rlab.vision.classifier", "EvalConfig", "evaluate", "evaluate a trained classifier's run folder"),
    "bench attacks": ("rlab.vision.attack_bench", "BenchConfig", "run", "attack/defense benchmark: robust accuracy vs eps, report"),
    "bench certify": ("rlab.vision.certify_bench", "CertifyConfig", "run", "randomized smoothing: certified accuracy vs L2 radius, attack beside it"),
    "bench backdoor": ("rlab.vision.backdoor_bench", "BackdoorBenchConfig", "run", "BadNets poisoning -> detection -> retraining, per poison rate, report"),
    "bench patch": ("rlab.vision.patch_bench", "PatchBenchConfig", "run", "universal adversarial patch: targeted success vs patch area"),
    "bench reprogram": ("rlab.vision.reprogram_bench", "ReprogramConfig", "run", "adversarial reprogramming: a learned program makes a classifier do another task"),
    "bench rl-attack": ("rlab.rl.attack_bench", "RLAttackConfig", "run", "observation attacks on a trained agent: return vs eps"),
    "plot returns": ("rlab.plots", "PlotReturnsConfig", "plot_returns_cmd", "plot return vs env steps, mean and spread over seeds"),
    "plot robustness": ("rlab.plots", "PlotRobustnessConfig", "plot_robustness_cmd", "plot accuracy vs eps from a results.csv"),
    "demo": ("rlab.demo", "DemoConfig", "run", "the main job: RL ladder, classifier, attack/defense benchmark, report"),
    "sweep": ("rlab.sweep", "SweepConfig", "run_cli", "run a grid of configurations in parallel (processes or Ray)"),
}
GROUPS = sorted({name.split()[0] for name in COMMANDS})


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line and exits 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse hook
        self.exit(2, f"{self.prog}: error: {message}\n")


def _top_help() -> str:
    lines = ["usage: rlab <command> [options]   (rlab <command> --help for its options)", "", "commands:"]
    for name, (*_, desc) in COMMANDS.items():
        lines.append(f"  {name:<18} {desc}")
    return "\n".join(lines)


def split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """(subcommand name, its arguments) for argv, or (None, argv) when argv names no subcommand."""
    if not argv:
        return None, argv
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = split_command(argv)
    if name is None:
        if not argv or argv[0] in ("-h", "--help"):
            print(_top_help())
            return 0
        sub = [n.split()[1] for n in COMMANDS if n.split()[0] == argv[0] and " " in n]
        if sub:
            what = argv[1] if len(argv) > 1 else ""
            print(f"rlab {argv[0]}: error: {'unknown subcommand ' + repr(what) + '; ' if what not in ('', '-h', '--help') else ''}"
                  f"choose one of: {', '.join(sub)}", file=sys.stderr)
            return 0 if what in ("-h", "--help") else 2
        err = __import__("rlab.errors", fromlist=["unknown_name"]).unknown_name("command", argv[0], GROUPS)
        print(f"rlab: error: {err}", file=sys.stderr)
        return 2
    module_name, cls_name, fn_name, desc = COMMANDS[name]
    module = importlib.import_module(module_name)
    from rlab.config import add_config_arguments, config_from_namespace

    cls = getattr(module, cls_name)
    parser = _Parser(prog=f"rlab {name}", description=desc)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(rest)
    try:
        cfg = config_from_namespace(cls, ns)
        result = getattr(module, fn_name)(cfg)
    except UserError as e:
        print(f"rlab {name}: error: {e}", file=sys.stderr)
        return 2
    except PartialFailure as e:
        print(e.path)
        print(f"rlab {name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nrlab {name}: interrupted; the run folder keeps its last checkpoint (resume with --resume)", file=sys.stderr)
        return 130
    if isinstance(result, (str, Path)):
        print(result)
    elif isinstance(result, list) and result and all(isinstance(r, (str, Path)) for r in result):
        print("\n".join(map(str, result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
