"""Mutation testing of the lab's math with mutmut (https://github.com/boxed/mutmut): do the tests notice a broken line?

mutmut changes one operator, number, name or argument at a time (a *mutant*) and
runs the tests that execute the changed function. A mutant is *killed* when a test
fails (or hangs: timeouts count as killed), and *survives* when every test passes
(a mutant that no selected test executes counts as survived too). The score of a
module is killed / (killed + survived); mutants listed in EQUIVALENT below (same
behaviour as the original, so no test can kill them) are left out, each with its
reason.

Groups (module files mutated -> the fast test files run against them):

    returns    rlab/rl/returns.py                                -> test_returns, test_updates
    updates    rlab/rl/algos/{vpg,ac,a2c,ppo}.py, rlab/rl/onpolicy.py -> test_updates, test_agents (not slow)
    gradient   attacks/gradient.py                               -> test_attack_steps, test_attacks
    defenses   defenses/preprocessing.py                         -> test_defenses (no training tests)

In the gradient and defenses groups the `raise ...Error(` statements are not
mutated: every attack test builds an attack, so each reworded message would run
them all for minutes and teach nothing about the math.

Each group runs in its own scratch copy of the tree (a temp folder: mutmut writes
its `mutants/` there, never into the checkout), with a `[tool.mutmut]` section
written for that group. Decorated top-level functions (`@torch.no_grad()`), which
mutmut leaves alone, are undecorated in the copy and re-wrapped right after their
body (`f = torch.no_grad()(f)`), so the advantages functions are mutated too.

    make mutate                                        # every group
    .venv/bin/python bench/mutate.py --groups returns,updates --max-children 2
    .venv/bin/python bench/mutate.py --smoke           # one small function: checks the set-up (3-6 min on a loaded 2-core machine)

After adding tests, `--survivors-of RUN_DIR` reruns only what that run did not
kill (a killed mutant stays killed while the old tests stay), and `--tests` can
limit the rerun to the tests added since (the survivors passed all the others):

    .venv/bin/python bench/mutate.py --groups returns --survivors-of runs/bench/mutate__returns__... \
        --tests tests/test_updates.py

Not in CI: a full run takes tens of minutes of CPU (see the README). Writes
runs/bench/mutate__<groups>__<UTC>/results.csv (one row per module), mutants.csv
(one row per mutant) and survivors.md (the diff of every survivor).
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlab", "attacks", "defenses", "envs")


@dataclass(frozen=True)
class Group:
    modules: tuple[str, ...]
    tests: tuple[str, ...]
    pytest_args: tuple[str, ...] = ()
    skip_lines: tuple[str, ...] = ()  # regexes of source lines whose statements mutmut leaves alone


GROUPS: dict[str, Group] = {
    "returns": Group(("rlab/rl/returns.py",), ("tests/test_returns.py", "tests/test_updates.py")),
    "updates": Group(("rlab/rl/algos/vpg.py", "rlab/rl/algos/ac.py", "rlab/rl/algos/a2c.py", "rlab/rl/algos/ppo.py",
                      "rlab/rl/onpolicy.py"),
                     ("tests/test_updates.py", "tests/test_agents.py"), ("-m", "not slow")),
    "gradient": Group(("attacks/gradient.py",), ("tests/test_attack_steps.py", "tests/test_attacks.py"),
                      # the one learning test (17 s a run: it trains an MLP on MNIST) stays out of the loop
                      ("--deselect", "tests/test_attacks.py::test_attacks_actually_fool_a_trained_model"),
                      # the wording of an error message: every attack test builds an attack, so each such
                      # mutant would run them all (minutes) to learn nothing about the math
                      (r"raise (Value|Type)Error\(",)),
    "defenses": Group(("defenses/preprocessing.py",), ("tests/test_defenses.py",),
                      ("-k", "not adversarial_training_beats"), (r"raise (Value|Type)Error\(",)),
}
SMOKE = Group(("rlab/rl/returns.py",), ("tests/test_returns.py",), ("-k", "termination_does_not_bootstrap"))

# mutant name (or glob) -> (a piece of its diff that must still be there, why no test can kill it)
CPU_ONLY = "a move to the device is a no-op on this CPU-only machine (a GPU run of the tests would catch it)"
TD_CHECKS = ("gae_advantages calls td_target(rewards, terminated, next_values) first, which refuses the same "
             "mismatched tensor with the same one-line ValueError")
SAME_ZERO = "the std of one value is 0 whichever branch computes it (and a 0-d zero changes no division's dtype)"
EQUIVALENT: dict[str, tuple[str, str]] = {
    "attacks.gradient.x_input_diversity__mutmut_53": ("device=None)", CPU_ONLY),
    "attacks.gradient.x_input_diversity__mutmut_74": ("generator=generator, ).item())", CPU_ONLY),
    "attacks.gradient.xǁGradientAttackǁrun__mutmut_43": ("(self.momentum) or True",
                                                        "with momentum 0 the velocity is the gradient over a positive "
                                                        "per-sample scalar, which the step's sign (or L2 direction) "
                                                        "removes"),
    "rlab.rl.algos.ac.x_update__mutmut_1": ("out = None", "the loop body always runs (epochs >= 1, and the learner "
                                            "never updates on an empty batch), so `out` is always reassigned"),
    "rlab.rl.onpolicy.xǁCollectorǁcollect__mutmut_102": (".to(None), first_is_reset", CPU_ONLY),
    "rlab.rl.returns.x_gae_advantages__mutmut_6": ("_check_shapes(values=values", TD_CHECKS),
    "rlab.rl.returns.x_gae_advantages__mutmut_8": ("_check_shapes(rewards=rewards, values=values, truncated", TD_CHECKS),
    "rlab.rl.returns.x_gae_advantages__mutmut_10": ("truncated=truncated, )", TD_CHECKS),
    "rlab.rl.returns.x_next_state_values__mutmut_4": ("last_value.reshape(1, -1)], )",
                                                     "torch.cat joins along dim 0 by default"),
    "rlab.rl.returns.x_valid_step_mask__mutmut_7": ("done[:-1]], )", "torch.cat joins along dim 0 by default"),
    "rlab.rl.returns.x_finished_episode_mask__mutmut_2": (".to(None)", "cumsum of a bool tensor is int64 already"),
    "rlab.rl.returns.x_n_step_returns__mutmut_18": ("(~terminated.bool()).to(None)",
                                                   "a bool mask multiplies float tensors as exact 0/1"),
    "rlab.rl.returns.x_subtract_baseline__mutmut_34": ("(selected.numel() > 1) or True", SAME_ZERO),
    "rlab.rl.returns.x_subtract_baseline__mutmut_37": ("selected.numel() >= 1", SAME_ZERO),
    "rlab.rl.returns.x_subtract_baseline__mutmut_40": ("torch.zeros((), dtype=None)", SAME_ZERO),
    "rlab.rl.returns.x_subtract_baseline__mutmut_42": ("torch.zeros((), )", SAME_ZERO),
}


def undecorate(source: str) -> str:
    """Top-level `@d def f` -> `def f` + `f = d(f)` after its body: same module, mutable by mutmut."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits = []  # (first decorator line, def line, end line, name, decorator texts), 1-based
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.decorator_list:
            decorators = [ast.get_source_segment(source, d) for d in node.decorator_list]
            start = min(d.lineno for d in node.decorator_list)
            edits.append((start, node.lineno, node.end_lineno, node.name, decorators))
    for start, def_line, end, name, decorators in reversed(edits):
        wrapped = name
        for d in reversed(decorators):
            wrapped = f"({d})({wrapped})"
        lines[end:end] = [f"{name} = {wrapped}\n"]
        del lines[start - 1:def_line - 1]
    return "".join(lines)


