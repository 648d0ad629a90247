"""`rlab bench attacks`: robust accuracy of a trained classifier under attacks and defenses.

For every attack x defense x eps it measures clean accuracy and robust accuracy
against a non-adaptive attacker (attacks the bare model; the defense is applied
at test time) and, for a real defense, against an adaptive one that
differentiates through it (BPDA / surrogate / EOT, Athalye et al. 2018). With
`--surrogates` it also measures black-box transfer (craft on a surrogate or
their ensemble, evaluate on the victim).

The headline is the worst case: per defense and eps, the lowest robust accuracy
over every attack and both attacker kinds (the default attack is `auto`, the
AutoAttack-style ensemble of attacks.autoattack). An adaptive row that reads
higher than its non-adaptive twin is marked as such (a weaker adaptive attack,
not a stronger defense) and never becomes the defense's figure; signs of
gradient masking (attacks.masking_warnings) are listed. Writes into one run folder:

    results.csv      attack, defense, adaptive, eps, clean_accuracy, robust_accuracy,
                     success_rate, grad_steps, queries, seconds
    worst_case.csv   defense, eps, clean_accuracy, robust_accuracy, attack, attacker (the headline)
    report.md        the worst-case table, the warnings, every row
    robustness.png   the worst case per defense, then accuracy against eps per attack
    transfer.png     victim accuracy per (source model, attack), with --surrogates
    gallery.png      clean / adversarial images with predictions, perturbation magnified
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rlab.config import check, opt
from rlab.errors import UserError, unknown_name
from rlab.runs import RunDir, atomic_write_text, write_csv
from rlab.runtime import resolve_device, seed_everything, set_threads
from rlab.vision.fitted_defenses import prepared_defense

RESULT_COLUMNS = ["attack", "defense", "adaptive", "eps", "clean_accuracy", "robust_accuracy", "success_rate",
                  "grad_steps", "queries", "seconds"]


@dataclass
class BenchConfig:
    classifier: str = opt(None, "run folder of the victim classifier (rlab classifier train)")
    attacks: list[str] = opt(["auto"], "attacks, by name (see attacks.ATTACKS; auto: APGD-CE, APGD-T, Square)")
    auto_version: str = opt("standard", "budget of the auto ensemble (see attacks.autoattack.BUDGETS)",
                            choices=["standard", "reference", "fast"])
    defenses: list[str] = opt(["none", "blur", "median", "jpeg", "bitdepth", "resize-pad"],
                              "defenses in front of the victim (see defenses.DEFENSES; none: the bare model)")
    eps: list[float] | None = opt(None, "L-inf radii, e.g. 0,2/255,8/255 (default: 0..0.3 for MNIST, 0..16/255 for RGB)")
    steps: int = opt(10, "gradient steps of iterative attacks (PGD, BIM, MI-FGSM, ...)")
    restarts: int = opt(1, "random restarts of attacks that start at random (PGD)")
    n: int = opt(500, "number of test images (a fixed random draw)")
    per_class: int = opt(0, "use a fixed draw of N test images per class instead of --n (the course uses 20)")
    surrogates: list[str] = opt([], "classifier run folders to craft transfer attacks on (black-box)")
    eot_samples: int = opt(8, "samples per gradient for EOT through randomized defenses")
    adaptive: bool = opt(True, "also attack through each defense (BPDA / surrogate / EOT)")
    gallery: int = opt(8, "images in the gallery (0: none)")
    batch_size: int = opt(250, "attack batch size")
    workers: int = opt(1, "batches attacked at once on the CPU, one thread each, for the bare model's rows (defended "
                          "rows run one batch at a time); same figures, less wall time (attacks.robust_accuracy)")
    data_dir: str | None = opt(None, "folder holding the dataset files")
    seed: int = opt(0, "seed of the image draw and of randomized attacks/defenses")
    device: str = opt("auto", help="auto, cpu, cuda or cuda:N")
    threads: int = opt(0, "torch threads (0: every core up to 8)")

    def __post_init__(self) -> None:
        check(self.classifier is not None, "--classifier RUN_DIR is required (a run folder of `rlab classifier train`)")
        check(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        check(self.restarts >= 1, f"--restarts must be >= 1, got {self.restarts}")
        check(self.n >= 1, f"--n must be >= 1, got {self.n}")
        check(self.per_class >= 0, f"--per-class must be >= 0, got {self.per_class}")
        check(self.eot_samples >= 1, f"--eot-samples must be >= 1, got {self.eot_samples}")
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        check(self.workers >= 1, f"--workers must be >= 1, got {self.workers}")
        check(self.workers == 1 or "none" in self.defenses,
              f"--workers {self.workers} speeds up the bare model's rows, and --defenses {','.join(self.defenses)} "
              "has none; add none to --defenses or leave --workers at 1")
        if self.eps is not None:
            for e in self.eps:
                check(0 <= e <= 1, f"--eps values must lie in [0, 1] (images are in [0, 1]), got {e}")
        import attacks
        import defenses
        from attacks.registry import canonical_name

        for a in self.attacks:
            if canonical_name(a) not in attacks.ATTACKS:
                raise unknown_name("attack", a, attacks.ATTACKS)
        uses_auto = any(attacks.ATTACKS[canonical_name(a)] is attacks.AutoAttack for a in self.attacks)
        check(uses_auto or self.auto_version == "standard",
              f"--auto-version {self.auto_version} applies to the auto attack only; add auto to --attacks")
        taken = set().union(*(budget_options(a) for a in self.attacks))
        check(self.steps == 10 or "steps" in taken,
              f"--steps {self.steps} applies to iterative attacks (pgd, bim, mifgsm, apgd, ...), and none of "
              f"--attacks {','.join(self.attacks)} takes it (auto has its own budget: --auto-version)")
        check(self.restarts == 1 or "restarts" in taken,
              f"--restarts {self.restarts} applies to attacks with a random start (pgd, l2pgd, apgd, ...), and none "
              f"of --attacks {','.join(self.attacks)} takes it")
        for d in self.defenses:  # a name, or a spec with parameters such as jpeg:quality=50
            if defenses.parse_spec(d)[0] not in defenses.DEFENSES:
                raise unknown_name("defense", defenses.parse_spec(d)[0], defenses.DEFENSES)
            try:
                defenses.make_defense(d)
            except (TypeError, ValueError) as e:
                raise UserError(f"--defenses {d}: {e}") from None


def default_eps(channels: int) -> list[float]:
    return [0.0, 0.05, 0.1, 0.2, 0.3] if channels == 1 else [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255]


def budget_options(name: str) -> set[str]:
    """Which of the benchmark's budget options (steps, restarts, seed, version) the attack `name` takes:
    single-step FGSM takes no steps, restarts need a random start, the auto ensemble has its own budget."""
    import attacks
    from attacks.registry import canonical_name

    cls = attacks.ATTACKS[canonical_name(name)]
    fields = getattr(cls, "__dataclass_fields__", {})
    if "version" in fields:  # AutoAttack: its budget is --auto-version
        return {"seed", "version"}
    taken = {"seed"} & set(fields)
    if "steps" in fields and canonical_name(name) != "fgsm":
        taken.add("steps")
    if "restarts" in fields and getattr(cls(), "random_start", True):
        taken.add("restarts")
    return taken


def budgeted_attack(name: str, steps: int, seed: int, restarts: int = 1, auto_version: str = "standard"):
    """An attack by name with the benchmark's budget (see budget_options)."""
    import attacks
    from attacks.registry import canonical_name

    given = {"steps": steps, "seed": seed, "restarts": restarts, "version": auto_version}
    return attacks.ATTACKS[canonical_name(name)](**{k: given[k] for k in budget_options(name)})


