"""`train` and `serve` as real processes over a temporary /opt/ml tree."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scripts.sample_data import churn_batch

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "target": "churned",
    "problem_type": "binary_classification",
    "metrics": ["roc_auc", "accuracy"],
    "primary_metric": "roc_auc",
    "categorical_columns": ["plan", "region"],
    "id_column": None,
    "holdout_fraction": 0.5,
    "seed": 1,
    "run_id": "t1",
}


def opt_ml(root: Path, batch, config: dict = CONFIG) -> Path:
    (root / "input" / "data" / "config").mkdir(parents=True)
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps(config))
    (root / "input" / "data" / "current").mkdir(parents=True)
    batch.to_csv(root / "input" / "data" / "current" / "batch.csv", index=False)
    return root


def run_train(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "refit_training", "train"],
        env={**os.environ, "REFIT_OPT_ML": str(root), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_writes_model_baseline_and_paired_evaluation(tmp_path):
    root = opt_ml(tmp_path / "ml", churn_batch(2000, 1))
    result = run_train(root)
    assert result.returncode == 0, result.stderr
    assert "refit:holdout:roc_auc=" in result.stdout
    evaluation = json.loads((root / "model" / "evaluation.json").read_text())
    assert evaluation["metrics"]["challenger"]["roc_auc"] > 0.6
    assert (root / "output" / "data" / "holdout_predictions.csv").read_text().startswith("row_id,label,challenger")
    assert json.loads((root / "model" / "baseline.json").read_text())["format"] == "refit.profile/2"
    assert not (root / "output" / "data" / "holdout_rows.jsonl").exists()  # only with synthetic traffic on


def test_train_failure_leaves_a_reason(tmp_path):
    root = opt_ml(tmp_path / "ml", churn_batch(200, 1).drop(columns=["churned"]))
    result = run_train(root)
    assert result.returncode == 1
    assert "target column 'churned' is missing" in (root / "output" / "failure").read_text()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = opt_ml(tmp_path_factory.mktemp("serve") / "ml", churn_batch(2000, 2))
    assert run_train(root).returncode == 0
    return root


@pytest.fixture(scope="module")
def server(trained):
    with serving(trained) as url:
        yield url


@pytest.fixture(scope="module", params=["gunicorn", "simple"])
def any_server(trained, request):
    """Both servers `serve` can run: gunicorn (the default) and the standard library's (REFIT_SERVER=simple)."""
    with serving(trained, request.param) as url:
        yield url


@contextlib.contextmanager
def serving(root: Path, server: str = "gunicorn"):
    """`serve` on a free port of 127.0.0.1 over the model `train` wrote under `root`, given its digest as Deploy gives
    it from the registry; stopped on exit."""
    from refit_core.artifacts import MODEL_FILE, sha256_of

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "refit_training", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={
            **os.environ,
            "REFIT_OPT_ML": str(root),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "REFIT_SERVE_HOST": "127.0.0.1",
            "REFIT_SERVER": server,
            "REFIT_MODEL_SHA256": sha256_of(root / "model" / MODEL_FILE),
        },
    )
    url = f"http://127.0.0.1:{port}"
    # Up to two minutes: on a loaded machine importing scikit-learn in gunicorn's workers alone can take 10 s.
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"serve exited with {process.returncode} before answering /ping"
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=5)
            break
        except OSError:
            assert time.monotonic() < deadline, "serve did not answer /ping within 120 s"
            time.sleep(0.1)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def post(url, body, content_type, accept="application/json"):
    request = urllib.request.Request(
        f"{url}/invocations",
        data=body.encode(),
        method="POST",
        headers={"Content-Type": content_type, "Accept": accept},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_answers_csv_and_json(server):
    status, body = post(server, "12.0,70.5,1,48.0,basic,north\n3.0,99.0,5,20.0,premium,south\n", "text/csv")
    assert status == 200 and len(json.loads(body)["probabilities"]) == 2
    record = {
        "tenure_months": 3,
        "monthly_charges": 99,
        "support_calls": 5,
        "usage_gb": 20,
        "plan": "plus",
        "region": "east",
    }
    status, body = post(server, json.dumps({"instances": [record]}), "application/json", accept="text/csv")
    assert status == 200 and body.count(",") == 1


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        ("1,2,3\n", "text/csv", "needs 6 values"),
        ("{not json", "application/json", "malformed JSON"),
        ('{"instances": [{"plan": "basic"}]}', "application/json", "lack the features"),
        ("12.0,abc,1,48.0,basic,north\n", "text/csv", "column 'monthly_charges' must be numeric: row 1 has 'abc'"),
        ('{"instances": [[1, 2, "x", 4, "basic", "north"]]}', "application/json", "'support_calls' must be numeric"),
        ("5\n", "application/jsonlines", "each line must be a list of 6 values or a record object"),
    ],
)
def test_serve_rejects_bad_payloads_with_4xx_and_keeps_serving(server, body, content_type, message):
    status, reply = post(server, body, content_type)
    assert status == 400 and message in reply
    assert post(server, "12.0,70.5,1,48.0,basic,north", "text/csv")[0] == 200


