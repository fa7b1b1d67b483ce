"""The synthesized template: what is deployed, how it is protected, and that cdk-nag and cfn-lint accept it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.app_builder import SOURCE_FOLDERS, TEMPLATE_MAX_BYTES, code_version, template_too_large

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def template(cloud_assembly):
    return json.loads((cloud_assembly / "refit.template.json").read_text())


def resources(template, kind):
    return {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == kind}


def test_buckets_are_encrypted_private_versioned_and_ssl_only(template):
    buckets = resources(template, "AWS::S3::Bucket")
    assert len(buckets) == 3
    for props in buckets.values():
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["VersioningConfiguration"]["Status"] == "Enabled"
    for policy in resources(template, "AWS::S3::BucketPolicy").values():
        statements = policy["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
        )


def test_no_iam_statement_allows_every_action(template):
    for kind in ("AWS::IAM::Policy", "AWS::IAM::Role"):
        for props in resources(template, kind).values():
            documents = [props.get("PolicyDocument")] + [p["PolicyDocument"] for p in props.get("Policies", [])]
            for document in filter(None, documents):
                for statement in document["Statement"]:
                    actions = statement.get("Action", [])
                    actions = [actions] if isinstance(actions, str) else actions
                    assert "*" not in actions and not any(a.endswith(":*") for a in actions), statement


def test_one_state_machine_with_the_retrain_states_and_four_triggers(template):
    machines = resources(template, "AWS::StepFunctions::StateMachine")
    assert len(machines) == 1
    definition_parts = next(iter(machines.values()))["DefinitionString"]["Fn::Join"][1]
    text = "".join(p for p in definition_parts if isinstance(p, str))
    for state in (
        "Prepare",
        "Check batch",
        "Start training",
        "Gate challenger",
        "Register challenger",
        "Deploy challenger",
        "Bake canary",
        "Roll back canary",
        "Promote challenger",
        "Finalize",
    ):
        assert f'"{state}"' in text
    assert ".sync" not in text  # SageMaker .sync is not executable locally; training is polled
    functions = resources(template, "AWS::Lambda::Function")
    monitor = next(k for k in functions if "FunctionsMonitor" in k)
    all_rules = resources(template, "AWS::Events::Rule")
    rules = {k: r for k, r in all_rules.items() if r["Targets"][0]["Arn"] != {"Fn::GetAtt": [monitor, "Arn"]}}
    # The monitor runs on its own schedule (refit.toml: hourly), with retries, outside the state machine.
    (monitor_rule,) = [r for k, r in all_rules.items() if k not in rules]
    assert monitor_rule["ScheduleExpression"] == "rate(1 hour)"
    assert monitor_rule["Targets"][0]["RetryPolicy"]["MaximumRetryAttempts"] == 2
    kinds = {
        ("schedule" if "ScheduleExpression" in r else r["EventPattern"]["detail-type"][0]): r for r in rules.values()
    }
    assert set(kinds) == {
        "schedule",
        "Object Created",
        "CloudWatch Alarm State Change",
        "Step Functions Execution Status Change",
    }
    for kind, rule in kinds.items():
        if kind != "Step Functions Execution Status Change":
            assert rule["Targets"][0]["Arn"] == {"Ref": next(iter(machines))}
    # A run that ends without Finalize (timed out, aborted, failed outside a Catch) goes to the Cleanup Lambda.
    run_end = kinds["Step Functions Execution Status Change"]
    assert run_end["EventPattern"]["detail"] == {
        "stateMachineArn": [{"Ref": next(iter(machines))}],
        "status": ["TIMED_OUT", "ABORTED", "FAILED"],
    }
    cleanup = next(k for k, v in resources(template, "AWS::Lambda::Function").items() if "Cleanup" in k)
    assert run_end["Targets"][0]["Arn"] == {"Fn::GetAtt": [cleanup, "Arn"]}


def test_the_new_data_rule_matches_only_the_suffixes_refit_reads(template):
    rule = next(
        r
        for r in resources(template, "AWS::Events::Rule").values()
        if r.get("EventPattern", {}).get("detail-type") == ["Object Created"]
    )
    assert rule["EventPattern"]["detail"]["object"] == {
        "key": [
            {"wildcard": "incoming/churn/*.csv"},
            {"wildcard": "incoming/churn/*.csv.gz"},
            {"wildcard": "incoming/churn/*.parquet"},
        ]
    }


def test_only_finalize_and_cleanup_start_runs_and_only_of_their_own_state_machine(template):
    """The run that releases the lock starts the next queued run: states:StartExecution on the model's state machine,
    its ARN built from the name (a reference to the state machine would make a dependency cycle)."""
    functions = resources(template, "AWS::Lambda::Function")
    function_roles = {f["Role"]["Fn::GetAtt"][0]: name for name, f in functions.items()}
    starters = {}
    for policy in resources(template, "AWS::IAM::Policy").values():
        if policy["Roles"][0]["Ref"] not in function_roles:
            continue  # the EventBridge rules' own role
        for statement in policy["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(a.startswith("states:StartExecution") or a in ("states:*", "*") for a in actions):
                starters[function_roles[policy["Roles"][0]["Ref"]]] = statement["Resource"]
    assert sorted(name.split("Functions")[-1].rstrip("0123456789ABCDEF") for name in starters) == [
        "Cleanup",
        "Finalize",
    ]
    for resource in starters.values():
        parts = resource["Fn::Join"][1]
        assert "".join(p for p in parts if isinstance(p, str)).endswith(":stateMachine:refit-churn")
    environment = next(f for k, f in functions.items() if "Finalize" in k)["Environment"]["Variables"]
    assert environment["REFIT_STATE_MACHINE_ARN"] == next(iter(starters.values()))


def test_the_execution_timeout_covers_the_longest_run_the_settings_allow(template):
    """Step Functions stops a run at the definition's TimeoutSeconds and skips every Catch: it must outlast the
    longest run the model's settings allow (the spot wait and fallback, approval, bake, endpoint updates)."""
    from refit_core.config import load_config

    model = load_config(ROOT / "refit.toml").model("churn")
    machine = next(iter(resources(template, "AWS::StepFunctions::StateMachine").values()))
    text = "".join(p for p in machine["DefinitionString"]["Fn::Join"][1] if isinstance(p, str))
    timeout = int(text.rsplit('"TimeoutSeconds":', 1)[1].split("}", 1)[0].split(",", 1)[0])
    assert timeout == model.run_timeout_seconds
    longest = (
        model.spot.effective_max_wait_seconds + model.spot.max_runtime_seconds + model.canary.bake_seconds + 3 * 3600
    )
    assert timeout > longest
    assert model.lock_seconds > timeout


