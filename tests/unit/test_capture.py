"""Data Capture files read as the model saw them: join keys by the design's rule, every encoding SageMaker writes,
and every bad record counted (never raised); the request and reply formats are serve's own."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import boto3
import pandas as pd
import pytest
from moto import mock_aws
from refit_core.capture import (
    CAPTURE_PROBLEMS,
    MAX_EXAMPLES,
    capture_key_time,
    captured_keys,
    list_capture_objects,
    read_capture,
)
from refit_core.payloads import CSV, JSON, JSON_LINES, OUTPUT_TYPES, parse_reply, render_reply

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "usage_gb", "plan", "region"]
NUMERIC = FEATURES[:4]
ROW = "12.0,70.5,1,48.0,basic,north"
ROW2 = "3.0,99.0,5,20.0,premium,south"
BINARY = "binary_classification"


def half(data: bytes | str, content_type: str, mode: str, encoding: str | None = None) -> dict:
    """One half of a record as SageMaker writes it: CSV / JSON encodings carry the text, anything else is BASE64."""
    raw = data.encode() if isinstance(data, str) else data
    if encoding is None:
        encoding = "CSV" if content_type == CSV else "JSON" if content_type in (JSON, JSON_LINES) else "BASE64"
    text = base64.b64encode(raw).decode() if encoding == "BASE64" else raw.decode()
    return {"observedContentType": content_type, "mode": mode, "data": text, "encoding": encoding}


def record(
    body: str | bytes = ROW,
    content_type: str = CSV,
    reply: dict | None = None,
    reply_type: str = JSON,
    event_id: str = "ev-1",
    inference_id: str | None = None,
    time: str = "2026-11-29T01:02:03Z",
    input_encoding: str | None = None,
    output_encoding: str | None = None,
) -> bytes:
    """A Data Capture line for one request and the reply serve renders for `reply` (one positive row by default)."""
    reply = reply if reply is not None else {"predictions": [1], "probabilities": [0.8]}
    metadata = {"eventId": event_id, "inferenceTime": time}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    return json.dumps(
        {
            "captureData": {
                "endpointInput": half(body, content_type, "INPUT", input_encoding),
                "endpointOutput": half(render_reply(reply, reply_type), reply_type, "OUTPUT", output_encoding),
            },
            "eventMetadata": metadata,
            "eventVersion": "0",
        }
    ).encode()


def read(lines: list[bytes], problem_type: str = BINARY, numeric: list[str] | None = NUMERIC, source: str = "f.jsonl"):
    return read_capture(
        lines, source=source, variant="champion", features=FEATURES, problem_type=problem_type, numeric=numeric
    )


def problems_only(result, **expected: int) -> None:
    assert result.problems == {kind: expected.get(kind, 0) for kind in CAPTURE_PROBLEMS}


def test_a_one_row_request_is_keyed_by_its_inference_id_else_its_event_id():
    result = read([record(event_id="ev-1", inference_id="order-17"), record(body=ROW2, event_id="ev-2")])
    problems_only(result)
    frame = result.frame
    assert list(frame.columns) == [
        "key",
        "event_id",
        "inference_id",
        "inference_time",
        "variant",
        *FEATURES,
        "prediction",
        "probability",
    ]
    assert frame["key"].tolist() == ["order-17", "ev-2"]
    assert frame["event_id"].tolist() == ["ev-1", "ev-2"]
    assert frame["inference_id"].tolist() == ["order-17", None]
    assert frame["inference_time"].tolist() == [pd.Timestamp("2026-11-29T01:02:03Z")] * 2
    assert str(frame["inference_time"].dt.tz) == "UTC"
    assert frame["variant"].tolist() == ["champion", "champion"]
    assert frame["tenure_months"].tolist() == [12.0, 3.0] and frame["plan"].tolist() == ["basic", "premium"]
    assert frame["prediction"].tolist() == [1, 1] and frame["probability"].tolist() == [0.8, 0.8]
    assert result.records == 2


@pytest.mark.parametrize(
    "body, content_type",
    [
        (f"{ROW}\n{ROW2}\n{ROW}\n", CSV),
        (",".join(FEATURES) + f"\n{ROW}\n{ROW2}\n{ROW}\n", CSV),  # a header equal to the features is no row
        (json.dumps({"instances": [ROW.split(","), ROW2.split(","), ROW.split(",")]}), JSON),
        ("\n".join(json.dumps(dict(zip(FEATURES, r.split(","), strict=True))) for r in (ROW, ROW2, ROW)), JSON_LINES),
    ],
)
def test_row_i_of_a_multi_row_request_is_keyed_id_colon_i(body, content_type):
    reply = {"predictions": [1, 0, 1], "probabilities": [0.9, 0.2, 0.7]}
    result = read([record(body, content_type, reply, event_id="ev-9", inference_id="batch-3")])
    problems_only(result)
    assert result.frame["key"].tolist() == ["batch-3:0", "batch-3:1", "batch-3:2"]
    assert result.frame["event_id"].tolist() == ["ev-9"] * 3
    assert result.frame["monthly_charges"].tolist() == [70.5, 99.0, 70.5]
    assert result.frame["prediction"].tolist() == [1, 0, 1]
    assert result.frame["probability"].tolist() == [0.9, 0.2, 0.7]


def test_without_an_inference_id_a_multi_row_request_is_keyed_by_event_id_colon_i():
    reply = {"predictions": [0, 1], "probabilities": [0.1, 0.6]}
    assert read([record(f"{ROW}\n{ROW2}", reply=reply, event_id="ev-4")]).frame["key"].tolist() == ["ev-4:0", "ev-4:1"]


def test_base64_halves_are_decoded_and_parsed_by_their_content_type():
    plain = read([record(ROW2, inference_id="a")])
    encoded = read([record(ROW2, inference_id="a", input_encoding="BASE64", output_encoding="BASE64")])
    problems_only(encoded)
    pd.testing.assert_frame_equal(encoded.frame, plain.frame)
    # Content types the endpoint config does not declare are captured as BASE64 too.
    jsonl = "\n".join(json.dumps(dict(zip(FEATURES, r.split(","), strict=True))) for r in (ROW, ROW2))
    reply = {"predictions": [1, 0], "probabilities": [0.6, 0.3]}
    lines = [record(jsonl, "application/x-jsonlines", reply, "application/jsonlines", inference_id="b")]
    assert json.loads(lines[0])["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert read(lines).frame["key"].tolist() == ["b:0", "b:1"]


def test_a_truncated_line_is_counted_and_the_rest_of_the_file_is_read():
    whole = record(inference_id="a")
    lines = [record(inference_id="first"), whole[: len(whole) // 2], record(inference_id="last")]
    result = read(lines, source="s3://data/capture/churn/e/champion/2026/11/29/01/x.jsonl")
    problems_only(result, truncated_line=1)
    assert result.frame["key"].tolist() == ["first", "last"]
    assert result.examples == [
        f"s3://data/capture/churn/e/champion/2026/11/29/01/x.jsonl line 2: cut off after {len(whole) // 2} characters"
    ]


def test_lines_that_are_not_capture_records_are_not_json():
    lines = [b"garbage", b"\xff\xfe{}", b"[1, 2]", json.dumps({"captureData": {}}).encode(), b"", record()]
    result = read(lines)
    problems_only(result, not_json=4)
    assert len(result.frame) == 1 and result.records == 5
    assert "line 4: not a Data Capture record (no eventMetadata.eventId)" in result.examples[3]


def test_an_unknown_encoding_is_counted():
    line = json.loads(record())
    line["captureData"]["endpointInput"]["encoding"] = "UTF-16"
    result = read([json.dumps(line).encode(), record(event_id="ok")])
    problems_only(result, unknown_encoding=1)
    assert result.frame["key"].tolist() == ["ok"]
    assert "line 1: input encoding 'UTF-16' is none of CSV, JSON, BASE64" in result.examples[0]


@pytest.mark.parametrize(
    "body, content_type, message",
    [
        ("12.0,70.5,1,48.0,basic", CSV, "each CSV row needs 6 values"),
        ("12.0,lots,1,48.0,basic,north", CSV, "column 'monthly_charges' must be numeric: row 1 has 'lots'"),
        (json.dumps({"rows": []}), JSON, "JSON must be"),
        (json.dumps([{"plan": "basic"}]), JSON, "records lack the features"),
        ("{not json", JSON_LINES, "JSON Lines line 1: malformed JSON"),
        ("a;b;c", "text/plain", "unsupported content type 'text/plain'"),
        (b"\xff\xfe1,2", CSV, "the CSV body is not UTF-8"),
    ],
)
def test_a_payload_the_models_schema_cannot_parse_is_unparseable_input(body, content_type, message):
    encoding = "BASE64" if isinstance(body, bytes) else None  # bytes that are not text can only be captured so
    result = read([record(body, content_type, input_encoding=encoding), record(event_id="ok")])
    problems_only(result, unparseable_input=1)
    assert result.frame["key"].tolist() == ["ok"]
    assert message in result.examples[0] and result.examples[0].startswith("f.jsonl line 1: ")


def test_base64_data_that_is_not_base64_is_unparseable():
    line = json.loads(record(input_encoding="BASE64"))
    line["captureData"]["endpointInput"]["data"] = "not base64!"
    problems_only(read([json.dumps(line).encode()]), unparseable_input=1)


def test_numeric_columns_are_checked_only_when_named():
    lenient = read([record("12.0,lots,1,48.0,basic,north")], numeric=None)
    problems_only(lenient)
    assert lenient.frame["monthly_charges"].tolist() == ["lots"]


@pytest.mark.parametrize(
    "reply, reply_type, message",
    [
        ({"error": "the rows cannot be scored"}, JSON, "the reply is not"),
        ({"predictions": [1]}, JSON, "the reply is not"),  # binary classification needs probabilities
        ({"predictions": ["x"], "probabilities": [0.5]}, JSON, "reply predictions row 1 is not a number"),
        ({"predictions": [1], "probabilities": [float("nan")]}, JSON, "not finite"),
        ({"predictions": [1, 0], "probabilities": [0.5]}, JSON, "the reply has 2 predictions and 1 probabilities"),
    ],
)
def test_a_reply_that_is_not_the_models_predictions_is_unparseable_output(reply, reply_type, message):
    result = read([record(reply=reply, reply_type=reply_type), record(event_id="ok")])
    problems_only(result, unparseable_output=1)
    assert message in result.examples[0]


def test_a_reply_with_another_row_count_than_its_request_is_a_mismatch():
    reply = {"predictions": [1], "probabilities": [0.5]}
    result = read([record(f"{ROW}\n{ROW2}", reply=reply), record(event_id="ok")])
    problems_only(result, row_count_mismatch=1)
    assert "the request has 2 rows, the reply 1" in result.examples[0]


def test_a_record_without_its_input_or_its_output_is_missing_half():
    no_output, no_input = json.loads(record()), json.loads(record())
    del no_output["captureData"]["endpointOutput"]
    del no_input["captureData"]["endpointInput"]
    result = read([json.dumps(no_output).encode(), json.dumps(no_input).encode(), record(event_id="ok")])
    problems_only(result, missing_half=2)
    assert result.frame["key"].tolist() == ["ok"]


def test_examples_are_capped_and_counts_are_not():
    result = read([b"nope"] * 25)
    problems_only(result, not_json=25)
    assert len(result.examples) == MAX_EXAMPLES and result.frame.empty
    assert list(result.frame.columns)[:5] == ["key", "event_id", "inference_id", "inference_time", "variant"]


def test_a_regression_reply_has_predictions_only():
    reply = {"predictions": [3.5, -1.25]}
    for reply_type in OUTPUT_TYPES:
        result = read([record(f"{ROW}\n{ROW2}", reply=reply, reply_type=reply_type)], problem_type="regression")
        problems_only(result)
        assert "probability" not in result.frame.columns
        assert result.frame["prediction"].tolist() == [3.5, -1.25]


@pytest.mark.parametrize("kind", OUTPUT_TYPES)
@pytest.mark.parametrize(
    "problem_type, result",
    [(BINARY, {"predictions": [1, 0], "probabilities": [0.75, 0.125]}), ("regression", {"predictions": [2.5, 7.0]})],
)
def test_parse_reply_reads_back_every_reply_serve_renders(kind, problem_type, result):
    assert parse_reply(render_reply(result, kind), f"{kind}; charset=utf-8", problem_type) == result


def test_captured_keys_match_read_captures_keys_without_the_schema():
    reply = {"predictions": [1, 0], "probabilities": [0.5, 0.5]}
    lines = [
        record(inference_id="a"),
        record(f"{ROW}\n{ROW2}", reply=reply, event_id="ev-2"),
        b'{"cut',
        record(reply={"error": "x"}, event_id="ev-3"),
    ]
    keys = captured_keys(lines, source="f", problem_type=BINARY)
    assert keys.keys == read(lines).frame["key"].tolist() == ["a", "ev-2:0", "ev-2:1"]
    assert keys.problems["truncated_line"] == 1 and keys.problems["unparseable_output"] == 1


def test_capture_key_time_is_the_hour_the_key_names():
    key = "capture/churn/refit-churn/champion/2026/11/29/07/12-30-123-abc.jsonl"
    assert capture_key_time(key) == datetime(2026, 11, 29, 7, tzinfo=UTC)
    for bad in ("capture/churn/refit-churn/champion/x.jsonl", "capture/churn/e/v/2026/13/29/07/x.jsonl"):
        with pytest.raises(ValueError, match="Data Capture object key|month must be"):
            capture_key_time(bad)


@mock_aws
def test_list_capture_objects_lists_each_variants_hours_from_since_on():
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="data")
    keys = [
        "capture/churn/refit-churn/champion/2026/11/28/23/00-00-000-a.jsonl",
        "capture/churn/refit-churn/champion/2026/11/29/01/00-00-000-b.jsonl",
        "capture/churn/refit-churn/challenger/2026/11/29/00/59-59-999-c.jsonl",
        "capture/churn/refit-churn/challenger/2026/11/29/02/00-00-000-d.jsonl",
        "capture/churn/refit-churn/challenger/notes.txt",
        "capture/churn-eu/refit-churn-eu/champion/2026/11/29/02/00-00-000-e.jsonl",
    ]
    for key in keys:
        s3.put_object(Bucket="data", Key=key, Body=record())
    found = list(list_capture_objects(s3, "data", "capture/churn/", datetime(2026, 11, 29, 0, 30, tzinfo=UTC)))
    assert sorted((o.variant, o.key.rsplit("/", 1)[1], o.hour.hour) for o in found) == [
        ("challenger", "00-00-000-d.jsonl", 2),
        ("challenger", "59-59-999-c.jsonl", 0),
        ("champion", "00-00-000-b.jsonl", 1),
    ]
    assert {o.endpoint for o in found} == {"refit-churn"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small model in refit's artifact layout, loaded by serve's own LoadedModel."""
    import joblib
    from refit_core.artifacts import METADATA_FILE, MODEL_FILE, sha256_of
    from refit_training.search import preprocessor
    from refit_training.serve import LoadedModel
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from scripts.sample_data import churn_batch

    data = churn_batch(300, 3)
    pipeline = Pipeline([("preprocess", preprocessor(FEATURES[4:], NUMERIC)), ("model", LogisticRegression())])
    pipeline.fit(data[FEATURES], data["churned"])
    folder = tmp_path_factory.mktemp("model")
    joblib.dump(pipeline, folder / MODEL_FILE)
    (folder / METADATA_FILE).write_text(json.dumps({"features": FEATURES, "problem_type": BINARY}))
    return LoadedModel(folder, sha256_of(folder / MODEL_FILE))


