"""The Kubeflow Pipelines step (scripts/integrations/kubeflow.py) compiles with kfp into a spec that runs
`refit trigger MODEL --follow` in the given image, with its exit code as the step's outcome: 0 only for a run that
SUCCEEDED (tests/integration/test_run_commands.py: a failed run exits 1, bad input 2)."""

import io
import json
import re

import pytest

from tests.conftest import import_or_skip

import_or_skip("kfp", reason="the `kubeflow` extra (make test installs it; under CI a missing extra fails)")

import yaml  # noqa: E402

from scripts.cli import main  # noqa: E402
from scripts.integrations.kubeflow import DEFAULT_CONFIG  # noqa: E402
from scripts.integrations.kubeflow import main as compile_main  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/refit:1.4.0"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "refit_pipeline.yaml"
    assert compile_main(["--image", IMAGE, "-o", str(path)]) == 0
    return yaml.safe_load(path.read_text())


def test_the_step_runs_refit_trigger_follow_in_the_image(spec):
    (executor,) = spec["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == IMAGE
    assert container["command"] == ["refit"]  # no shell around it: refit's exit code is the step's
    fixed = [arg for arg in container["args"] if not arg.startswith('{"IfPresent"')]
    assert fixed == [
        "--config",
        "{{$.inputs.parameters['config']}}",
        "trigger",
        "{{$.inputs.parameters['model']}}",
        "--follow",
        "--reason",
        "{{$.inputs.parameters['reason']}}",
    ]
    optional = [json.loads(arg)["IfPresent"] for arg in container["args"] if arg.startswith('{"IfPresent"')]
    assert optional == [
        {"InputName": "data", "Then": ["--data", "{{$.inputs.parameters['data']}}"]},
        {"InputName": "timeout_seconds", "Then": ["--timeout", "{{$.inputs.parameters['timeout_seconds']}}"]},
    ]


def test_its_inputs_and_the_pipelines(spec):
    (component,) = spec["components"].values()
    inputs = component["inputDefinitions"]["parameters"]
    assert inputs == {
        "model": {"parameterType": "STRING"},
        "reason": {"parameterType": "STRING", "defaultValue": "Kubeflow pipeline", "isOptional": True},
        "config": {"parameterType": "STRING", "defaultValue": DEFAULT_CONFIG, "isOptional": True},
        "data": {"parameterType": "STRING", "isOptional": True},
        "timeout_seconds": {"parameterType": "NUMBER_DOUBLE", "isOptional": True},
    }
    assert spec["pipelineInfo"]["name"] == "refit-retrain"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"model", "reason"}
    (task,) = spec["root"]["dag"]["tasks"].values()
    assert task["inputs"]["parameters"]["model"] == {"componentInputParameter": "model"}
    assert not task["cachingOptions"].get("enableCache", False)  # a run is an action: never served from cache


def test_the_compiled_arguments_are_the_refit_command_line(spec):
    """The args with the placeholders filled in, as the KFP launcher would, parse as `refit trigger`: a model not in
    the configuration is refused with exit code 2 before anything starts."""
    (executor,) = spec["deploymentSpec"]["executors"].values()
    values = {
        "config": str(ROOT / "refit.toml"),
        "model": "no-such-model",
        "reason": "nightly",
        "data": "s3://b/incoming/x.csv",
    }
    argv: list[str] = []
    for arg in executor["container"]["args"]:
        if arg.startswith('{"IfPresent"'):
            present = json.loads(arg)["IfPresent"]
            argv += present["Then"] if present["InputName"] in values else []
        else:
            argv.append(arg)
    argv = [re.sub(r"\{\{\$\.inputs\.parameters\['(\w+)'\]\}\}", lambda m: values[m[1]], arg) for arg in argv]
    assert argv[:3] == ["--config", values["config"], "trigger"] and "--data" in argv and "--timeout" not in argv
    err = io.StringIO()
    assert main(argv, out=io.StringIO(), err=err) == 2
    assert "has no model 'no-such-model'" in err.getvalue()
