"""The synthesized state machine against the step contract (refit_core.steps): every `$.x.y` path it reads resolves to
a field of the model the state writing `$.x` returns, every Choice literal is a value that field can take, every
ResultPath is a declared section, and a run state for a wide batch stays far below Step Functions' 256 KiB."""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from refit_core.steps import (
    AbVerdict,
    ApprovalDecision,
    ApprovalRequested,
    CanaryShift,
    CanaryVerdict,
    CandidateBranch,
    CheckResult,
    DeployStarted,
    DriftSummary,
    EndpointCheck,
    FinalStep,
    GateStep,
    GuardrailsCheck,
    MlflowLogged,
    Promotion,
    QualitySummary,
    RedeployStarted,
    RegistryStep,
    Rollback,
    RunInfo,
    RunState,
    ShadowVerdict,
    SyntheticTraffic,
    TrainingStep,
)

from scripts.local_aws.cloud_assembly import CloudAssembly, Resolver

# What each Lambda (by its handler string; Deploy also by its action) returns.
OUTPUTS: dict[tuple[str, str | None], type[BaseModel]] = {
    ("refit_handlers.prepare.handler", None): RunInfo,
    ("refit_handlers.check_batch.handler", None): CheckResult,
    ("refit_handlers.training.start_handler", None): TrainingStep,
    ("refit_handlers.training.poll_handler", None): TrainingStep,
    ("refit_handlers.training.pick_handler", None): TrainingStep,
    ("refit_handlers.gate.gate_handler", None): GateStep,
    ("refit_handlers.gate.register_handler", None): RegistryStep,
    ("refit_handlers.deploy.handler", "start"): DeployStarted,
    ("refit_handlers.deploy.handler", "status"): EndpointCheck,
    ("refit_handlers.deploy.handler", "check_canary"): CanaryVerdict,
    ("refit_handlers.deploy.handler", "shift"): CanaryShift,
    ("refit_handlers.deploy.handler", "promote"): Promotion,
    ("refit_handlers.deploy.handler", "rollback"): Rollback,
    ("refit_handlers.deploy.handler", "restore"): Rollback,
    ("refit_handlers.deploy.handler", "redeploy"): RedeployStarted,
    ("refit_handlers.deploy.handler", "start_shadow"): DeployStarted,
    ("refit_handlers.deploy.handler", "check_shadow"): ShadowVerdict,
    ("refit_handlers.deploy.handler", "start_guardrails"): DeployStarted,
    ("refit_handlers.deploy.handler", "guardrails_status"): GuardrailsCheck,
    ("refit_handlers.deploy.handler", "judge_guardrails"): GuardrailsCheck,
    ("refit_handlers.deploy.handler", "synthetic_traffic"): SyntheticTraffic,
    ("refit_handlers.approval.request_handler", None): ApprovalRequested,
    ("refit_handlers.approval.expire_handler", None): ApprovalDecision,
    ("refit_handlers.finalize.handler", None): FinalStep,
    ("refit_handlers.ab_test.handler", None): AbVerdict,
    ("refit_handlers.mlflow_sync.handler", None): MlflowLogged,
}
# With a task token the state gets what `refit approve/reject` sends, not what the Lambda returns.
TASK_TOKEN_OUTPUTS = {"refit_handlers.approval.request_handler": ApprovalDecision}
PATH = re.compile(r"(?<![$\w])\$((?:\.[A-Za-z_][\w-]*)*)")


class _Placeholders(Resolver):
    """Any Ref/GetAtt becomes a readable placeholder naming the logical id (the definition's shape is all we need)."""

    def ref(self, name: str) -> Any:
        return self.pseudo.get(name, f"ref:{name}")

    def get_att(self, logical_id: str, attribute: str) -> Any:
        return f"getatt:{logical_id}"


