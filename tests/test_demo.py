"""`rlab demo --quick` end to end: the README's main job on tiny budgets, and its report in a real browser."""

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import rlab.runs
from rlab.cli import main


pytestmark = pytest.mark.xdist_group(__name__)  # one worker runs the shared demo (under pytest-xdist)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> tuple[Path, str]:
    """One `rlab demo --quick` for every test here: (its folder, what it printed on stdout)."""
    root = tmp_path_factory.mktemp("runs")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("RLAB_RUNS", str(root))
        mp.setattr(rlab.runs, "RUNS_ROOT", root)
        assert main(["demo", "--quick", "--device", "cpu"]) == 0
    (demo,) = (root / "demo").iterdir()
    return demo, out.getvalue()


def test_demo_quick_writes_report_plots_and_rows(quick_demo):
    root, stdout = quick_demo
    assert stdout.strip().endswith(str(root))
    report = (root / "report.md").read_text()
    for variant in ("v0 immediate reward", "v2 discounted reward-to-go", "PPO-clip"):
        assert f"| {variant} |" in report
    assert "| pgd | jpeg | adaptive |" in report and "| fgsm | none | non-adaptive |" in report
    assert report.count("#### Headline: the worst case over every attack and attacker") == 2  # one per model
    html = (root / "index.html").read_text()
    pngs = [p for p in root.rglob("*.png")]
    names = {p.name for p in pngs}
    assert {"ladder.png", "training_comparison.png", "robustness.png", "gallery.png", "learning_curve.png"} <= names
    for p in pngs:
        assert Image.open(p).size[0] >= 400, p
        assert str(p.relative_to(root)) in html, f"{p} not shown in index.html"
    summary = json.loads((root / "summary.json").read_text())
    assert set(summary["ladder/eval_mean_return"]) == {"v0 immediate reward", "v2 discounted reward-to-go", "PPO-clip"}
    assert 0.0 <= summary["classifier/standard/test_accuracy"] <= 1.0
    assert -2000 < summary["continuous/sac/eval_mean_return"] <= 0  # Pendulum's returns (600 SAC steps: no threshold)
    assert "### Continuous actions: SAC on Pendulum-v1" in report and "continuous.png" in names
    (bench,) = [p for p in (root / "bench").iterdir() if "jpeg" in (p / "report.md").read_text()]
    with open(bench / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # 2 attacks x (none + 2 defenses x 2 attacker modes) x 2 eps
    assert len(rows) == 2 * (1 + 2 * 2) * 2
    assert {r["adaptive"] for r in rows} == {"True", "False"}


def test_demo_quick_has_the_patch_and_backdoor_section(quick_demo):
    root, _ = quick_demo
    report = (root / "report.md").read_text()
    section = report[report.index("## 4. Beyond the eps-ball"):]
    (patch,) = (root / "bench").glob("patch__mnist5k__*")
    (backdoor,) = (root / "bench").glob("backdoor__mnist5k__*")
    with open(patch / "results.csv", newline="") as f:
        (patch_row,) = csv.DictReader(f)  # quick: one patch size
    assert float(patch_row["area"]) == 0.1 and int(patch_row["n_images"]) == 60 and int(patch_row["steps"]) == 20
    assert f"| 10% | {patch_row['patch_side']} |" in section  # the patch bench's table, copied into the demo's report
    with open(backdoor / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["detector"], float(r["poison_rate"])) for r in rows] == [
        ("clean", "", 0.0), ("poisoned", "", 0.05), ("retrained", "clustering", 0.05)]
    assert int(rows[1]["num_poisoned"]) == 100  # 5% of the quick demo's 2,000 training digits
    assert "| 5% | retrained | clustering |" in section and "| 0% | clean | – |" in section
    for png in (patch / "success.png", patch / "gallery.png", backdoor / "backdoor.png", backdoor / "gallery.png"):
        assert f"]({png.relative_to(root)})" in section, png
    summary = json.loads((root / "summary.json").read_text())
    assert summary["patch/targeted_success/area=0.1"] == float(patch_row["targeted_success"])
    assert summary["backdoor/attack_success_rate/poisoned/0.05"] == float(rows[1]["attack_success_rate"])
    assert "patch_and_backdoor" in summary["seconds"]


# ----------------------------------------------------------------------------- the report in headless Chromium

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,900"]
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")


@contextlib.contextmanager
def headless_chromium(profile: Path):
    """Debian's Chromium under its chromedriver (no driver download), console messages kept, a fresh profile."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def open_page(driver, page: Path) -> dict:
    """Load `page` (until its load event) and say what a reader would see: every image's size, every console error."""
    driver.get(page.as_uri())
    images = driver.execute_script(
        "return Array.from(document.images, i => ({src: i.getAttribute('src'), width: i.naturalWidth}))")
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return {"images": images, "errors": errors}


@needs_chromium
def test_demo_report_and_bench_reports_render_in_headless_chromium(quick_demo, tmp_path):
    root, _ = quick_demo
    pages = [root / "index.html", *sorted(root.glob("bench/*/index.html"))]
    assert len(pages) == 5  # the demo's page and one per benchmark it ran (attacks x2, patch, backdoor)
    broken = tmp_path / "broken.html"  # the check itself must see a missing image
    broken.write_text("<!doctype html><html><body><img src='missing.png'></body></html>")
    with headless_chromium(tmp_path / "profile") as driver:
        seen = open_page(driver, broken)
        assert seen["images"] == [{"src": "missing.png", "width": 0}]
        assert any("missing.png" in e and "ERR_FILE_NOT_FOUND" in e for e in seen["errors"]), seen["errors"]
        for page in pages:
            seen = open_page(driver, page)
            pngs = {str(p.relative_to(page.parent)) for p in page.parent.rglob("*.png")}
            assert {i["src"] for i in seen["images"]} == pngs, page
            assert all(i["width"] >= 400 for i in seen["images"]), (page, seen["images"])
            assert seen["errors"] == [], (page, seen["errors"])