def test_lambdas_are_images_with_powertools_settings_and_tracing(template):
    functions = {k: v for k, v in resources(template, "AWS::Lambda::Function").items() if "ImageUri" in v["Code"]}
    assert len(functions) == 12  # the 11 of the run, and the monitor
    for props in functions.values():
        variables = props["Environment"]["Variables"]
        assert variables["POWERTOOLS_SERVICE_NAME"].startswith("refit-churn-")
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["ImageConfig"]["Command"][0].startswith("refit_handlers.")
    check = next(p for p in functions.values() if p["ImageConfig"]["Command"] == ["refit_handlers.check_batch.handler"])
    assert check["EphemeralStorage"] == {"Size": 10240}  # Parquet objects are spooled to /tmp, not memory


def test_every_function_names_the_code_it_was_synthesized_from(template):
    """Lineage records REFIT_CODE_VERSION: the synthesizing commit, never a placeholder (it once was always
    'unknown' because the app never passed it)."""
    versions = {
        props["Environment"]["Variables"].get("REFIT_CODE_VERSION")
        for props in resources(template, "AWS::Lambda::Function").values()
        if "ImageUri" in props["Code"]
    }
    assert versions == {code_version(ROOT)}
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", code_version(ROOT))


def test_code_version_outside_git_is_a_digest_of_the_deployed_code(tmp_path):
    for folder in SOURCE_FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    first = code_version(tmp_path)
    assert re.fullmatch(r"source-[0-9a-f]{20}", first)
    (tmp_path / "functions" / "refit_core" / "gate.py").write_text("changed = True\n")
    assert code_version(tmp_path) != first


# cfn-lint findings refit accepts; every other error, warning or informational finding fails the build.
CFN_LINT_ACCEPTED = {
    # CDK puts a DependsOn on a function's role policy next to the GetAtt of the role, so the policy exists before the
    # function can run; cfn-lint sees the role dependency twice. A CDK pattern on every function and state machine.
    "W3005",
}