def load_victim(cfg: BenchConfig, device: torch.device):
    from rlab.vision.classifier import load_classifier
    from rlab.vision.data import course_subset, load_dataset

    model, options = load_classifier(cfg.classifier, device)
    data = load_dataset(options["dataset"], "test", cfg.data_dir or options.get("data_dir"))
    if cfg.per_class:
        data = course_subset(data, cfg.per_class, cfg.seed)
    elif cfg.n < len(data):
        g = torch.Generator().manual_seed(cfg.seed)
        data = data.subset(torch.randperm(len(data), generator=g)[: cfg.n].sort().values)
    x, y = data.float().to(device), data.labels.to(device)
    return model, options, data.classes, x, y


def evaluate_grid(model, x, y, attack_names, defense_names, eps, cfg: BenchConfig,
                  warnings: list[str] | None = None) -> list[dict[str, Any]]:
    """One results row per attack x defense x (non-)adaptive x eps; signs of gradient masking are appended
    to `warnings` ("attack / defense / attacker: ...")."""
    import attacks
    import defenses

    rows = []
    warnings = warnings if warnings is not None else []
    cells = [(a, d) for d in defense_names for a in attack_names]
    for attack_name, defense_name in tqdm(cells, desc="attack x defense", unit="cell"):
        attack = budgeted_attack(attack_name, cfg.steps, cfg.seed, cfg.restarts, cfg.auto_version)
        start = time.perf_counter()
        if defense_name == "none":
            ra = attacks.robust_accuracy(model, attack, x, y, eps, batch_size=cfg.batch_size, workers=cfg.workers)
            seconds = time.perf_counter() - start
            for e, acc in zip(ra.eps, ra.accuracy):
                rows.append(_row(attack_name, "none", False, e, ra.clean_accuracy, acc, seconds / len(eps),
                                 ra.grad_steps, ra.queries))
            warnings += [f"{attack_name} / none / non-adaptive: {w}" for w in ra.warnings]
            continue
        defense = prepared_defense(defense_name, cfg.classifier, x.device, cfg.data_dir)
        if hasattr(defense, "reseed"):
            defense.reseed(cfg.seed)
        res = defenses.evaluate_defense(model, defense, attack, x, y, eps, eot_samples=cfg.eot_samples,
                                        batch_size=cfg.batch_size)
        seconds = time.perf_counter() - start
        for i, e in enumerate(res["eps"]):
            rows.append(_row(attack_name, defense_name, False, e, res["clean"], res["non_adaptive"][i], seconds / (2 * len(eps))))
            if cfg.adaptive:
                rows.append(_row(attack_name, defense_name, True, e, res["clean"], res["adaptive"][i],
                                 seconds / (2 * len(eps))))
        for mode in ["non_adaptive"] + (["adaptive"] if cfg.adaptive else []):
            warnings += [f"{attack_name} / {defense_name} / {mode.replace('_', '-')}: {w}"
                         for w in attacks.masking_warnings(res["eps"], res[mode], len(x))]
    return rows


