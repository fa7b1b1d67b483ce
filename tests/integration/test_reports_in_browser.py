"""The run report and the drift report as a person sees them: opened from disk in headless Chromium (Debian's package,
driven by Playwright at the system binary), rendered without errors and without fetching anything, their plots
drawn, their key numbers on the page.

The pages come from real runs on the local runtime: a first batch deploys the first model, a drifted batch retrains,
passes the gate and is promoted through the canary. Without Chromium the browser tests skip with the reason, except
under CI (`CI` set, as .ci/run runs), where they fail: `.ci/run` installs Chromium, so its absence there is a defect.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from scripts.cli import main
from scripts.local_aws.runtime import LocalRuntime
from scripts.sample_data import churn_batch, to_csv_bytes

MODEL = "churn"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")
# The series colours of refit_core.report's plots and the run report's interval plots.
BLUE, RED = (0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28)
# Flags for a sandboxed root user on a machine without network (Chromium's background requests would only fail).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_executable() -> str | None:
    """REFIT_CHROMIUM, else the first of Debian's Chromium binaries on the PATH."""
    if os.environ.get("REFIT_CHROMIUM"):
        return os.environ["REFIT_CHROMIUM"]
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def unavailable(reason: str) -> None:
    """Skip outside CI; fail in CI, where .ci/run installs the browser."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"CI: {reason}; .ci/run installs Debian's chromium-headless-shell and `make install` Playwright")
    pytest.skip(f"{reason} (apt-get install chromium-headless-shell, or set REFIT_CHROMIUM); CI runs this test")


@pytest.fixture(scope="module")
def browser():
    executable = chromium_executable()
    if executable is None:
        unavailable(f"no Chromium on the PATH ({', '.join(BROWSERS)})")
    if not os.access(executable, os.X_OK):
        unavailable(f"REFIT_CHROMIUM={executable} is not an executable file")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (the dev extras pin it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def refit(*arguments: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(arguments), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pages(cloud_assembly, tmp_path_factory) -> dict[str, Any]:
    """A first model, then a drifted batch that is retrained and promoted (traffic during the bake); the run report
    of the promoted run (`refit report`) and its drift page, as files."""
    folder = tmp_path_factory.mktemp("pages")
    with LocalRuntime(cloud_assembly, tmp_path_factory.mktemp("runtime"), spot_discount=0.7, seed=3) as aws:
        first = aws.wait_for(aws.land_batch(MODEL, "first.csv", to_csv_bytes(churn_batch(3000, 1))))
        assert first["status"] == "SUCCEEDED"

        def traffic(state: str, seconds: int) -> None:
            rows = churn_batch(700, 9, shift=1.0).drop(columns=["churned"]).to_csv(index=False, header=False)
            for line in rows.splitlines():
                aws.invoke_endpoint(MODEL, line)

        aws.on_wait("Bake canary", traffic)
        try:
            execution = aws.wait_for(aws.land_batch(MODEL, "drifted.csv", to_csv_bytes(churn_batch(3000, 2, 1.0))))
        finally:
            aws.on_wait("Bake canary", None)
        name = execution["executionArn"].rsplit(":", 1)[-1]
        record = next(r for r in aws.audit_records(MODEL) if r["execution"] == name)
        assert record["outcome"] == "promoted", record["message"]
        run_page = folder / "run.html"
        outputs = folder / "outputs.json"
        outputs.write_text(json.dumps(aws.outputs))  # where the state machine is: the stack's outputs
        code, out, err = refit(
            "report", record["run_id"], "-o", str(run_page), "--stack-outputs", str(outputs), "--json"
        )
        assert code == 0, err
        drift_page = folder / "drift.html"
        drift_page.write_bytes(aws.read_s3(record["drift"]["report_html_uri"]))
    return {"record": record, "data": json.loads(out), "run": run_page, "drift": drift_page}


def test_the_report_holds_the_runs_timeline_drift_gate_and_cost(pages):
    """Without a browser: what `refit report --json` read for the promoted run."""
    record, data = pages["record"], pages["data"]
    assert data["output"] == str(pages["run"]) and data["notes"] == []
    line = data["timeline"]
    assert line["status"] == "SUCCEEDED" and line["errors"] == []
    entered = [s["state"] for s in line["states"]]
    for state in ("Prepare", "Check batch", "Start training", "Gate challenger", "Bake canary", "Finalize"):
        assert state in entered
    assert entered.index("Check batch") < entered.index("Gate challenger") < entered.index("Finalize")
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in line["states"])
    drifted = data["drift"]["drifted_features"]
    assert "usage_gb" in drifted and set(drifted) <= set(data["drift_plots"])
    assert data["gate"]["promote"] is True
    assert data["gate"]["challenger"] == pytest.approx(float(record["gate"]["challenger"]))
    assert set(data["gate"]["intervals"]["champion"]) == set(data["gate"]["all_metrics"]["champion"])
    assert data["lineage"]["version"] == record["registry"]["version"]


# ---------------------------------------------------------------------------------------------------------- browser
def open_page(browser, path: Path) -> tuple[Any, list[str]]:
    """The page loaded from disk, and every problem it raised: console errors, uncaught exceptions, failed
    requests and any request for something other than the page itself (a self-contained page fetches nothing)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    url = path.resolve().as_uri()
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("request", lambda r: problems.append(f"fetched {r.url}") if r.url != url else None)
    page.goto(url, wait_until="load")
    return page, problems