def mutmut_section(group: Group, only_tests: list[str] | None = None) -> str:
    tests = only_tests or [t for t in group.tests if (ROOT / t).exists()]  # a test file not written yet is skipped
    def toml_list(items) -> str:
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return "\n".join([
        "", "[tool.mutmut]",
        f"source_paths = {toml_list(PACKAGES)}",
        f"only_mutate = {toml_list(group.modules)}",
        f"pytest_add_cli_args_test_selection = {toml_list([*tests, *group.pytest_args])}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"]',
        f"do_not_mutate_patterns = {toml_list(group.skip_lines)}",
        "timeout_multiplier = 60.0",  # a shared, loaded machine: a slow test is not a hung one
        "timeout_constant = 5.0",
        "use_git_change_detection = false",
        'process_isolation = "forkserver"',  # torch is not fork-safe after use
        "",
    ])


def scratch_copy(group: Group, where: Path, only_tests: list[str] | None = None) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, where / package, ignore=ignore)
    shutil.copytree(ROOT / "tests", where / "tests", ignore=ignore)
    text = (ROOT / "pyproject.toml").read_text()
    (where / "pyproject.toml").write_text(text + mutmut_section(group, only_tests))
    for module in group.modules:
        path = where / module
        path.write_text(undecorate(path.read_text()))