def cfn_lint(template: Path, *ignored: str) -> subprocess.CompletedProcess:
    arguments = ["--ignore-checks", *ignored] if ignored else []
    return subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", "--include-checks", "I", *arguments]
        + ["--", str(template)],
        capture_output=True,
        text=True,
    )


def test_cfn_lint_reports_nothing_but_the_accepted_findings(
    cloud_assembly, modes_assembly, runs_assembly, training_assembly
):
    """On the example project, and on the three e2e projects, whose models between them use every deploy mode (variants
    with steps, shadow, guardrails, A/B), capacity with autoscaling, manual approval and parallel candidates; cdk-nag
    passed on each (synthesis fails on an unacknowledged finding, and the report says so)."""
    for assembly in (cloud_assembly, modes_assembly, runs_assembly, training_assembly):
        report = json.loads((assembly / "validation-report.json").read_text())
        assert all(plugin["conclusion"] == "success" for plugin in report["pluginReports"])
        result = cfn_lint(assembly / "refit.template.json", *sorted(CFN_LINT_ACCEPTED))
        assert result.returncode == 0, result.stdout + result.stderr
    # The list is no longer than it must be: each accepted rule is still reported without the exception.
    template = cloud_assembly / "refit.template.json"
    reported = {line.split(":")[5] for line in cfn_lint(template).stdout.splitlines() if line.count(":") >= 6}
    assert reported >= CFN_LINT_ACCEPTED, reported


def test_cfn_lint_fails_on_a_warning(cloud_assembly, tmp_path):
    """Warnings are not ignored wholesale: a template with one (a legacy bucket ACL, W3045) fails."""
    template = json.loads((cloud_assembly / "refit.template.json").read_text())
    bucket = next(r for r in template["Resources"].values() if r["Type"] == "AWS::S3::Bucket")
    bucket["Properties"]["AccessControl"] = "LogDeliveryWrite"
    path = tmp_path / "warned.template.json"
    path.write_text(json.dumps(template))
    result = cfn_lint(path, *sorted(CFN_LINT_ACCEPTED))
    assert result.returncode != 0 and "W3045" in result.stdout


def test_a_template_cloudformation_would_refuse_for_its_size_stops_synthesis(tmp_path, cloud_assembly):
    """CDK refuses over 500 resources at synth but not a template over CloudFormation's 1 MB (five models of the
    example's shape make 1.08 MB); app.py refuses it with the size and the fix."""
    big = tmp_path / "big.template.json"
    big.write_bytes(b" " * (TEMPLATE_MAX_BYTES + 1))
    problem = template_too_large("refit", big)
    assert problem.startswith("stack refit: the template is 1,000,001 bytes; CloudFormation accepts at most 1,000,000")
    assert "another project" in problem
    big.write_bytes(b" " * TEMPLATE_MAX_BYTES)
    assert template_too_large("refit", big) is None
    example = (cloud_assembly / "refit.template.json").stat().st_size
    assert example < TEMPLATE_MAX_BYTES / 3  # the example project has room for more models