def load(directory: Path, model: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The resolved definition (of `model`'s state machine, in an assembly of several models), and each function's
    handler string by logical id."""
    resources = CloudAssembly.load(directory).resources
    prefix = f"Model{model.replace('-', '')}RetrainStateMachine" if model else ""
    (machine, *_) = [
        r for k, r in resources.items() if r["Type"] == "AWS::StepFunctions::StateMachine" and k.startswith(prefix)
    ]
    resolver = _Placeholders(pseudo={"AWS::Region": "us-east-1", "AWS::AccountId": "1", "AWS::Partition": "aws"})
    definition = json.loads(resolver.resolve(machine["Properties"]["DefinitionString"]))
    handlers = {
        logical: r["Properties"].get("Handler") or (r["Properties"].get("ImageConfig") or {}).get("Command", [None])[0]
        for logical, r in resources.items()
        if r["Type"] == "AWS::Lambda::Function"
    }
    return definition, handlers


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models a field can hold (through Optional and list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _field(model: type[BaseModel], path: list[str]) -> Any:
    """The annotation at `path` in `model`, or raise naming where the path leaves the contract."""
    annotation: Any = model
    walked = "$"
    for name in path:
        walked += f".{name}"
        models = _models(annotation)
        if not models:
            if typing.get_origin(annotation) is dict or annotation is Any:
                return Any  # a free-form mapping (evidence); its keys are not part of the contract
            raise AssertionError(f"{walked}: {annotation} has no fields")
        holder = next((m for m in models if name in m.model_fields), None)
        if holder is None:
            raise AssertionError(f"{walked}: no field {name!r} in {' | '.join(m.__name__ for m in models)}")
        annotation = holder.model_fields[name].annotation
    return annotation


def _literal_values(annotation: Any) -> set[Any] | None:
    """The values a Literal field allows (None when the field is not a Literal)."""
    values: set[Any] = set()
    for arg in (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    ):
        if typing.get_origin(arg) is typing.Literal:
            values |= set(typing.get_args(arg))
        elif arg is not type(None):
            return None
    return values or None


def _allows_bool(annotation: Any) -> bool:
    args = typing.get_args(annotation) or (annotation,)
    return bool in args or annotation is Any


def _json_paths(value: Any) -> list[str]:
    """Every `$...` path in a Parameters/ItemSelector value (keys ending in `.$`, intrinsics included)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith(".$") and isinstance(item, str) and not item.startswith("$$"):
                found += [m.group(0) for m in PATH.finditer(item)]
            else:
                found += _json_paths(item)
    elif isinstance(value, list):
        for item in value:
            found += _json_paths(item)
    return found


def _choice_rules(rule: dict[str, Any]) -> list[dict[str, Any]]:
    rules = [rule] if "Variable" in rule else []
    for key in ("And", "Or"):
        for sub in rule.get(key, []):
            rules += _choice_rules(sub)
    if "Not" in rule:
        rules += _choice_rules(rule["Not"])
    return rules


def contract_problems(definition: dict[str, Any], handlers: dict[str, str]) -> list[str]:
    """Every place the definition and the step models disagree (empty when they agree)."""
    problems: list[str] = []

    def check_path(root: type[BaseModel], where: str, path: str) -> Any:
        parts = [p for p in path.split(".")[1:] if p]
        try:
            return _field(root, parts)
        except AssertionError as error:
            problems.append(f"{where}: {error}")
            return None

    def walk(states: dict[str, Any], root: type[BaseModel]) -> None:
        for name, state in states.items():
            where = f"state {name!r}"
            for key in ("InputPath", "OutputPath", "ItemsPath"):
                if isinstance(state.get(key), str):
                    check_path(root, f"{where} {key}", state[key])
            for key in ("Parameters", "ItemSelector"):
                for path in _json_paths(state.get(key)):
                    check_path(root, f"{where} {key}", path)
            targets = [(state.get("ResultPath"), None)] + [
                (c.get("ResultPath"), "catch") for c in state.get("Catch", [])
            ]
            for target, kind in targets:
                if not target or target == "$":
                    continue
                annotation = check_path(root, f"{where} ResultPath", target)
                if annotation is None:
                    continue
                if kind == "catch" or state["Type"] == "Pass":
                    continue
                produced = _produced(state, handlers)
                if state["Type"] == "Task" and produced is None:
                    problems.append(f"{where}: writes {target} but its output model is not known")
                elif produced is not None and produced not in _models(annotation):
                    problems.append(f"{where}: returns {produced.__name__} but {target} holds {annotation}")
            if state["Type"] == "Choice":
                for rule in [r for choice in state.get("Choices", []) for r in _choice_rules(choice)]:
                    annotation = check_path(root, f"{where} Variable", rule["Variable"])
                    if annotation is None:
                        continue
                    if "StringEquals" in rule:
                        allowed = _literal_values(annotation)
                        if allowed is None:
                            problems.append(f"{where}: {rule['Variable']} is {annotation}, not a Literal of strings")
                        elif rule["StringEquals"] not in allowed:
                            problems.append(
                                f"{where}: {rule['Variable']} == {rule['StringEquals']!r} can never hold "
                                f"(allowed: {sorted(allowed)})"
                            )
                    if "BooleanEquals" in rule and not _allows_bool(annotation):
                        problems.append(f"{where}: {rule['Variable']} is {annotation}, not a bool")
            if state["Type"] == "Map":
                processor = state.get("ItemProcessor") or state["Iterator"]
                walk(processor["States"], CandidateBranch)
            for branch in state.get("Branches", []):
                walk(branch["States"], root)

    walk(definition["States"], RunState)
    return problems


def _produced(state: dict[str, Any], handlers: dict[str, str]) -> type[BaseModel] | None:
    """The model a Lambda task returns: the function is its Resource (response-only invoke) or, for the task-token
    integration, Parameters.FunctionName with the payload under Parameters.Payload."""
    parameters = state.get("Parameters") or {}
    resource = str(state.get("Resource", ""))
    function, payload = resource, parameters
    if resource.startswith("arn:aws:states:::lambda:invoke"):
        function, payload = str(parameters.get("FunctionName", "")), parameters.get("Payload") or {}
    handler = handlers.get(function.removeprefix("getatt:").removeprefix("ref:"))
    if handler is None:
        return None
    if resource.endswith(".waitForTaskToken"):
        return TASK_TOKEN_OUTPUTS.get(handler)
    return OUTPUTS.get((handler, payload.get("action")))


@pytest.fixture(scope="module")
def default_definition(cloud_assembly):
    return load(cloud_assembly)


@pytest.fixture(scope="module")
def parallel_definition(training_assembly):
    return load(training_assembly, "parallel")


def _count_paths(definition: dict[str, Any]) -> int:
    return len(re.findall(r'"\$\.[A-Za-z_]', json.dumps(definition)))


def test_every_path_and_choice_literal_of_the_default_definition_is_in_the_step_contract(default_definition):
    definition, handlers = default_definition
    assert _count_paths(definition) > 30  # the walk really sees the definition's paths
    assert contract_problems(definition, handlers) == []


def test_every_path_and_choice_literal_of_the_parallel_definition_is_in_the_step_contract(parallel_definition):
    definition, handlers = parallel_definition
    assert "Train candidates" in definition["States"]
    assert contract_problems(definition, handlers) == []


def test_every_path_and_choice_literal_of_the_guardrails_definition_is_in_the_step_contract(modes_assembly):
    definition, handlers = load(modes_assembly, "guard")
    assert "Guarded update status" in definition["States"] and "Bake canary" not in definition["States"]
    assert contract_problems(definition, handlers) == []


def _replace_in(definition: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return json.loads(json.dumps(copy.deepcopy(definition)).replace(old, new))


def test_a_renamed_key_a_wrong_literal_or_an_unknown_section_fails_the_check(default_definition):
    definition, handlers = default_definition
    renamed = _replace_in(definition, '"$.training.model_data_url"', '"$.training.model_uri"')
    assert any("no field 'model_uri' in TrainingStep" in p for p in contract_problems(renamed, handlers))
    literal = _replace_in(definition, '"StringEquals": "PendingManualApproval"', '"StringEquals": "Pending"')
    assert any("'Pending' can never hold" in p for p in contract_problems(literal, handlers))
    section = _replace_in(definition, '"ResultPath": "$.promotion"', '"ResultPath": "$.promoted"')
    assert any("no field 'promoted' in RunState" in p for p in contract_problems(section, handlers))
    swapped = _replace_in(definition, '"ResultPath": "$.canary"', '"ResultPath": "$.rollback"')
    assert any("returns CanaryVerdict" in p for p in contract_problems(swapped, handlers))


def test_a_model_missing_a_field_the_definition_reads_fails_the_check(default_definition, monkeypatch):
    definition, handlers = default_definition
    fields = dict(RegistryStep.model_fields)
    fields.pop("version")
    monkeypatch.setattr(RegistryStep, "model_fields", fields)
    assert any("no field 'version' in RegistryStep" in p for p in contract_problems(definition, handlers))


def test_a_run_state_for_a_500_column_batch_stays_far_below_256_kib():
    columns = [f"feature_with_a_long_name_{i:04d}" for i in range(500)]
    drift_report = {
        "drift_detected": True,
        "drifted_features": columns,
        "features": {c: {"test": "ks", "p_value": 0.0, "effect_size": 0.5, "drifted": True} for c in columns},
        "target": {"drifted": False},
        "prediction": {"drifted": True},
        "performance": {"metric": "roc_auc", "baseline": 0.9, "current": 0.7, "drifted": True, "rows": 10},
    }
    finding = {"check": "null_rate", "severity": "warn", "observed": 0.5, "limit": 0.1}
    quality_report = {
        "passed": True,
        "n_rows": 10_000,
        "reason": None,
        "findings": [
            {**finding, "column": c, "message": f"s3://data/incoming/churn/b.csv: {c} nulls"} for c in columns
        ],
    }
    guards = [{"metric": "roc_auc", "segment": str(i), "holds": i % 2 == 0, "challenger": 0.8} for i in range(500)]
    check = CheckResult(
        data_uri="s3://data/incoming/churn/b.csv",
        quality=QualitySummary.of(quality_report),
        drift=DriftSummary.of(drift_report),
        has_champion=True,
        decision={"action": "train", "reason": "drift in " + ", ".join(columns)},
        report_uri="s3://art/reports/churn/r/drift.json",
    )
    gate = GateStep.of({"promote": False, "reason": "guard", "guards": guards}, gate_uri="s3://art/gate.json")
    state = {"run": RunInfo(run_id="r" * 80).to_state(), "check": check.to_state(), "gate": gate.to_state()}
    size = len(json.dumps(state).encode())
    assert size < 64 * 1024, size  # a quarter of the cap, with the longest decision reason this batch can give
    assert len(check.drift.drifted_features) == 50 and check.drift.n_drifted_features == 500
    assert check.quality.n_warnings == 500 and len(check.quality.findings) == 10
    assert gate.n_guards == 500 and len(gate.failed_guards) == 10
    per_column = len(json.dumps({"drift": drift_report, "quality": quality_report}).encode())
    assert per_column > 3 * size  # what the state carried per column before
