"""The cloud assemblies the suite shares, each synthesized once per test session.

A synthesis (`python app.py`, cdk-nag included) costs about 20 CPU-seconds, most of it the same whatever the
configuration holds, and the suite's time is bounded by its CPU on two cores. So the end-to-end modules that each
need the example model configured otherwise do not synthesize a project each: the `modes`, `runs` and `training`
configurations hold one model per such module (the churn model under another name with that module's settings), and every module
stands up its assembly in a runtime of its own and uses its own model. Under pytest-xdist the controller starts every
shared synthesis in the background when the session starts (the workers run unit tests meanwhile) and the workers
wait for the result; a run without xdist starts a synthesis the first time a fixture asks for it. Either way a
configuration is synthesized once, not once per worker. A failed synthesis fails every test that needs it, with the
end of its output.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYNTHESIS_TIMEOUT_SECONDS = 1200

# Per-module settings the tests read as well as the configuration.
GUARDRAILS_WAIT_SECONDS = 3
GUARDRAILS_JUDGE_SECONDS = 60
GUARDRAILS_MAX_MODEL_LATENCY_MS = 2000
GUARDRAILS_SETTINGS = {
    "max_trials = 3": "max_trials = 1",
    "[models.monitor]": (
        '[models.deploy]\nmode = "guardrails"\n\n[models.deploy.guardrails]\ntraffic_routing = "ALL_AT_ONCE"\n'
        f"wait_interval_seconds = {GUARDRAILS_WAIT_SECONDS}\njudge_seconds = {GUARDRAILS_JUDGE_SECONDS}\n"
        # Small windows to keep the e2e traffic small (a slow challenger answers in 0.4 s); alpha 0.01: the divergence
        # test rolls an honest challenger back at most that often. The champion's window is the two minutes before the
        # update's: each test sends the champion's traffic there, and the earlier tests' requests (other fleets, cold
        # serve processes) stay out of it. p99 at 3x the champion, as in the staged canary's and the A/B test's modules:
        # local serve processes' latency is noisy on a busy machine, more so across two windows (a healthy challenger
        # measured 2.63x at load 8-12); the slow challenger here waits 0.8 s a request (helpers "slower"), within a
        # latency alarm of 2 s.
        "min_latency_samples = 20\ndivergence_min_samples = 20\nalpha = 0.01\nchampion_lookback_seconds = 120\n"
        f"max_p99_latency_ratio = 3.0\nmax_model_latency_ms = {GUARDRAILS_MAX_MODEL_LATENCY_MS}\n\n[models.monitor]"
    ),
}
AB_MIN_LABELLED_ROWS = 300
SYNTHETIC_SETTLE_SECONDS = 45
# tests/e2e/test_shadow_deploy.py. alpha 0.01: the prediction-divergence test drops an honest challenger with
# probability alpha (as in the staged canary). Every judged bake needs min_latency_samples ModelLatency samples on each
# variant (a window whose p99 cannot be judged is quiet, not a pass): 50, under the module's PER_BAKE requests, each
# copied to the shadow. max_p99_latency_ratio 3.0: local serve processes' latency is noisy (as in the staged canary's
# module); the module's slow shadow is many times the champion's p99.
SHADOW_MIN_LATENCY_SAMPLES = 50
SHADOW_SETTINGS = (
    '[models.deploy]\nmode = "shadow"\n\n[models.deploy.shadow]\nsampling_percent = 100\nbake_seconds = 5\n'
    f"alpha = 0.01\nmin_latency_samples = {SHADOW_MIN_LATENCY_SAMPLES}\nmax_p99_latency_ratio = 3.0\n\n"
)
CAPACITY_SETTINGS = """[models.deploy.capacity]
instance_count = 2

[models.deploy.capacity.autoscaling]
min_instances = 1
max_instances = 4
target_invocations_per_instance = 100
scale_in_cooldown_seconds = 600