def test_wrong_config_stops_synthesis_naming_the_field(tmp_path):
    bad = tmp_path / "refit.toml"
    bad.write_text((ROOT / "refit.toml").read_text().replace('primary_metric = "roc_auc"', 'primary_metric = "auc"'))
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")],
        capture_output=True,
        text=True,
        env={"REFIT_CONFIG": str(bad), "CDK_OUTDIR": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "models.0: primary_metric 'auc' does not fit" in result.stderr


def test_npm_cdk_cli_synthesizes_offline_the_template_the_tests_run(tmp_path, cloud_assembly):
    """`cdk synth` with the CLI that package-lock.json installs, as a user would run it, gives exactly the template
    `python app.py` gives the tests and the local runtime: what is tested is what `cdk deploy` deploys."""
    cdk = ROOT / "node_modules" / ".bin" / "cdk"
    result = subprocess.run(
        [str(cdk), "synth", "--quiet", "--output", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        },
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads((tmp_path / "out" / "refit.template.json").read_text())
    tested = json.loads((cloud_assembly / "refit.template.json").read_text())
    assert any(r["Type"] == "AWS::StepFunctions::StateMachine" for r in template["Resources"].values())
    different = sorted(
        k
        for k in template["Resources"].keys() | tested["Resources"].keys()
        if template["Resources"].get(k) != tested["Resources"].get(k)
    )
    assert different == [] and template == tested, f"cdk synth and python app.py differ in {different[:10]}"


def test_the_quality_alarm_watches_refits_own_live_metric_bound(template):
    """The alarm that starts a retrain watches what the monitor publishes (nothing else does): the conservative
    bound of the champion's live metric, the most favourable value of a period, missing data not breaching."""
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    quality = next(a for a in alarms.values() if a.get("AlarmName") == "refit-churn--quality")
    assert (quality["Namespace"], quality["MetricName"]) == ("Refit", "LiveMetricAlarmBound")
    assert sorted(d["Name"] for d in quality["Dimensions"]) == ["Model", "Variant"]
    assert {d["Name"]: d["Value"] for d in quality["Dimensions"]} == {"Model": "churn", "Variant": "champion"}
    assert quality["Statistic"] == "Maximum" and quality["ComparisonOperator"] == "LessThanThreshold"
    assert quality["Threshold"] == 0.7 and quality["Period"] == 3600
    assert quality["TreatMissingData"] == "notBreaching"


def test_the_monitor_may_publish_only_its_namespace_and_prepare_delete_only_pending_feedback(template):
    policies = {k: p["PolicyDocument"]["Statement"] for k, p in resources(template, "AWS::IAM::Policy").items()}
    monitor = next(v for k, v in policies.items() if "MonitorRole" in k)
    put_metric = next(s for s in monitor if s["Action"] == "cloudwatch:PutMetricData")
    assert put_metric["Condition"] == {"StringEquals": {"cloudwatch:namespace": "Refit"}}
    assert not any("Delete" in str(s["Action"]) for s in monitor)
    deletes = [
        (k, s["Resource"])
        for k, statements in policies.items()
        for s in statements
        if "s3:DeleteObject*" in s["Action"]
    ]
    prepare = [resource for k, resource in deletes if "PrepareRole" in k]
    assert prepare and all("feedback/churn/pending/*" in json.dumps(r) for r in prepare)


def test_a_dashboard_per_model_shows_the_live_metric_against_the_alarm_threshold(template):
    (dashboard,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    assert dashboard["DashboardName"] == "refit-churn"
    body = json.dumps(dashboard["DashboardBody"])
    for metric in (
        "LiveMetric",
        "LiveMetricLower",
        "EstimatedMetric",
        "LabelledRows",
        "InputDrift",
        "TrainingCostUSD",
        "CanaryRolledBack",
        "RunsStarted",
    ):
        assert metric in body
    assert "alarm threshold" in body and "0.7" in body


def test_the_canary_alarm_is_the_challengers_5xx_rate_with_the_verdicts_floor(template):
    """Metric math over the challenger variant's per-minute sums: IF(invocations >= canary.min_invocations,
    errors / invocations, 0) over canary.max_error_rate (refit.toml: 20 and 0.01), a quiet minute not breaching."""
    from refit_core.canary import error_rate_alarm_expression

    alarms = resources(template, "AWS::CloudWatch::Alarm")
    canary = next(a for a in alarms.values() if a.get("AlarmName") == "refit-churn--canary")
    assert "MetricName" not in canary and "Statistic" not in canary
    assert (canary["Threshold"], canary["ComparisonOperator"]) == (0.01, "GreaterThanThreshold")
    assert (canary["EvaluationPeriods"], canary["TreatMissingData"]) == (1, "notBreaching")
    queries = {q["Id"]: q for q in canary["Metrics"]}
    assert queries.keys() == {"expr_1", "errors", "invocations"} and queries["expr_1"].get("ReturnData", True)
    assert (
        queries["expr_1"]["Expression"]
        == error_rate_alarm_expression(20)
        == ("IF(invocations >= 20, errors / invocations, 0)")
    )
    challenger = [{"Name": "EndpointName", "Value": "refit-churn"}, {"Name": "VariantName", "Value": "challenger"}]
    for query, metric in (("errors", "Invocation5XXErrors"), ("invocations", "Invocations")):
        stat = queries[query]["MetricStat"]
        assert queries[query]["ReturnData"] is False
        assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"]) == ("AWS/SageMaker", metric)
        assert stat["Metric"]["Dimensions"] == challenger and (stat["Period"], stat["Stat"]) == (60, "Sum")