def _row(attack, defense, adaptive, eps, clean, robust, seconds, grad_steps=None, queries=None) -> dict[str, Any]:
    return {"attack": attack, "defense": defense, "adaptive": adaptive, "eps": round(float(eps), 6),
            "clean_accuracy": round(clean, 4), "robust_accuracy": round(robust, 4),
            "success_rate": round(1 - robust / clean, 4) if clean > 0 else "",
            "grad_steps": grad_steps if grad_steps is not None else "", "queries": queries if queries is not None else "",
            "seconds": round(seconds, 3)}


def transfer_matrix(victim, x, y, surrogate_dirs: list[str], attack_names: list[str], eps: float,
                    cfg: BenchConfig, device) -> tuple[list[str], list[str], np.ndarray]:
    """Victim accuracy on examples crafted on each surrogate (and their ensemble), per attack."""
    import attacks
    from rlab.vision.classifier import load_classifier

    surrogates, names = [], []
    for d in surrogate_dirs:
        m, opts = load_classifier(d, device)
        surrogates.append(m)
        name = f"{opts['model']} ({Path(d).name.split('__')[-1][:15]})"
        names.append(name if name not in names else f"{name} #{len(names) + 1}")
    sources = [("victim (white-box)", victim)] + list(zip(names, surrogates))
    if len(surrogates) > 1:
        sources.append(("ensemble of surrogates", attacks.Ensemble(surrogates)))
    acc = np.zeros((len(sources), len(attack_names)))
    for i, (_, source) in enumerate(tqdm(sources, desc="transfer sources")):
        for j, a in enumerate(attack_names):
            attack = budgeted_attack(a, cfg.steps, cfg.seed, cfg.restarts, cfg.auto_version)
            correct = 0
            for b in range(0, len(x), cfg.batch_size):
                xb, yb = x[b:b + cfg.batch_size], y[b:b + cfg.batch_size]
                x_adv = attack(source, xb, yb, eps=eps).x_adv
                with torch.no_grad():
                    correct += int((victim(x_adv).argmax(1) == yb).sum())
            acc[i, j] = correct / len(x)
    return [s[0] for s in sources], attack_names, acc


