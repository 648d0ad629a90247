"""The lab's `auto` ensemble against torchattacks' AutoAttack and the lab's PGD-50 x 5, side by side in one run.

    .venv/bin/python bench/autoattack_vs_peers.py --classifier runs/classifier/<run> --fast --reference
    .venv/bin/python bench/autoattack_vs_peers.py --merge RUN_DIR...   # one table from chunks run with --offset/--n
    .venv/bin/python bench/autoattack_vs_peers.py --smoke    # seconds: a tiny model, 20 digits, fast budgets

Victim: a classifier run folder (`rlab classifier train`), evaluated on `--n` test
images of its dataset (a seeded draw; `--offset` walks the same permutation, so chunks
run one command at a time cover disjoint images) at L-inf `--eps`. The issue's model is the
README's PGD-adversarially-trained MNIST-5k `mnist_small` (its exact command is in
README.md), on the 1,000 test digits at eps 0.3. Rows, each a robust accuracy over
the same images and its wall time (one torch thread by default):

    lab auto (standard)   attacks.AutoAttack: APGD-CE 100, APGD-T 3 x 100, Square 2,500 queries, survivors only
    lab auto (reference)  with --reference: AutoAttack's own budget, APGD-CE 100, APGD-T 9 x 100, Square 5,000
    lab auto (fast)       with --fast: APGD-CE 25, APGD-T 3 x 25, Square 500
    lab auto (S, T, Q)    with --budget S,T,Q: APGD-CE S steps, APGD-T T x S, Square Q
    lab auto (standard, bf16 Square)  with --bf16-square: Square's search in bf16, fooled decided in fp32
    lab PGD-50 x 5        attacks.PGD(steps=50, restarts=5) via attacks.robust_accuracy
    torchattacks AA       torchattacks.AutoAttack(version="standard"): APGD-CE, APGD-T (9 targets),
                          FAB-T, Square 5,000; its APGDs run 10 steps (torchattacks' default)

Timing: the rows take turns batch by batch (every row on the first `--batch-size` images, then
every row on the next, the order reversed on every other batch), so the load of whatever shares
the machine falls on all of them alike; each row's seconds are summed over its batches. With
`--workers W` (W <= `--threads`) a turn is W batches: the lab's rows attack them at once, one
worker thread each (attacks.robust_accuracy(workers=W)), torchattacks one after the other on its
`--threads` intra-op threads; both rows get the same cores. A turn ends when its slowest batch does,
so on an idle machine `--turn N` (all N images in one turn) lets the workers share out every batch:

    .venv/bin/python bench/autoattack_vs_peers.py --classifier runs/classifier/<run> --threads 2 --workers 2 \
        --turn 1000

Targets of issue 17: lab auto no more than 0.2 points above torchattacks' AutoAttack,
in at most half its wall time. torchattacks is a benchmark-only dependency (`make bench`).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

import attacks
from _smoke import parse_args, peer_available
from rlab.runs import RunDir, atomic_write_text, write_csv
from rlab.runtime import seed_everything, set_threads


def lab_runner(model, attack, eps: float, batch_size: int, workers: int):
    """One turn of the lab's attack (batches of batch_size, `workers` of them at once) -> a row's figures on it."""
    def run(xb, yb) -> dict:
        cpu = time.process_time()
        result = attacks.robust_accuracy(model, attack, xb, yb, [eps], batch_size=batch_size, workers=workers)
        return {"robust_accuracy": result.accuracy[0], "seconds": result.seconds,
                "cpu_seconds": time.process_time() - cpu, "grad_steps": result.grad_steps, "queries": result.queries,
                "fooled_by": ", ".join(f"{k} {v[0]}" for k, v in (result.fooled_by or {}).items())}
    return run


def torchattacks_runner(model, eps: float, seed: int, classes: int, smoke: bool, batch_size: int):
    """One turn of torchattacks' AutoAttack (standard), batch after batch of batch_size on torch's own threads; with
    `smoke`, its APGD, APGD-T and Square at tiny budgets."""
    import torchattacks

    def run(x_turn, y_turn) -> dict:
        start, cpu = time.perf_counter(), time.process_time()
        if smoke:
            peer = torchattacks.MultiAttack([torchattacks.APGD(model, eps=eps, steps=5, seed=seed),
                                             torchattacks.APGDT(model, eps=eps, steps=5, n_classes=classes, seed=seed),
                                             torchattacks.Square(model, eps=eps, n_queries=100, seed=seed)])
        else:
            peer = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=classes,
                                           seed=seed)
        robust = 0
        for b in range(0, len(x_turn), batch_size):
            xb, yb = x_turn[b:b + batch_size], y_turn[b:b + batch_size]
            x_adv = peer(xb, yb)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == yb).sum())
        return {"robust_accuracy": robust / len(x_turn), "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu, "grad_steps": "", "queries": "", "warnings": ""}
    return run


def add_batch(totals: dict[str, dict], row: dict, n: int) -> None:
    """Fold one row's figures on n images into the running totals (accuracy weighted by images, costs summed)."""
    t = totals.setdefault(row["attack"], {"attack": row["attack"], "robust": 0.0, "seconds": 0.0, "cpu_seconds": 0.0,
                                          "grad_steps": 0, "queries": 0, "warnings": [], "parts": {}})
    t["robust"] += float(row["robust_accuracy"]) * n
    for key in ("seconds", "cpu_seconds"):
        t[key] += float(row[key])
    for key in ("grad_steps", "queries"):
        t[key] += int(row[key] or 0)
    t["warnings"] += [w for w in (row.get("warnings") or "").split(" / ") if w and w not in t["warnings"]]
    for part in filter(None, (row.get("fooled_by") or "").split(", ")):
        name, count = part.rsplit(" ", 1)
        t["parts"][name] = t["parts"].get(name, 0) + int(count)