ROWS_CSV = "12.0,70.5,1,48.0,basic,north\n3.0,99.0,5,20.0,premium,south\n"
RECORD = (
    '{"tenure_months": 3, "monthly_charges": 99, "support_calls": 5, "usage_gb": 20, "plan": "plus", "region": "east"}'
)


def test_media_types_are_matched_case_insensitively_with_parameters(any_server):
    status, body = post(any_server, ROWS_CSV, "Text/CSV; charset=utf-8", accept="Application/JSON")
    assert status == 200 and len(json.loads(body)["predictions"]) == 2


def test_json_lines_are_one_row_per_line_in_and_out(any_server):
    status, body = post(any_server, f"{RECORD}\n\n{RECORD}\n", "application/jsonlines", "application/jsonlines")
    lines = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and len(lines) == 2 and set(lines[0]) == {"prediction", "probability"}
    instances = '[3, 99, 5, 20, "plus", "east"]\n' * 3
    status, body = post(any_server, instances, "application/x-jsonlines", "application/jsonlines")
    assert status == 200 and [json.loads(line) for line in body.splitlines()] == [lines[0]] * 3  # same row, same answer
    status, body = post(any_server, "{not json}\n", "application/jsonlines")
    assert status == 400 and "JSON Lines line 1: malformed JSON" in body


@pytest.mark.parametrize(
    ("accept", "status", "reply_type"),
    [
        ("image/png", 406, "application/json"),
        ("text/csv;q=0.5, application/json", 200, "application/json"),
        ("application/json;q=0, text/csv", 200, "text/csv"),
        ("*/*", 200, "application/json"),
        ("text/*", 200, "text/csv"),
    ],
)
def test_the_reply_follows_accept_and_an_unsupported_one_is_406(any_server, accept, status, reply_type):
    request = urllib.request.Request(
        f"{any_server}/invocations",
        data=ROWS_CSV.encode(),
        method="POST",
        headers={"Content-Type": "text/csv", "Accept": accept},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            got, content_type, body = reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        got, content_type, body = error.code, error.headers["Content-Type"], error.read().decode()
    assert (got, content_type) == (status, reply_type), body
    if status == 406:
        assert "Accept one of application/json, text/csv, application/jsonlines" in body


def test_an_unsupported_content_type_is_415(any_server):
    status, body = post(any_server, "x", "image/png")
    assert status == 415 and "unsupported content type 'image/png'" in body


def test_a_chunked_body_is_read_whole(any_server):
    import http.client

    host, port = any_server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(
            "POST",
            "/invocations",
            body=iter([b"12.0,70.5,1,48.0,basic,north\n", b"3.0,99.0,5,20.0,premium,south\n"]),
            headers={"Content-Type": "text/csv", "Accept": "application/json"},
            encode_chunked=True,
        )
        reply = connection.getresponse()
        body = reply.read().decode()
    finally:
        connection.close()
    assert reply.status == 200 and len(json.loads(body)["predictions"]) == 2, body


def events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "checkpoints" / "events.jsonl").read_text().splitlines()]


