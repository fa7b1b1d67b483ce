"""Ground-truth label files in all three formats, told apart by content; every bad line counted, nothing raised."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest
from refit_core.ground_truth import LABEL_PROBLEMS, Labels, ground_truth_key, read_labels

WHEN = datetime(2026, 11, 29, 1, 30, tzinfo=UTC)
BINARY = "binary_classification"


def labels(text: str | bytes, problem_type: str = BINARY, source: str = "labels") -> Labels:
    data = text.encode() if isinstance(text, str) else text
    return read_labels(data.splitlines(), source=source, problem_type=problem_type, label_time=WHEN)


def merge(key: str, data: object, encoding: str = "CSV") -> str:
    """A line of SageMaker Model Monitor's ground-truth merge format."""
    return json.dumps(
        {
            "groundTruthData": {"data": data, "encoding": encoding},
            "eventMetadata": {"eventId": key},
            "eventVersion": "0",
        }
    )


def problems_only(result: Labels, **expected: int) -> None:
    assert result.problems == {kind: expected.get(kind, 0) for kind in LABEL_PROBLEMS}


def pairs(result: Labels) -> list[tuple[str, float]]:
    return list(zip(result.frame["key"], result.frame["label"], strict=True))


def test_the_merge_format_with_csv_and_json_encodings():
    text = "\n".join(
        [
            merge("a", "1"),
            merge("b", "0\n"),
            merge("c", 1, "JSON"),
            merge("d", "0", "JSON"),
            merge("e", json.dumps({"label": 1}), "JSON"),
            merge("f", {"label": 0}, "JSON"),
            merge("g:1", "true", "JSON"),
        ]
    )
    result = labels(text)
    problems_only(result)
    assert pairs(result) == [("a", 1.0), ("b", 0.0), ("c", 1.0), ("d", 0.0), ("e", 1.0), ("f", 0.0), ("g:1", 1.0)]
    assert result.rows == 7
    assert list(result.frame.columns) == ["key", "label", "label_time"]
    assert result.frame["label_time"].tolist() == [pd.Timestamp(WHEN)] * 7
    assert str(result.frame["label"].dtype) == "float64" and str(result.frame["label_time"].dt.tz) == "UTC"


def test_json_lines_with_inference_id_and_label():
    result = labels('{"inference_id": "a", "label": 1}\n\n{"inference_id": 42, "label": 0.0, "note": "x"}\n')
    problems_only(result)
    assert pairs(result) == [("a", 1.0), ("42", 0.0)]


def test_csv_with_an_inference_id_label_header_in_any_order_with_other_columns():
    result = labels('\ufefflabel,inference_id,comment\n1,a,"x, y"\n0, b ,\n', source="l.csv")
    problems_only(result)
    assert pairs(result) == [("a", 1.0), ("b", 0.0)] and result.rows == 2


def test_a_csv_without_the_header_is_unknown_format_line_by_line():
    result = labels("a,1\nb,0\n", source="l.csv")
    problems_only(result, unknown_format=2)
    assert result.frame.empty
    assert (
        result.examples[0] == "l.csv line 1: the file is neither JSON Lines nor a CSV with an inference_id,label header"
    )


def test_regression_labels_are_finite_numbers():
    text = '{"inference_id": "a", "label": 3.25}\n{"inference_id": "b", "label": "-1e3"}\n'
    text += '{"inference_id": "c", "label": "NaN"}\n{"inference_id": "d", "label": true}\n'
    text += '{"inference_id": "e", "label": "inf"}\n'
    result = labels(text, "regression")
    problems_only(result, wrong_type=3)
    assert pairs(result) == [("a", 3.25), ("b", -1000.0)]


@pytest.mark.parametrize("value", ["2", 0.5, "yes", None, [1], "", -1])
def test_a_binary_label_that_is_not_0_or_1_is_the_wrong_type(value):
    result = labels(json.dumps({"inference_id": "a", "label": value}) + '\n{"inference_id": "b", "label": 1}')
    problems_only(result, wrong_type=1)
    assert pairs(result) == [("b", 1.0)]
    assert result.examples[0].startswith("labels line 1: label ")


def test_wrong_types_in_the_merge_and_csv_formats():
    text = merge("a", "yes") + "\n" + merge("b", {"value": 1}, "JSON") + "\n" + merge("c", "1", "BASE64")
    problems_only(labels(text), wrong_type=2, unknown_format=1)
    problems_only(labels("inference_id,label\na,maybe\nb\n"), wrong_type=1, unknown_format=1)


def test_missing_ids():
    text = "\n".join(
        [
            json.dumps({"label": 1}),
            json.dumps({"inference_id": "", "label": 1}),
            json.dumps({"inference_id": 1.5, "label": 1}),
            json.dumps({"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {}}),
        ]
    )
    problems_only(labels(text), missing_id=4)
    problems_only(labels("inference_id,label\n,1\n"), missing_id=1)


def test_duplicates_and_conflicts_keep_the_first_label():
    text = "inference_id,label\na,1\nb,0\na,1\na,0\nb,0\n"
    result = labels(text, source="l.csv")
    problems_only(result, duplicate=2, conflict=1)
    assert pairs(result) == [("a", 1.0), ("b", 0.0)]
    assert result.examples == [
        "l.csv line 4: 'a' labelled again (1)",
        "l.csv line 5: 'a' labelled 0, first 1 (kept)",
        "l.csv line 6: 'b' labelled again (0)",
    ]


def test_the_same_key_across_formats_in_one_json_file_is_one_label():
    result = labels(merge("a", "1") + "\n" + json.dumps({"inference_id": "a", "label": 1}))
    problems_only(result, duplicate=1)


def test_lines_that_are_not_json_or_of_no_known_shape():
    text = '{"inference_id": "a", "label": 1}\nb,1\n[1]\n{"id": "c", "y": 1}\n{"inference_id": "d", "lab\n\xff\n'
    result = labels(text.encode("latin-1"))
    problems_only(result, not_json=4, unknown_format=1)
    assert pairs(result) == [("a", 1.0)] and result.rows == 6


def test_an_empty_file_has_no_labels_and_no_problems():
    result = labels("")
    problems_only(result)
    assert result.frame.empty and result.rows == 0 and list(result.frame.columns) == ["key", "label", "label_time"]


def test_a_naive_label_time_is_utc_and_an_aware_one_is_converted():
    naive = read_labels([b'{"inference_id": "a", "label": 1}'], source="x", problem_type=BINARY, label_time=WHEN)
    assert naive.frame["label_time"].iloc[0] == pd.Timestamp("2026-11-29T01:30:00Z")
    aware = read_labels(
        [b'{"inference_id": "a", "label": 1}'],
        source="x",
        problem_type=BINARY,
        label_time=datetime(2026, 11, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    assert aware.frame["label_time"].iloc[0] == pd.Timestamp("2026-11-29T01:30:00Z")


def test_ground_truth_key_is_the_utc_hour_folder_of_the_models_prefix():
    now = datetime(2026, 11, 29, 3, 5, tzinfo=timezone(timedelta(hours=2)))
    assert ground_truth_key("ground-truth/churn/", "labels.csv", now) == "ground-truth/churn/2026/11/29/01/labels.csv"
    assert ground_truth_key("ground-truth/churn", "l.jsonl", datetime(2026, 1, 2, 3)) == (
        "ground-truth/churn/2026/01/02/03/l.jsonl"
    )
    for bad in ("", "a/b.csv", ".."):
        with pytest.raises(ValueError, match="plain file name"):
            ground_truth_key("ground-truth/churn/", bad, now)