def write_results(run: RunDir, rows: list[dict[str, Any]]) -> Path:
    write_csv(run.path / "results.csv", rows, RESULT_COLUMNS)
    return run.path / "results.csv"


def report_table(rows: list[dict[str, Any]], eps: list[float]) -> str:
    """Markdown: one line per attack/defense/mode, robust accuracy (%) per eps; a † marks an adaptive
    figure above its non-adaptive twin."""
    from rlab.plots import adaptive_above_twin, eps_label

    flagged = adaptive_above_twin(rows)
    head = "| attack | defense | attacker | clean | " + " | ".join(f"ε={eps_label(e)}" for e in eps) + " |"
    lines = [head, "|" + "---|" * (4 + len(eps))]
    keys = []
    for r in rows:
        k = (r["attack"], r["defense"], r["adaptive"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        cells = {r["eps"]: r for r in rows if (r["attack"], r["defense"], r["adaptive"]) == k}
        first = next(iter(cells.values()))
        accs = []
        for e in eps:
            r = cells.get(round(e, 6))
            mark = "†" if r is not None and k[2] and (k[0], k[1], round(e, 6)) in flagged else ""
            accs.append(f"{100 * r['robust_accuracy']:.1f}{mark}" if r is not None else "")
        mode = "adaptive" if k[2] else "non-adaptive"
        lines.append(f"| {k[0]} | {k[1]} | {mode} | {100 * first['clean_accuracy']:.1f} | " + " | ".join(accs) + " |")
    if any(k[2] for k in keys) and flagged:
        lines += ["", f"† {len(flagged)} adaptive figure(s) above the non-adaptive one at the same attack and ε: "
                      "the adaptive attack was the weaker one there (e.g. a misleading BPDA gradient), not the "
                      "defense stronger; the worst case uses the lower figure."]
    return "\n".join(lines)


def worst_case_table(rows: list[dict[str, Any]], eps: list[float]) -> str:
    """Markdown: per defense, the worst case (%) per eps over every attack and attacker, and who reached it."""
    from rlab.plots import eps_label, worst_case

    worst = {(w["defense"], w["eps"]): w for w in worst_case(rows)}
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    lines = ["| defense | clean | " + " | ".join(f"ε={eps_label(e)}" for e in eps) + " |",
             "|" + "---|" * (2 + len(eps))]
    for d in defenses:
        cells = []
        for e in eps:
            w = worst.get((d, round(e, 6)))
            cells.append(f"**{100 * w['robust_accuracy']:.1f}** ({w['attack']}"
                         f"{', adaptive' if w['attacker'] == 'adaptive' else ''})" if w is not None and e > 0
                         else f"{100 * w['robust_accuracy']:.1f}" if w is not None else "")
        clean = next(r["clean_accuracy"] for r in rows if r["defense"] == d)
        lines.append(f"| {d} | {100 * clean:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_worst_case(run: RunDir, rows: list[dict[str, Any]]) -> Path:
    from rlab.plots import worst_case

    write_csv(run.path / "worst_case.csv", worst_case(rows),
              ["defense", "eps", "clean_accuracy", "robust_accuracy", "attack", "attacker"])
    return run.path / "worst_case.csv"


def plot_transfer(sources: list[str], attack_names: list[str], acc: np.ndarray, eps: float, out: Path) -> Path:
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    fig, ax = plt.subplots(figsize=(4.8 + 1.3 * len(attack_names), 1.8 + 0.55 * len(sources)), dpi=120)
    im = ax.imshow(100 * acc, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(attack_names)), attack_names)
    ax.set_yticks(range(len(sources)), sources, fontsize=8)
    for i in range(len(sources)):
        for j in range(len(attack_names)):
            ax.text(j, i, f"{100 * acc[i, j]:.0f}%", ha="center", va="center", color="w" if acc[i, j] < 0.6 else "k", fontsize=8)
    ax.set_xlabel("attack")
    ax.set_ylabel("model the attack is crafted on")
    ax.set_title(f"Victim accuracy under transfer, ε={eps:.4g}\n(lower: the attack transfers better)", fontsize=9)
    fig.colorbar(im, ax=ax, label="victim accuracy (%)")
    return save_figure(fig, out)


def plot_gallery(model, x, y, classes: list[str], attack_name: str, eps: float, cfg: BenchConfig, out: Path) -> Path:
    """Clean image, adversarial image and the perturbation magnified, with predicted labels."""
    import matplotlib.pyplot as plt

    from rlab.plots import save_figure

    k = min(cfg.gallery, len(x))
    picks = _one_per_class(y, k)
    xb, yb = x[picks], y[picks]
    x_adv = budgeted_attack(attack_name, cfg.steps, cfg.seed, auto_version=cfg.auto_version)(model, xb, yb,
                                                                                              eps=eps).x_adv.detach()
    with torch.no_grad():
        p_clean, p_adv = model(xb).argmax(1), model(x_adv).argmax(1)
    delta = (x_adv - xb) / (2 * eps) + 0.5 if eps > 0 else torch.full_like(xb, 0.5)

    def show(ax, img):
        img = img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])

    fig, axes = plt.subplots(3, k, figsize=(1.5 * k + 0.8, 5.2), dpi=120, squeeze=False)
    for i in range(k):
        show(axes[0, i], xb[i])
        axes[0, i].set_title(f"{classes[p_clean[i]]}", fontsize=8, color="k" if p_clean[i] == yb[i] else "r")
        show(axes[1, i], x_adv[i])
        axes[1, i].set_title(f"{classes[p_adv[i]]}", fontsize=8, color="k" if p_adv[i] == yb[i] else "r")
        show(axes[2, i], delta[i].clamp(0, 1))
    for row, name in enumerate(["clean", f"{attack_name}\nε={eps:.3g}", "perturbation\n(magnified)"]):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.suptitle("Predicted labels (red: wrong); perturbation rescaled from [-ε, ε] to [0, 1]", fontsize=9)
    return save_figure(fig, out)