def read_results(where: Path, group: Group) -> dict[str, dict[str, int | None]]:
    """module -> {mutant name: exit code}, from mutmut's per-file .meta."""
    out = {}
    for module in group.modules:
        meta = where / "mutants" / (module + ".meta")
        out[module] = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return out


def outcome(raw: str) -> str:
    """mutmut's status -> killed / survived / other: a hang is a kill, a mutant no selected test runs survives."""
    return {"no tests": "survived", "timeout": "killed", "segfault": "killed"}.get(raw, raw)


def diff_of(where: Path, name: str, python: str) -> str:
    done = subprocess.run([python, "-m", "mutmut", "show", name], cwd=where, capture_output=True, text=True)
    return done.stdout.strip()


def previous_statuses(run_dir: Path) -> dict[str, str]:
    """mutant -> mutmut status, from the mutants.csv of an earlier run of this script."""
    import csv

    path = Path(run_dir) / "mutants.csv"
    if not path.exists():
        raise SystemExit(f"--survivors-of: {path} does not exist; give a run folder of bench/mutate.py")
    with open(path, newline="") as f:
        return {r["mutant"]: r["status"] for r in csv.DictReader(f)}


def sample_mutants(where: Path, group: Group, cmd: list[str], args) -> list[str]:
    """A uniform random sample of the group's mutants (mutant sampling, Wong & Mathur 1995): an unbiased estimate
    of the score for a fraction of the time. mutmut writes every mutant's name while generating them, so a first
    call with a name that matches nothing generates the mutants and the test statistics, and stops there."""
    subprocess.run([*cmd, "no.such.mutant"], cwd=where, capture_output=True, text=True)
    names = sorted(name for codes in read_results(where, group).values() for name in codes)
    if not names:
        raise SystemExit(f"mutmut generated no mutants in {where}")
    return sorted(random.Random(args.seed).sample(names, min(args.sample, len(names))))