@pytest.mark.parametrize("reply_type", OUTPUT_TYPES)
@pytest.mark.parametrize(
    "body, content_type",
    [
        (f"{ROW}\n{ROW2}\n", CSV),
        (json.dumps({"instances": [ROW.split(","), ROW2.split(",")]}), JSON),
        ("\n".join(json.dumps(dict(zip(FEATURES, r.split(","), strict=True))) for r in (ROW, ROW2)), JSON_LINES),
        (ROW, "text/CSV; charset=utf-8"),
    ],
)
def test_a_captured_exchange_with_serve_reads_back_as_the_rows_and_scores_serve_had(
    served, body, content_type, reply_type
):
    import io

    from refit_training.serve import handle

    raw = body.encode()
    status, answered_type, reply = handle(
        served, "POST", "/invocations", content_type, reply_type, len(raw), io.BytesIO(raw).read
    )
    assert status == 200 and answered_type == reply_type
    captured = {
        "captureData": {
            "endpointInput": half(raw, content_type, "INPUT", "CSV" if "csv" in content_type.lower() else "JSON"),
            "endpointOutput": half(reply, answered_type, "OUTPUT", "CSV" if answered_type == CSV else "JSON"),
        },
        "eventMetadata": {"eventId": "ev", "inferenceId": "req", "inferenceTime": "2026-11-29T01:02:03Z"},
        "eventVersion": "0",
    }
    result = read_capture(
        [json.dumps(captured).encode()],
        source="f",
        variant="champion",
        features=served.features,
        problem_type=BINARY,
        numeric=served.numeric,
    )
    problems_only(result)
    seen = served.frame(raw, content_type)
    pd.testing.assert_frame_equal(result.frame[FEATURES], seen)
    scores = served.predict(seen)
    assert result.frame["prediction"].tolist() == scores["predictions"]
    assert result.frame["probability"].tolist() == pytest.approx(scores["probabilities"], abs=1e-12)
    assert result.frame["key"].tolist() == (["req"] if len(seen) == 1 else [f"req:{i}" for i in range(len(seen))])


def test_a_request_serve_refuses_is_unparseable_input_in_its_capture(served):
    from refit_training.serve import handle

    body = b"12.0,lots,1,48.0,basic,north"
    status, answered_type, reply = handle(served, "POST", "/invocations", CSV, JSON, len(body), lambda n: body[:n])
    assert status == 400
    captured = {
        "captureData": {
            "endpointInput": half(body, CSV, "INPUT"),
            "endpointOutput": half(reply, answered_type, "OUTPUT"),
        },
        "eventMetadata": {"eventId": "ev", "inferenceTime": "2026-11-29T01:02:03Z"},
    }
    result = read_capture(
        [json.dumps(captured).encode()],
        source="f",
        variant="champion",
        features=served.features,
        problem_type=BINARY,
        numeric=served.numeric,
    )
    problems_only(result, unparseable_input=1)
    assert json.loads(reply)["error"] in result.examples[0]