def _one_per_class(y: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k images, cycling through the classes in order (first unused image of each)."""
    by_class = [torch.nonzero(y == c).flatten().tolist() for c in torch.unique(y).tolist()]
    picks: list[int] = []
    while len(picks) < k and any(by_class):
        for members in by_class:
            if members and len(picks) < k:
                picks.append(members.pop(0))
    return torch.tensor(picks, device=y.device)


def run(cfg: BenchConfig) -> Path:
    set_threads(cfg.threads, "cnn")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    check(cfg.workers == 1 or device.type == "cpu",
          f"--workers {cfg.workers} runs batches on CPU threads, and --device {cfg.device} chose {device}; "
          "leave it at 1")
    model, options, classes, x, y = load_victim(cfg, device)
    eps = sorted(set(cfg.eps if cfg.eps is not None else default_eps(x.shape[1])))
    run_dir = RunDir.create("bench", f"attacks__{options['dataset'].replace(':', '-')}__{options['model']}", cfg.seed, cfg, device)
    start = time.perf_counter()
    warnings: list[str] = []
    rows = evaluate_grid(model, x, y, cfg.attacks, cfg.defenses, eps, cfg, warnings)
    write_results(run_dir, rows)
    write_worst_case(run_dir, rows)
    from rlab.plots import plot_robustness

    plot_robustness(run_dir.path / "results.csv", run_dir.path / "robustness.png",
                    title=f"{options['model']} on {options['dataset']} (n={len(x)}): robust accuracy vs ε "
                          "(solid: non-adaptive, dashed: adaptive)")
    from attacks.registry import canonical_name
    from rlab.plots import adaptive_above_twin, worst_case

    budget = (f"auto at its {cfg.auto_version} budget; " if "auto" in map(canonical_name, cfg.attacks) else "")
    report = [f"# Attack/defense benchmark: {options['model']} on {options['dataset']}", "",
              f"Victim: `{cfg.classifier}`; {len(x)} test images; {budget}other iterative attacks with {cfg.steps} "
              f"steps{f' and {cfg.restarts} restarts' if cfg.restarts > 1 else ''}; "
              f"EOT samples {cfg.eot_samples}. Robust accuracy (%) per ε (L∞, images in [0, 1]).", "",
              "## Headline: the worst case over every attack and attacker", "",
              worst_case_table(rows, eps), ""]
    if warnings:
        report += ["Signs of gradient masking (trust the worst case, and try a stronger or adaptive attack):", ""]
        report += [f"- {w}" for w in warnings] + [""]
    report += ["## Every attack", "", report_table(rows, eps), "", "![robustness](robustness.png)", ""]
    summary: dict[str, Any] = {"n_images": len(x), "eps": eps, "rows": len(rows), "warnings": warnings}
    for r in rows:
        summary[f"robust_accuracy/{r['attack']}/{r['defense']}/{'adaptive' if r['adaptive'] else 'non-adaptive'}/{r['eps']}"] = r["robust_accuracy"]
    for w in worst_case(rows):
        summary[f"worst_case/{w['defense']}/{w['eps']}"] = w["robust_accuracy"]
    summary["adaptive_above_non_adaptive"] = [f"{a}/{d}/{e}" for a, d, e in adaptive_above_twin(rows)]
    nonzero = [e for e in eps if e > 0]
    if cfg.surrogates and nonzero:
        t_eps = nonzero[len(nonzero) // 2]
        sources, names, acc = transfer_matrix(model, x, y, cfg.surrogates, cfg.attacks, t_eps, cfg, device)
        plot_transfer(sources, names, acc, t_eps, run_dir.path / "transfer.png")
        report += [f"## Transfer (black-box), ε={t_eps:.4g}", "", "| crafted on | " + " | ".join(names) + " |",
                   "|---|" + "---|" * len(names)]
        report += [f"| {s} | " + " | ".join(f"{100 * a:.1f}" for a in acc[i]) + " |" for i, s in enumerate(sources)]
        report += ["", "![transfer](transfer.png)", ""]
        summary["transfer"] = {s: dict(zip(names, map(float, acc[i]))) for i, s in enumerate(sources)}
    if cfg.gallery and nonzero:
        g_eps = nonzero[len(nonzero) // 2]
        plot_gallery(model, x, y, classes, cfg.attacks[-1], g_eps, cfg, run_dir.path / "gallery.png")
        report += ["## Gallery", "", "![gallery](gallery.png)", ""]
    atomic_write_text(run_dir.path / "report.md", "\n".join(report))
    summary["wall_seconds"] = time.perf_counter() - start
    run_dir.write_summary(summary)
    return run_dir.path