def run_group(name: str, group: Group, args, python: str) -> tuple[list[dict], list[dict], list[str]]:
    """Mutate the group's modules in a scratch copy; (one row per module, one row per mutant, survivors' diffs).

    With `args.survivors_of`, only the mutants an earlier run did not kill are run again (the tests were only
    added to, so a killed mutant stays killed) and the earlier statuses of the others are carried over.
    """
    from mutmut.stats import status_by_exit_code

    before = previous_statuses(args.survivors_of) if args.survivors_of else {}
    where = Path(tempfile.mkdtemp(prefix=f"rlab-mutate-{name}-"))
    only_tests = [t for t in args.tests.split(",") if t] if args.tests else None
    scratch_copy(group, where, only_tests)
    cmd = [python, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
    prefixes = tuple(m[:-3].replace("/", ".") + ".x" for m in group.modules)
    rerun = sorted(m for m, s in before.items() if m.startswith(prefixes) and outcome(s) != "killed")
    if args.smoke:
        cmd.append("rlab.rl.returns.x_td_target*")
    elif before:
        cmd += rerun
    elif args.sample:
        cmd += sample_mutants(where, group, cmd, args)
    start = time.perf_counter()
    if before and not rerun:
        print(f"[{name}] nothing to rerun: every mutant was killed", flush=True)
    else:
        print(f"[{name}] {' '.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''} (in {where})", flush=True)
        done = subprocess.run(cmd, cwd=where, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-3000:]
            raise SystemExit(f"mutmut failed in group {name} (exit {done.returncode}); kept {where}\n{tail}")
    seconds = time.perf_counter() - start
    rows, mutant_rows, report = [], [], []
    for module, codes in read_results(where, group).items():
        counts = {"killed": 0, "survived": 0, "equivalent": 0, "other": 0, "no tests": 0, "timeout": 0}
        for mutant, code in sorted(codes.items()):
            raw = status_by_exit_code[code]
            if code is None and mutant in before:
                raw = before[mutant]
            if raw == "not checked" and (args.smoke or before or args.sample):
                continue
            counts["timeout"] += raw == "timeout"
            s = outcome(raw)
            if s == "survived":
                diff = diff_of(where, mutant, python)
                marker, reason = next((v for k, v in EQUIVALENT.items() if fnmatch.fnmatchcase(mutant, k)),
                                      (None, None))
                if marker is not None and marker in diff:
                    s = "equivalent"
                    report.append(f"### {mutant} (equivalent: {reason})\n\n```diff\n{diff}\n```\n")
                else:
                    if marker is not None:
                        print(f"  warning: {mutant} is listed as equivalent but its diff changed; counted as survived")
                    report.append(f"### {mutant} ({raw})\n\n```diff\n{diff}\n```\n")
            counts[s if s in counts else "other"] += 1
            counts["no tests"] += raw == "no tests" and s == "survived"
            mutant_rows.append({"group": name, "module": module, "mutant": mutant, "status": raw, "outcome": s})
        scored = counts["killed"] + counts["survived"]
        rows.append({"group": name, "module": module,
                     "mutants": sum(counts.values()) - counts["no tests"] - counts["timeout"], **counts,
                     "score": round(counts["killed"] / scored, 4) if scored else None, "seconds": round(seconds, 1)})
    if not args.keep:
        shutil.rmtree(where, ignore_errors=True)
    return rows, mutant_rows, report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, from: {', '.join(GROUPS)}")
    p.add_argument("--max-children", type=int, default=2, help="parallel mutant workers (the machine's cores)")
    p.add_argument("--keep", action="store_true", help="keep the scratch copies (to run `mutmut browse` there)")
    p.add_argument("--smoke", action="store_true", help="mutate one small function against one test: checks the set-up")
    p.add_argument("--survivors-of", metavar="RUN_DIR",
                   help="rerun only the mutants an earlier run (its mutants.csv) did not kill, after adding tests")
    p.add_argument("--sample", type=int, default=0, help="run a random sample of this many mutants per group (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--tests", default="",
                   help="comma-separated pytest files or node ids replacing the groups' test selection (with "
                        "--survivors-of: the tests added since, as the survivors passed all the others)")
    args = p.parse_args()
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise SystemExit("bench/mutate.py needs mutmut: pip install -e '.[mutate]' (or `make mutate`)")
    names = ["smoke"] if args.smoke else [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in names if g not in GROUPS and g != "smoke"]
    if unknown or not names:
        raise SystemExit(f"--groups: unknown {', '.join(unknown) or '(none given)'}; allowed: {', '.join(GROUPS)}")
    sys.path.insert(0, str(ROOT))
    from rlab.runs import RunDir, atomic_write_text, write_csv

    run = RunDir.create("bench", f"mutate__{'-'.join(names)}", None, vars(args))
    rows, mutant_rows, report = [], [], []
    for name in names:
        group_rows, group_mutants, group_report = run_group(name, SMOKE if name == "smoke" else GROUPS[name], args,
                                                            sys.executable)
        rows += group_rows
        mutant_rows += group_mutants
        report += group_report
        write_csv(run.path / "results.csv", rows)
        write_csv(run.path / "mutants.csv", mutant_rows)
        atomic_write_text(run.path / "survivors.md", "# Surviving mutants\n\n" + "\n".join(report))
    print(f"\n{'module':34} {'mutants':>7} {'killed':>6} {'(t/o)':>5} {'surv.':>5} {'(none)':>6} {'equiv':>5} "
          f"{'score':>6} {'group s':>7}")
    for r in rows:
        score = f"{100 * r['score']:.1f}%" if r["score"] is not None else "-"
        print(f"{r['module']:34} {r['mutants']:7d} {r['killed']:6d} {r['timeout']:5d} {r['survived']:5d} "
              f"{r['no tests']:6d} {r['equivalent']:5d} {score:>6} {r['seconds']:7.0f}")
    print("killed includes timeouts (t/o); survived includes mutants no selected test runs (none)")
    print(run.path)


if __name__ == "__main__":
    main()