"""

# The e2e configurations' models: name -> replacements applied to the example model's section of refit.toml. Three
# projects of three or four models (the largest 863 KB), not one of ten: a model brings about 70 resources and
# 210 KB of template, and
# CloudFormation takes at most 500 resources and 1 MB in a stack (synthesis refuses more: stacks/app_builder.py).
MODES_MODELS: dict[str, dict[str, str]] = {
    # tests/e2e/test_staged_canary.py. alpha 0.01: each step's prediction-divergence test (level alpha / steps) falsely
    # alarms on a healthy challenger at most that often, and it runs before the p99 rule the slow challenger's test
    # is about. The p99 margin is the example's (3.0, refit.toml: its candidates span model families whose latencies
    # differ); the p99 rule also needs significantly more requests over it (refit_core.canary.p99_regression).
    "staged": {
        "weight = 0.2": "steps = [0.2, 0.5]\nalpha = 0.01",
        "max_trials = 3": "max_trials = 1",
    },
    # One family, two folds: every test of the module is a whole run, and training was about half of each (measured).
    "shadow": {
        "[models.monitor]": SHADOW_SETTINGS + "[models.monitor]",
        'families = ["hgb", "linear", "forest"]\nmax_trials = 3\ncv_folds = 3': (
            'families = ["linear"]\nmax_trials = 1\ncv_folds = 2'
        ),
    },
    "guard": GUARDRAILS_SETTINGS,
    # tests/infrastructure/test_synthetic_traffic_template.py: a quiet step's top-up (the template only).
    "synth": {
        "weight = 0.2": "steps = [0.2, 0.5]",
        "[models.monitor]": "[models.deploy.synthetic_traffic]\nenabled = true\nmax_requests_per_variant = 100\n"
        f"settle_seconds = {SYNTHETIC_SETTLE_SECONDS}\n\n[models.monitor]",
    },
}
RUNS_MODELS: dict[str, dict[str, str]] = {
    "abtest": {
        # The A/B guards judge p99 against the champion at every check with the example's margin (3.0, refit.toml):
        # local serve processes' latency is noisy (a healthy challenger measured 1.54 x the champion once), and the p99
        # rule stops only on significantly more requests over the margin (refit_core.canary.p99_regression).
        'families = ["hgb", "linear", "forest"]\nmax_trials = 3\ncv_folds = 3': (
            'families = ["linear"]\nmax_trials = 1\ncv_folds = 2\n\n'
            '[models.training_window]\nkind = "last_batches"\nbatches = 1'
        ),
        "[models.monitor]": (
            '[models.deploy]\nmode = "ab"\n\n[models.deploy.ab]\nchallenger_share = 0.5\nduration_seconds = 2\n'
            f"check_interval_seconds = 1\nmin_labelled_rows = {AB_MIN_LABELLED_ROWS}\n\n[models.monitor]"
        ),
        "labeling_budget_per_day = 200": "labeling_budget_per_day = 0",
        "[models.quality_alarm]\nthreshold = 0.7\nevaluation_periods = 1": "",
    },
    "capacity": {"[models.monitor]": CAPACITY_SETTINGS + "[models.monitor]", "max_trials = 3": "max_trials = 1"},
    # Manual approval; the project's [approval] separation_of_duties (RUNS_PROJECT) applies to it alone.
    "manual": {
        'schedule = "rate(1 day)"': 'schedule = "rate(1 day)"\napproval = "manual"\napproval_timeout_seconds = 30',
        "fallback_to_on_demand = true": "fallback_to_on_demand = false",
    },
}
TRAINING_MODELS: dict[str, dict[str, str]] = {
    "parallel": {
        'families = ["hgb", "linear", "forest"]': 'families = ["hgb", "linear"]\nparallel_jobs = true',
        "max_trials = 3": "max_trials = 1",
    },
    "hygiene": {"max_trials = 3": "max_trials = 1"},
    "window": {
        "max_trials = 3": "max_trials = 1",
        "[models.drift]": '[models.training_window]\nkind = "last_batches"\nbatches = 2\nhalf_life_days = 7\n\n'
        "[models.drift]",
    },
}
RUNS_PROJECT = {'project = "refit"': 'project = "refit"\n\n[approval]\nseparation_of_duties = true\n'}


def replaced(text: str, replacements: dict[str, str], where: str) -> str:
    for old, new in replacements.items():
        assert old in text, f"{where} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


def example_parts() -> tuple[str, str]:
    """refit.toml's project part and its one model section (from `[[models]]` on)."""
    head, models = (ROOT / "refit.toml").read_text().split("\n[[models]]", 1)
    assert "\n[[models]]" not in models, "refit.toml holds more than the example model"
    return head, "\n[[models]]" + models