def total_rows(totals: dict[str, dict], n: int, eps: float) -> list[dict]:
    """The rows over all n images; the masking flag (black-box finds on >= 1% of the images) is judged on the
    totals, as robust_accuracy judges it, not batch by batch."""
    rows = []
    for t in totals.values():
        accuracy = t["robust"] / n
        warnings = t["warnings"]
        if "square" in t["parts"]:
            warnings = attacks.masking_warnings([eps], [accuracy], n, [t["parts"]["square"]])
        rows.append({**t, "robust_accuracy": accuracy, "warnings": " / ".join(warnings),
                     "grad_steps": t["grad_steps"] or "", "queries": t["queries"] or "",
                     "fooled_by": ", ".join(f"{k} {v}" for k, v in t["parts"].items())})
    return rows


def run_interleaved(runners: list[tuple[str, object]], x, y, eps: float, turn: int) -> list[dict]:
    """Every row on the first `turn` images, then every row on the next, the order reversed on every other turn: a
    change in the machine's load (the other core's jobs) falls on all rows alike instead of on whichever ran then."""
    totals: dict[str, dict] = {}
    for k, b in enumerate(range(0, len(x), turn)):
        xb, yb = x[b:b + turn], y[b:b + turn]
        for name, run in (runners if k % 2 == 0 else runners[::-1]):
            add_batch(totals, {"attack": name, **run(xb, yb)}, len(xb))
    order = [name for name, _ in runners]
    return sorted(total_rows(totals, len(x), eps), key=lambda r: order.index(r["attack"]))