def plot_problems(element, colours: tuple[tuple[int, int, int], ...]) -> list[str]:
    """A plot has content when its screenshot, inside its frame, has more than one colour and shows each series
    colour it should (an empty plot is its background and frame only)."""
    from PIL import Image

    image = Image.open(io.BytesIO(element.screenshot())).convert("RGB")
    inner = image.crop((3, 3, image.width - 3, image.height - 3))
    found = {colour for _, colour in inner.getcolors(maxcolors=inner.width * inner.height)}
    problems = [] if len(found) > 1 else [f"one colour only: {found}"]
    for colour in colours:
        if not any(sum(abs(a - b) for a, b in zip(colour, seen, strict=True)) < 30 for seen in found):
            problems.append(f"no pixel of the series colour #{bytes(colour).hex()}")
    return problems


def test_the_run_report_renders_with_its_plots_and_numbers(browser, pages, tmp_path):
    record, data = pages["record"], pages["data"]
    page, problems = open_page(browser, pages["run"])
    try:
        assert problems == []
        drift_plots = page.locator("#drift figure.plot svg")
        gate_plots = page.locator("#gate figure.plot svg")
        assert drift_plots.count() == len(data["drift_plots"]) >= 1
        assert gate_plots.count() == len(data["gate"]["all_metrics"]["challenger"])
        for i in range(drift_plots.count()):
            assert plot_problems(drift_plots.nth(i), (BLUE, RED)) == [], f"drift plot {i}"
        for i in range(gate_plots.count()):
            assert plot_problems(gate_plots.nth(i), (BLUE, RED)) == [], f"gate plot {i}"
        bars = page.locator("#timeline .bar")
        assert bars.count() >= 10 and all(bars.nth(i).bounding_box()["width"] > 0 for i in range(bars.count()))
        text = page.inner_text("body")
        gate = data["gate"]
        for number in (f"{gate['challenger']:.4f}", f"{gate['champion']:.4f}", f"{gate['ci_low']:.4f}"):
            assert number in text
        assert page.inner_text("#outcome") == "promoted" and page.inner_text("#status") == "SUCCEEDED"
        assert f"${record['training']['estimated_cost_usd']:.4f}" in text
        assert f"{int(record['canary']['invocations']):,}" in page.inner_text("#deploy")
        for name in data["drift"]["drifted_features"]:
            assert name in page.inner_text("#drift")
        assert record["registry"]["lineage_uri"] in page.inner_text("#lineage")
        page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
    finally:
        page.close()


def test_the_drift_report_renders_with_a_plot_per_drifted_column(browser, pages):
    drifted = pages["data"]["drift"]["drifted_features"]
    page, problems = open_page(browser, pages["drift"])
    try:
        assert problems == []
        assert "Drift detected" in page.inner_text("body")
        for name in drifted:
            plot = page.locator(f"figure[data-column='{name}'] svg")
            assert plot.count() == 1, name
            assert plot_problems(plot, (BLUE, RED)) == [], name
    finally:
        page.close()


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    """Each check fails on the defect it is for: an empty plot, a console error, a fetched file."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!doctype html><html><body><svg width='200' height='100'><rect width='200' height='100' fill='#fafafa' "
        "stroke='#ccc'/></svg><img src='missing.png'><script>console.error('boom')</script></body></html>"
    )
    page, problems = open_page(browser, broken)
    try:
        assert any(p.startswith("console error: boom") for p in problems)
        assert any("missing.png" in p for p in problems if p.startswith("fetched"))
        assert plot_problems(page.locator("svg"), (BLUE,)) != []
    finally:
        page.close()