def model_section(name: str, replacements: dict[str, str]) -> str:
    _, section = example_parts()
    return replaced(section, replacements, "refit.toml's model").replace('name = "churn"', f'name = "{name}"', 1)


def project_config(models: dict[str, dict[str, str]], project: dict[str, str] | None = None) -> str:
    head, _ = example_parts()
    return replaced(head, project or {}, "refit.toml") + "".join(
        model_section(name, replacements) for name, replacements in models.items()
    )


def two_models_config() -> str:
    """Project `other` with two models whose names prefix each other, churn and churn-eu (the whole churn section
    again under the longer name, with manual approval, so the template has an Approve function and its URL;
    separation of duties on)."""
    head, section = example_parts()
    project = {'project = "refit"': 'project = "other"\n\n[approval]\nseparation_of_duties = true\n'}
    manual = {'schedule = "rate(1 day)"': 'schedule = "rate(1 day)"\napproval = "manual"'}
    return replaced(head, project, "refit.toml") + section + model_section("churn-eu", manual)


SHARED: dict[str, Callable[[], str | None]] = {
    "default": lambda: None,  # refit.toml itself
    "two-models": two_models_config,
    "modes": lambda: project_config(MODES_MODELS),
    "runs": lambda: project_config(RUNS_MODELS, RUNS_PROJECT),
    "training": lambda: project_config(TRAINING_MODELS),
}


def _folder(root: Path, name: str) -> Path:
    return root / "shared-cdk" / name


def start(root: Path, name: str) -> None:
    """Start the synthesis of SHARED[name] under `root` in the background, unless someone already did."""
    folder = _folder(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "started").exists():
            return
        text = SHARED[name]()
        arguments = [str(folder / "cdk.out")]
        if text is not None:
            (folder / "refit.toml").write_text(text)
            arguments.append(str(folder / "refit.toml"))
        with open(folder / "output.log", "w") as log:
            subprocess.Popen(
                [sys.executable, "-m", "tests.assemblies", *arguments],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (folder / "started").touch()


def assembly(root: Path, name: str) -> Path:
    """The assembly of SHARED[name], once synthesized (started here if nobody has)."""
    start(root, name)
    folder = _folder(root, name)
    deadline = time.monotonic() + SYNTHESIS_TIMEOUT_SECONDS
    while not (folder / "status").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"synthesis of {name!r} ({folder}) did not end in {SYNTHESIS_TIMEOUT_SECONDS} s")
        time.sleep(0.5)
    if (folder / "status").read_text().strip() != "0":
        raise RuntimeError(f"synthesis of {name!r} failed:\n{(folder / 'output.log').read_text()[-4000:]}")
    return folder / "cdk.out"


def config_path(root: Path, name: str) -> Path:
    """The configuration file an assembly was synthesized from (what the CLI and runtime read for it)."""
    path = _folder(root, name) / "refit.toml"
    return path if path.exists() else ROOT / "refit.toml"


def session_root(base_temp: Path) -> Path:
    """The folder every process of the session sees: the controller's base temp under xdist (a worker's base temp
    is a folder in it), the base temp otherwise."""
    return base_temp.parent if os.environ.get("PYTEST_XDIST_WORKER") else base_temp


def _synthesize_and_record(outdir: str, config: str | None = None) -> None:
    """The background process: synthesize, then write the exit status where the waiting workers look."""
    sys.path.insert(0, str(ROOT))
    from scripts.local_aws.cloud_assembly import synthesize

    status = "1"
    try:
        synthesize(Path(outdir), Path(config) if config else None)
        status = "0"
    except Exception as error:  # recorded for the waiting tests, which raise it
        print(error, flush=True)
    finally:
        folder = Path(outdir).parent
        (folder / "status.new").write_text(status)
        (folder / "status.new").rename(folder / "status")  # whole, never read half-written


if __name__ == "__main__":
    _synthesize_and_record(*sys.argv[1:])