def smoke_victim(seed: int, n: int):
    """A small CNN trained for a few seconds on 1,000 MNIST-5k digits, and n test digits."""
    import torch.nn.functional as F

    from rlab.vision.data import load_dataset
    from rlab.vision.models import build_model

    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    torch.manual_seed(seed)
    pick = torch.randperm(len(train.labels))[:1000]
    x, y = train.float(pick), train.labels[pick]
    model = build_model("mnist_small", 10, 1, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        for i in range(0, 1000, 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    pick = torch.randperm(len(test.labels))[:n]
    return model.eval(), test.float(pick), test.labels[pick], "smoke: mnist_small, 3 epochs on 1,000 digits"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="run folder of the victim (rlab classifier train)")
    parser.add_argument("--n", type=int, default=1000, help="number of test images (a seeded draw), from --offset on")
    parser.add_argument("--offset", type=int, default=0, help="position in the seeded draw (to run it in chunks)")
    parser.add_argument("--eps", type=float, default=None, help="L-inf radius (default 0.3 for MNIST, 8/255 for RGB)")
    parser.add_argument("--fast", action="store_true", help="also run the lab's `auto` at the fast budget")
    parser.add_argument("--reference", action="store_true",
                        help="also run the lab's `auto` at AutoAttack's own budget (version reference)")
    parser.add_argument("--budget", action="append", default=[], metavar="STEPS,TARGETS,QUERIES",
                        help="also run the lab's `auto` at this budget (APGD steps, APGD-T targets, Square queries); "
                             "repeatable")
    parser.add_argument("--bf16-square", action="store_true",
                        help="also run the lab's `auto` (standard) with Square's search in bf16 (fooled decided in fp32)")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out: pgd, torchattacks")
    parser.add_argument("--channels-last", action="store_true",
                        help="run the victim on channels-last (NHWC) tensors, for every row alike: the same fp32 "
                             "figures, faster on CPU for RGB nets")
    parser.add_argument("--batch-size", type=int, default=250,
                        help="images per batch; the rows take turns batch by batch (see the module docstring)")
    parser.add_argument("--turn", type=int, default=None,
                        help="images per turn (default: batch-size x workers); on an idle machine --turn N gives "
                             "each row all N images at once, so the lab's workers share out all the batches")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads: torchattacks' (and PGD's, with --workers 1) intra-op threads")
    parser.add_argument("--workers", type=int, default=1,
                        help="batches the lab's rows attack at once (attacks.robust_accuracy(workers=...)), sharing "
                             "--threads among them; every row gets turns of batch-size x workers images, "
                             "torchattacks batch after batch on its --threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--merge", nargs="+", metavar="RUN_DIR", help="only merge the tables of earlier chunks")
    args = parse_args(parser, dict(n=20), argv)  # --smoke: a victim trained here, fast budgets, a tiny peer
    if args.merge:
        return merge(args.merge, args.seed)
    if not args.smoke and not args.classifier:
        parser.error("give --classifier RUN_DIR (or --smoke)")
    try:
        budgets = [tuple(int(v) for v in b.split(",")) for b in args.budget]
    except ValueError:
        parser.error(f"--budget takes three integers STEPS,TARGETS,QUERIES; got {args.budget}")
    if any(len(b) != 3 or min(b) < 1 for b in budgets):
        parser.error(f"--budget takes three integers >= 1, STEPS,TARGETS,QUERIES; got {args.budget}")
    if args.workers < 1 or args.workers > args.threads:
        parser.error(f"--workers must lie in [1, --threads] (each worker needs a thread), got {args.workers} with "
                     f"--threads {args.threads}")
    turn = args.turn if args.turn is not None else args.batch_size * args.workers
    if turn < args.batch_size * args.workers or turn % args.batch_size:
        parser.error(f"--turn must be a multiple of --batch-size ({args.batch_size}) of at least batch-size x "
                     f"workers ({args.batch_size * args.workers}), got {turn}")
    skip = {s for s in args.skip.split(",") if s}
    if skip - {"pgd", "torchattacks"}:
        parser.error(f"--skip takes pgd, torchattacks; got {args.skip}")
    set_threads(args.threads, "cnn")
    seed_everything(args.seed)
    if args.smoke:
        model, x, y, victim = smoke_victim(args.seed, args.n)
        eps = args.eps if args.eps is not None else 0.1
    else:
        from rlab.vision.classifier import load_classifier
        from rlab.vision.data import load_dataset

        model, options = load_classifier(args.classifier, "cpu")
        data = load_dataset(options["dataset"], "test", options.get("data_dir"))
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))  # the split is
        pick = order[args.offset:args.offset + args.n]  # sorted by class: a seeded draw, chunks of one permutation
        x, y = data.float(pick), data.labels[pick]
        eps = args.eps if args.eps is not None else (0.3 if x.shape[1] == 1 else 8 / 255)
        victim = f"{options['model']} on {options['dataset']} (`{args.classifier}`)"
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    classes = int(model(x[:1]).shape[1])

    def lab(attack):
        return lab_runner(model, attack, eps, args.batch_size, args.workers)

    runners = []
    if not args.smoke:
        runners.append(("lab auto (standard)", lab(attacks.AutoAttack(seed=args.seed))))
    if args.bf16_square and not args.smoke:
        runners.append(("lab auto (standard, bf16 Square)",
                        lab(attacks.AutoAttack(seed=args.seed, square_precision="bf16"))))
    if args.reference:
        runners.append(("lab auto (reference)",
                        lab(attacks.AutoAttack(version="reference", seed=args.seed))))
    if args.fast or args.smoke:
        runners.append(("lab auto (fast)", lab(attacks.AutoAttack(version="fast", seed=args.seed))))
    for steps, targets, queries in budgets:
        runners.append((f"lab auto ({steps} steps, {targets} targets, {queries} queries)",
                        lab(attacks.AutoAttack(steps=steps, targets=targets, queries=queries, seed=args.seed))))
    if "pgd" not in skip:
        steps, restarts = (5, 2) if args.smoke else (50, 5)
        runners.append((f"lab PGD-{steps} x {restarts}",
                        lab(attacks.PGD(steps=steps, restarts=restarts, rel_stepsize=2.5 / steps, seed=args.seed))))
    if "torchattacks" not in skip and peer_available("torchattacks", "make bench"):
        name = ("torchattacks APGD, APGD-T, Square (smoke budget)" if args.smoke
                else "torchattacks AutoAttack (standard)")
        runners.append((name, torchattacks_runner(model, eps, args.seed, classes, args.smoke, args.batch_size)))
    rows = run_interleaved(runners, x, y, eps, turn)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()

    header = (f"{len(x)} test images (seeded draw {args.seed}, from position {args.offset}), L-inf eps {eps:g}, "
              f"clean accuracy {100 * clean:.1f}%, {args.threads} torch thread(s), batch {args.batch_size}"
              f"{', channels-last' if args.channels_last else ''}; "
              + ("" if args.workers == 1 else
                 f"the lab's rows attack {args.workers} batches at once ({args.workers} workers sharing the "
                 f"{args.threads} threads), torchattacks batch after batch on the {args.threads} threads; ")
              + ("the rows take turns batch by batch." if turn == args.batch_size else
                 f"the rows take turns of {turn} images." if turn < len(x) else "each row ran once on all images."))
    write_report(RunDir.create("bench", "autoattack_vs_peers", args.seed, vars(args)), rows, victim, header,
                 {"clean_accuracy": clean, "eps": eps, "n": len(x)})


