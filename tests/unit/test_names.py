"""Physical names: unique, within SageMaker's limits, and IAM patterns of one model never match another's names."""

from __future__ import annotations

import random
import re
import string
import uuid

import pytest
from refit_core import names
from refit_core.config import ConfigError, parse_config

ROOT_MODEL = {
    "name": "churn",
    "problem_type": "binary_classification",
    "target": "y",
    "primary_metric": "roc_auc",
    "metric_direction": "maximize",
}
STAGES = ("first", "canary", "final")


def iam_matches(pattern: str, name: str) -> bool:
    """IAM resource matching: `*` is any run of characters, `?` one character, the rest literal, whole value."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


def generated(prefix: str, run_id: str) -> list[str]:
    return (
        [names.model_name(prefix, run_id)]
        + [names.endpoint_config_name(prefix, run_id, stage) for stage in STAGES]
        + [
            names.training_job_name(prefix, run_id, attempt, spot, family)
            for attempt, spot in ((1, True), (2, False), (30, False))
            for family in (None, "hgb", "linear", "forest")
        ]
    )


def valid_sagemaker_name(name: str) -> bool:
    return len(name) <= names.SAGEMAKER_NAME_MAX and names.SAGEMAKER_NAME_PATTERN.fullmatch(name) is not None


def test_long_model_name_and_uuid_run_id_give_distinct_endpoint_configs():
    """The issue's case: a 19+ character model name and the UUID an unnamed execution gets. Truncating
    `{prefix}-{run}` to 63 characters and appending the stage gave three identical names for this."""
    prefix = names.model_prefix("refit", "customer-churn-europe")
    run_id = str(uuid.UUID(int=7))
    configs = [names.endpoint_config_name(prefix, run_id, stage) for stage in STAGES]
    assert len(set(configs)) == 3
    assert all(valid_sagemaker_name(c) for c in configs), configs
    assert [c.rsplit("--", 1)[1] for c in configs] == list(STAGES)
    assert all(c.startswith(prefix + "--") for c in configs)


def test_every_length_gives_valid_unique_names():
    rng = random.Random(10)
    alphabet = string.ascii_letters + string.digits + "-_."
    projects = ["ab", "refit", "p" * 8]
    seen: dict[str, tuple[str, str]] = {}
    for model_length in range(2, 32):
        model = ("m" + "".join(rng.choice("abc-1") for _ in range(model_length - 1))).replace("--", "-x")
        model = model[:model_length].rstrip("-")
        for project in projects:
            if len(project) + 1 + len(model) > names.PREFIX_MAX:
                continue
            prefix = names.model_prefix(project, model)
            for run_length in (1, 8, 36, 40, 63, 64, 79, 80):
                runs = {"".join(rng.choice(alphabet) for _ in range(run_length)) for _ in range(3)}
                runs.add(str(uuid.UUID(int=rng.getrandbits(128)))[:run_length])
                # Two ids that differ only in the last character must still give different names.
                base = "r" * (run_length - 1)
                runs |= {base + "a", base + "b"}
                for run_id in runs:
                    for name in generated(prefix, run_id):
                        assert valid_sagemaker_name(name), (project, model, run_id, name)
                        assert name.startswith(prefix + "--")
                        key = (prefix, run_id)
                        assert seen.setdefault(name, key) == key, f"{name} built for {seen[name]} and {key}"


def test_names_that_fit_keep_the_run_id_readable():
    assert names.endpoint_config_name("refit-churn", "manual-20261128-ab12", "canary") == (
        "refit-churn--manual-20261128-ab12--canary"
    )
    assert names.training_job_name("refit-churn", "r1", 1, True, "hgb") == "refit-churn--r1--hgb-s1"


@pytest.mark.parametrize(
    ("one", "other"),
    [("churn", "churn-eu"), ("churn-eu", "churn"), ("a1", "a1-b"), ("churn", "churn-2"), ("x-y", "x-y-z")],
)
def test_iam_patterns_of_one_model_never_match_anothers_names(one, other):
    run_ids = ["r1", "eu--r1", "eu-r1", str(uuid.UUID(int=3)), "x" * 80]
    for project in ("refit", "ab"):
        mine, theirs = names.model_prefix(project, one), names.model_prefix(project, other)
        pattern = names.pattern(mine)
        for run_id in run_ids:
            assert all(iam_matches(pattern, n) for n in generated(mine, run_id))
            crossing = [n for n in generated(theirs, run_id) if iam_matches(pattern, n)]
            assert crossing == [], f"{pattern} matches {other!r}'s {crossing}"


def test_the_old_dash_pattern_did_cross():
    """What the `--` separator fixes: `refit-churn-*` matched churn-eu's names."""
    assert iam_matches("refit-churn-*", names.endpoint_config_name("refit-churn-eu", "r1", "first"))


def config(project: str = "refit", *models: str) -> dict:
    return {"project": project, "models": [{**ROOT_MODEL, "name": m} for m in models or ("churn",)]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (config("ml-team"), "no '-'"),
        (config("refit", "churn--eu"), "single '-'"),
        (config("refit", "churn-"), "not ending with '-'"),
        (config("abcdefghijklmnopqrstu", "c" * 20), "at most 39 leave room"),
    ],
)
def test_config_refuses_names_that_could_cross_or_overflow(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data)


def test_config_accepts_prefix_pairs_and_the_longest_model_name():
    assert parse_config(config("refit", "churn", "churn-eu")).prefix("churn-eu") == "refit-churn-eu"
    assert parse_config(config("refit", "c" * 31)).prefix("c" * 31) == "refit-" + "c" * 31