def test_interrupted_run_resumes_without_repeating_folds_and_chooses_the_same_model(tmp_path):
    batch = churn_batch(2000, 3)
    plain = opt_ml(tmp_path / "plain", batch)
    assert run_train(plain).returncode == 0
    root = opt_ml(tmp_path / "interrupted", batch)
    env = {**os.environ, "REFIT_OPT_ML": str(root), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "refit_training", "train"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log = root / "checkpoints" / "events.jsonl"
        if log.exists() and sum('"fold_done"' in line for line in log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(15)
    assert process.wait(timeout=120) == 143
    assert not (root / "model" / "model.joblib").exists()
    assert run_train(root).returncode == 0
    done = [e["key"] for e in events(root) if e["event"] == "fold_done"]
    assert len(done) == len(set(done))  # no finished fold was trained twice
    resumed = [e for e in events(root) if e["event"] == "resumed"]
    assert len(resumed) == 1 and len(resumed[0]["finished"]) >= 2
    first = json.loads((plain / "model" / "evaluation.json").read_text())
    second = json.loads((root / "model" / "evaluation.json").read_text())
    assert first["search"]["best"] == second["search"]["best"]
    assert first["metrics"]["challenger"] == second["metrics"]["challenger"]


def test_a_corrupt_checkpoint_is_ignored(tmp_path):
    root = opt_ml(tmp_path / "ml", churn_batch(1500, 4))
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "progress.json").write_text('{"format": "refit.checkpoint/1", "sha256": "00", "bo')
    assert run_train(root).returncode == 0
    ignored = [e for e in events(root) if e["event"] == "checkpoint_ignored"]
    assert ignored and ignored[0]["reason"].startswith("corrupt")


def test_the_entrypoint_names_its_commands_and_leaves_the_collector_on_with_the_imports_frozen():
    wrong = subprocess.run(
        [sys.executable, "-m", "refit_training", "fit"], capture_output=True, text=True, timeout=60, check=False
    )
    assert wrong.returncode == 2 and "python -m refit_training train|serve (got fit)" in wrong.stderr
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gc; from refit_training.__main__ import load_command; module = load_command('train'); "
            "print(module.__name__, gc.isenabled(), gc.get_freeze_count())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    name, enabled, frozen = loaded.stdout.split()
    assert (name, enabled) == ("refit_training.train", "True") and int(frozen) > 100_000


def add_channel(root: Path, name: str, frame) -> None:
    (root / "input" / "data" / name).mkdir(parents=True)
    frame.to_csv(root / "input" / "data" / name / "part.csv", index=False)


def test_a_validation_channel_is_the_holdout_and_a_baseline_channel_the_drift_reference(tmp_path):
    import pandas as pd

    validation = churn_batch(600, 7)
    current = pd.concat([churn_batch(1500, 1), validation.iloc[:50]], ignore_index=True)  # 50 rows leak into it
    root = opt_ml(tmp_path / "ml", current, {**CONFIG, "replay_rows": 30})  # deploy.synthetic_traffic on
    add_channel(root, "validation", validation)
    add_channel(root, "baseline", churn_batch(700, 9))
    result = run_train(root)
    assert result.returncode == 0, result.stderr
    assert "dropped 50 current rows that are in the validation set" in result.stdout
    evaluation = json.loads((root / "model" / "evaluation.json").read_text())
    assert (evaluation["n_train"], evaluation["n_holdout"]) == (1500, 600)  # the whole batch but the leaked rows
    predictions = pd.read_csv(root / "output" / "data" / "holdout_predictions.csv")
    assert len(predictions) == 600 and predictions["label"].tolist() == validation["churned"].astype(float).tolist()
    assert json.loads((root / "model" / "baseline.json").read_text())["n_rows"] == 700
    # The rows kept for synthetic traffic are rows the gate scored (the validation set), without the target.
    replay = pd.read_json(root / "output" / "data" / "holdout_rows.jsonl", lines=True)
    features = [c for c in validation.columns if c != "churned"]
    assert len(replay) == 30 and list(replay.columns) == features
    assert len(replay.merge(validation[features].drop_duplicates(), on=features)) == 30


def test_channels_with_sub_folders_and_files_in_another_column_order_train(tmp_path):
    """SageMaker copies a channel's keys with their folders: files under sub-folders of validation/ and baseline/
    are read (they failed the job before), and every file is aligned to the job's columns by name, extras left
    out, so a history file written in another column order or with an extra column trains with the rest."""
    root = opt_ml(tmp_path / "ml", churn_batch(1500, 1))
    columns = list(churn_batch(5, 1).columns)
    settings = json.loads((root / "input" / "data" / "config" / "config.json").read_text())
    (root / "input" / "data" / "config" / "config.json").write_text(json.dumps({**settings, "columns": columns}))
    for channel, frame in (("validation", churn_batch(600, 7)), ("baseline", churn_batch(700, 9))):
        folder = root / "input" / "data" / channel / "2026" / "11"
        folder.mkdir(parents=True)
        frame[list(reversed(columns))].to_csv(folder / "part.csv", index=False)
    (root / "input" / "data" / "train" / "old").mkdir(parents=True)
    churn_batch(800, 3)[list(reversed(columns))].assign(referrer="ads").to_csv(
        root / "input" / "data" / "train" / "old" / "kept.csv", index=False
    )
    result = run_train(root)
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((root / "model" / "evaluation.json").read_text())
    assert (evaluation["n_train"], evaluation["n_holdout"]) == (2300, 600)
    assert "referrer" not in evaluation["features"]
    assert json.loads((root / "model" / "baseline.json").read_text())["n_rows"] == 700


@pytest.mark.parametrize("channel", ["validation", "baseline"])
def test_a_channel_without_the_batch_columns_fails_before_training_naming_them(tmp_path, channel):
    root = opt_ml(tmp_path / "ml", churn_batch(500, 1))
    add_channel(root, channel, churn_batch(200, 2).drop(columns=["plan", "usage_gb"]))
    result = run_train(root)
    assert result.returncode == 1 and "refit:cv:" not in result.stdout  # no fold was trained first
    assert (root / "output" / "failure").read_text() == (
        f"the {channel!r} channel lacks columns the current batch has: usage_gb, plan"
    )


def test_a_regression_model_trains_on_its_metrics_and_serves_predictions_only(tmp_path):
    import numpy as np

    batch = churn_batch(1500, 6).drop(columns=["churned"])
    noise = np.random.default_rng(6).normal(0, 5, len(batch))
    batch["annual_spend"] = 12 * batch["monthly_charges"] + 40 * (batch["plan"] == "premium") + noise
    config = {
        **CONFIG,
        "target": "annual_spend",
        "problem_type": "regression",
        "metrics": ["rmse", "mae", "r2"],
        "primary_metric": "rmse",
    }
    root = opt_ml(tmp_path / "ml", batch, config)
    result = run_train(root)
    assert result.returncode == 0, result.stderr
    assert "refit:holdout:rmse=" in result.stdout
    evaluation = json.loads((root / "model" / "evaluation.json").read_text())
    metrics, search = evaluation["metrics"]["challenger"], evaluation["search"]
    assert (
        metrics["r2"] > 0.9
        and metrics["rmse"] < 20
        and set(evaluation["intervals"]["challenger"]) == {"rmse", "mae", "r2"}
    )
    assert search["cv_metric"] == "rmse" and search["cv_scores"][search["best"]] == min(search["cv_scores"].values())
    with serving(root) as url:
        status, body = post(url, "12.0,70.5,1,48.0,premium,north\n", "text/csv")
    assert status == 200 and set(json.loads(body)) == {"predictions"}
    assert abs(json.loads(body)["predictions"][0] - (12 * 70.5 + 40)) < 40


def test_a_validation_channel_of_one_class_fails_naming_it(tmp_path):
    root = opt_ml(tmp_path / "ml", churn_batch(500, 1))
    validation = churn_batch(400, 2)
    add_channel(root, "validation", validation[validation["churned"] == 0])
    result = run_train(root)
    assert result.returncode == 1
    assert (
        (root / "output" / "failure")
        .read_text()
        .startswith("the holdout rows of the validation channel have a single class (0 only)")
    )


def model_archive(root: Path) -> bytes:
    """The model.tar.gz SageMaker would upload from what `train` wrote under `root`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted((root / "model").iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def tarfile_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def test_serve_refuses_a_model_file_whose_digest_is_not_the_registrys(trained, tmp_path):
    """model.joblib is a pickle: `serve` checks it against the digest Deploy puts in its environment (the registry's)
    before loading it, unpacked or as model.tar.gz, and does not start on a mismatch or without a digest (naming the
    registry entry); the matching digest starts it."""
    from refit_core.artifacts import MODEL_FILE, archive_model_sha256, sha256_of

    digest = archive_model_sha256(model_archive(trained))
    assert digest == sha256_of(trained / "model" / MODEL_FILE)
    # Register reads S3's stream once, in blocks, not the whole archive into memory: a one-pass stream gives the same.
    assert archive_model_sha256(io.BufferedReader(io.BytesIO(model_archive(trained)))) == digest
    with pytest.raises(ValueError, match="the archive holds no model.joblib"):
        archive_model_sha256(tarfile_of({"metadata.json": b"{}"}))
    wrong = "0" * 64
    package = "arn:aws:sagemaker:us-east-1:123456789012:model-package/refit-churn/7"
    archived = tmp_path / "archived"  # as SageMaker hands it over: model.tar.gz alone in the model directory
    archived.mkdir()
    (archived / "model.tar.gz").write_bytes(model_archive(trained))
    cases = [
        ("simple", trained / "model", wrong, f"the model registry records {wrong}; refusing to load it"),
        ("gunicorn", trained / "model", wrong, f"the model registry records {wrong}; refusing to load it"),
        ("simple", archived, None, f"{package} records no SHA-256 of model.joblib (model_sha256); refusing to load"),
    ]
    for server, model_dir, expected, refusal in cases:
        result = subprocess.run(
            [sys.executable, "-m", "refit_training", "serve"],
            env={
                **{k: v for k, v in os.environ.items() if k != "REFIT_MODEL_SHA256"},
                "SM_MODEL_DIR": str(model_dir),
                "SAGEMAKER_BIND_TO_PORT": "1",
                "REFIT_SERVE_HOST": "127.0.0.1",
                "REFIT_SERVER": server,
                "REFIT_MODEL_PACKAGE_ARN": package,
                **({"REFIT_MODEL_SHA256": expected} if expected else {}),
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode != 0, (server, model_dir, expected)
        assert refusal in result.stdout + result.stderr, (server, model_dir, expected, result.stderr[-2000:])
    with serving(trained, "simple") as url:  # the registry's digest of this very file
        assert urllib.request.urlopen(f"{url}/ping", timeout=5).status == 200


def test_train_refuses_a_champion_whose_model_file_is_not_the_registrys(trained, tmp_path):
    root = opt_ml(tmp_path / "ml", churn_batch(400, 3), {**CONFIG, "champion_sha256": "f" * 64})
    (root / "input" / "data" / "champion").mkdir(parents=True)
    (root / "input" / "data" / "champion" / "model.tar.gz").write_bytes(model_archive(trained))
    result = run_train(root)
    assert result.returncode == 1
    reason = (root / "output" / "failure").read_text()
    assert "the model registry records ffff" in reason and "refusing to load it" in reason


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """GET /metrics, parsed with prometheus-client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_every_request_across_workers(any_server):
    """Under gunicorn (2 workers here) /metrics adds up every worker's samples (multiprocess mode): 20 scored requests
    of 3 rows and 4 refused ones show as exactly that, whichever worker answered each and the scrape."""
    version = frozenset({("model_version", "unregistered")})
    ok = ("refit_serve_requests_total", version | {("path", "/invocations"), ("status", "200")})
    refused = ("refit_serve_requests_total", version | {("path", "/invocations"), ("status", "400")})
    rows = ("refit_serve_payload_rows_sum", version)
    latency = ("refit_serve_request_seconds_count", version | {("path", "/invocations")})
    before = scrape(any_server)
    for _ in range(20):
        assert post(any_server, "12.0,70.5,1,48.0,basic,north\n" * 3, "text/csv")[0] == 200
    for _ in range(4):
        assert post(any_server, "1,2,3\n", "text/csv")[0] == 400
    after = scrape(any_server)
    assert after[ok] - before.get(ok, 0) == 20
    assert after[refused] - before.get(refused, 0) == 4
    assert after[rows] - before.get(rows, 0) == 60  # refused requests score no rows
    assert after[latency] - before.get(latency, 0) == 24
    le_1s = ("refit_serve_request_seconds_bucket", version | {("path", "/invocations"), ("le", "1.0")})
    assert after[le_1s] - before.get(le_1s, 0) >= 20