def write_report(run: RunDir, rows: list[dict], victim: str, header: str, summary: dict) -> None:
    """results.csv, report.md (the table, with points and time ratios against torchattacks) and summary.json."""
    peer = next((r for r in rows if r["attack"].startswith("torchattacks")), None)
    lines = [f"# lab auto vs torchattacks AutoAttack vs PGD: {victim}", "", header, "",
             "| attack | robust accuracy | wall s | CPU s | vs torchattacks AA: points | time ratio (wall / CPU) | "
             "grad steps | queries |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        points = f"{100 * (float(r['robust_accuracy']) - float(peer['robust_accuracy'])):+.1f}" if peer else ""
        ratio = (f"{float(r['seconds']) / float(peer['seconds']):.2f}x / "
                 f"{float(r['cpu_seconds']) / float(peer['cpu_seconds']):.2f}x" if peer else "")
        lines.append(f"| {r['attack']} | {100 * float(r['robust_accuracy']):.1f}% | {float(r['seconds']):.1f} | "
                     f"{float(r['cpu_seconds']):.1f} | {points} | {ratio} | {r['grad_steps']} | {r['queries']} |")
    for r in rows:
        if r.get("fooled_by"):
            lines.append(f"\n{r['attack']}: fooled first by {r['fooled_by']}.")
        if r.get("warnings"):
            lines.append(f"\n{r['attack']} warns: {r['warnings']}")
    if peer:
        for auto in (r for r in rows if r["attack"].startswith("lab auto")):
            met = (float(auto["robust_accuracy"]) <= float(peer["robust_accuracy"]) + 0.002,
                   float(auto["seconds"]) <= float(peer["seconds"]) / 2,
                   float(auto["cpu_seconds"]) <= float(peer["cpu_seconds"]) / 2)
            lines.append(f"\nTargets of issue 17 for {auto['attack']}: accuracy <= torchattacks + 0.2 points: "
                         f"{'met' if met[0] else 'missed'}; time <= half of torchattacks': wall "
                         f"{'met' if met[1] else 'missed'}, CPU {'met' if met[2] else 'missed'}.")
    lines.append("\nOn a shared machine the wall time depends on the other jobs; the CPU time (summed over the "
                 "process's threads) does not.")
    report = "\n".join(lines) + "\n"
    columns = ["attack", "robust_accuracy", "seconds", "cpu_seconds", "grad_steps", "queries", "fooled_by", "warnings"]
    write_csv(run.path / "results.csv", rows, columns)
    atomic_write_text(run.path / "report.md", report)
    run.write_summary({**summary, **{f"{r['attack']}/{k}": float(r[k]) for r in rows
                                     for k in ("robust_accuracy", "seconds", "cpu_seconds")}})
    print(report, end="")
    print(run.path)


def merge(run_dirs: list[str], seed: int) -> None:
    """One table from chunks of images run one command at a time (--offset): accuracies weighted by images,
    seconds, gradient steps and queries summed."""
    totals: dict[str, dict] = {}
    n = clean = 0
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not (path / "results.csv").is_file():
            raise SystemExit(f"{run_dir} holds no results.csv of bench/autoattack_vs_peers.py")
        summary = json.loads((path / "summary.json").read_text())
        n += summary["n"]
        clean += summary["clean_accuracy"] * summary["n"]
        eps = summary["eps"]
        options = json.loads((path / "config.json").read_text())["options"]
        for r in csv.DictReader((path / "results.csv").read_text().splitlines()):
            add_batch(totals, r, summary["n"])
    rows = total_rows(totals, n, eps)
    header = (f"{n} test images in {len(run_dirs)} chunks, L-inf eps {eps:g}, clean accuracy {100 * clean / n:.1f}%, "
              f"{options['threads']} torch thread(s); merged from {', '.join(Path(r).name for r in run_dirs)}.")
    write_report(RunDir.create("bench", "autoattack_vs_peers", seed, {"merge": run_dirs}), rows,
                 f"`{options['classifier']}`", header, {"clean_accuracy": clean / n, "eps": eps, "n": n})


if __name__ == "__main__":
    main()
