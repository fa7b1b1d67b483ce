"""Active learning: which captured requests are most worth a human label, and the SageMaker Ground Truth input
manifest that sends them to labelling.

Selection (`select_for_labeling`) is uncertainty sampling with a diversity rule. Uncertainty is the binary
classifier's margin |p - 0.5| (small = unsure) or the entropy of p; for one probability both rank the rows the same
way (and so choose the same candidate pool), but they weight the clustering differently. Taking only the most
uncertain rows spends the whole budget on one unsure region when the model is unsure there, so: a candidate pool of
the `pool_factor` x budget most uncertain rows is clustered (MiniBatchKMeans, seeded, on standardized numeric +
one-hot categorical features, each row weighted by its uncertainty), and the clusters give up their most uncertain
rows in turns: each cluster its most uncertain row, then each its second, ... until the budget is spent. With as
many clusters as the budget (up to `max_clusters`), that is the most uncertain row of each cluster. (Zhdanov,
"Diverse mini-batch active learning", 2019, weights k-means the same way.) Optionally a share of the budget
(`explore`) goes to rows drawn at random, the one way to find a region where the model is sure and wrong.

Regression models have no probabilities: the monitor does not call this for them, and `probabilities=None` selects
nothing (an empty array).

The manifest (`manifest_lines`) follows Ground Truth's input-manifest rules: UTF-8 JSON Lines, each line a JSON
object with a `source-ref` naming the S3 object to label (here the captured request row as JSON), at most 100,000
characters a line and 20,000 an attribute, no attribute name starting with `$`. The monitor shares one daily budget
across its hourly runs (`remaining_budget`) and rewrites the day's manifest `labeling/<model>/<date>.manifest` with
its old lines plus the new ones (`append_manifest`); labels come back through the ground-truth path, keyed by
`inference-id`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

STRATEGIES = ("margin", "entropy")
MAX_LINE_CHARS = 100_000  # Ground Truth: one manifest line (JSON object) at most 100,000 characters
MAX_ATTRIBUTE_CHARS = 20_000  # Ground Truth: one attribute at most 20,000 characters
MAX_S3_KEY_BYTES = 1024
ITEM_FIELDS = {  # item key -> manifest attribute
    "inference_id": "inference-id",
    "probability": "probability",
    "model_version": "model-version",
    "variant": "variant",
    "inference_time": "inference-time",
}
_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]")


class ActiveLearningError(ValueError):
    """Input that selection or the manifest cannot use; the message names what and where."""


def uncertainty(probabilities: np.ndarray, strategy: str = "margin") -> np.ndarray:
    """How unsure a binary classifier is of each row, higher = less sure: 0.5 - |p - 0.5| ("margin", in [0, 0.5])
    or the entropy of p in bits ("entropy", in [0, 1]). NaN stays NaN."""
    if strategy not in STRATEGIES:
        raise ActiveLearningError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    p = np.asarray(probabilities, dtype=float)
    if strategy == "margin":
        return 0.5 - np.abs(p - 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(p * np.log2(p)) - (1 - p) * np.log2(1 - p)
    return np.where((p == 0) | (p == 1), 0.0, terms)


def encode_features(features: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    """Rows as vectors for clustering: numeric columns standardized (missing -> the column's median, a constant
    column -> 0), categorical columns one-hot (missing is a category of its own)."""
    parts: list[np.ndarray] = []
    for name in numeric:
        values = pd.to_numeric(features[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        finite = np.isfinite(values)
        fill = float(np.median(values[finite])) if finite.any() else 0.0
        values = np.where(finite, values, fill)
        std = float(values.std())
        parts.append(((values - values.mean()) / std if std > 0 else np.zeros_like(values))[:, None])
    for name in categorical:
        labels = features[name].astype(object).where(features[name].notna(), "\x00missing").astype(str)
        parts.append(pd.get_dummies(labels).to_numpy(dtype=float))
    if not parts:
        return np.zeros((len(features), 1))
    return np.hstack(parts)


def select_for_labeling(
    features: pd.DataFrame,
    probabilities: np.ndarray | None,
    budget: int,
    *,
    numeric: list[str],
    categorical: list[str],
    seed: int = 0,
    strategy: str = "margin",
    pool_factor: int = 5,
    max_clusters: int = 500,
    explore: float = 0.0,
) -> np.ndarray:
    """Positions (0-based, as `features.iloc` takes them) of at most `budget` rows most worth labelling, most
    uncertain first; the same inputs and seed give the same rows. `probabilities` are the model's P(positive class)
    per row; rows whose probability is NaN are never chosen. An empty frame, a budget of 0 or `probabilities=None`
    (a regression model) selects nothing. See the module docstring for the rule.

    `explore` (0 to 1) is the share of the budget drawn uniformly at random (seeded) from the rows with a
    probability that the uncertainty rule did not take; those come after the uncertain ones. Uncertainty cannot see
    a region where the model is sure and wrong; random picks can (see the README's active-learning benchmark)."""
    if budget < 0:
        raise ActiveLearningError(f"budget must be >= 0, got {budget}")
    if not 0.0 <= explore <= 1.0:
        raise ActiveLearningError(f"explore must be between 0 and 1, got {explore}")
    if pool_factor < 1 or max_clusters < 1:
        raise ActiveLearningError(f"pool_factor and max_clusters must be >= 1, got {pool_factor}, {max_clusters}")
    if strategy not in STRATEGIES:
        raise ActiveLearningError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    missing = [name for name in [*numeric, *categorical] if name not in features.columns]
    if missing:
        raise ActiveLearningError(f"features lack the column(s) {', '.join(map(repr, missing))}")
    empty = np.empty(0, dtype=np.intp)
    if probabilities is None or budget == 0 or len(features) == 0:
        return empty
    p = np.asarray(probabilities, dtype=float)
    if p.ndim != 1 or len(p) != len(features):
        raise ActiveLearningError(
            f"probabilities must be one value per row ({len(features)}), got an array of shape {p.shape}"
        )
    bad = np.flatnonzero(np.isfinite(p) & ((p < 0) | (p > 1)))
    if bad.size:
        raise ActiveLearningError(f"probability out of [0, 1] at row {int(bad[0])}: {p[bad[0]]}")
    score = uncertainty(p, strategy)
    usable = np.flatnonzero(np.isfinite(score))
    explored = min(round(budget * explore), len(usable))
    uncertain = _most_uncertain_diverse(
        features, score, usable, budget - explored, numeric, categorical, seed, pool_factor, max_clusters
    )
    if explored == 0:
        return uncertain
    rest = np.setdiff1d(usable, uncertain, assume_unique=True)
    random_picks = np.random.default_rng(seed).choice(rest, size=min(explored, len(rest)), replace=False)
    return np.concatenate([uncertain, np.sort(random_picks)]).astype(np.intp)


def _most_uncertain_diverse(
    features: pd.DataFrame,
    score: np.ndarray,
    usable: np.ndarray,
    budget: int,
    numeric: list[str],
    categorical: list[str],
    seed: int,
    pool_factor: int,
    max_clusters: int,
) -> np.ndarray:
    if budget == 0:
        return np.empty(0, dtype=np.intp)
    # Most uncertain first; ties keep the rows' order, so the ranking is deterministic.
    ranked = usable[np.argsort(-score[usable], kind="stable")]
    pool = ranked[: budget * pool_factor]
    if len(pool) <= budget:
        return pool.astype(np.intp)
    clusters = min(budget, max_clusters)
    vectors = encode_features(features.iloc[pool], numeric, categorical)
    labels = _cluster(vectors, clusters, weights=score[pool], seed=seed)
    # Turns: in round r every cluster offers its r-th most uncertain row; pool is already in uncertainty order.
    round_of = np.zeros(len(pool), dtype=np.intp)
    seen: dict[int, int] = {}
    for position, label in enumerate(labels):
        round_of[position] = seen.get(int(label), 0)
        seen[int(label)] = round_of[position] + 1
    order = np.lexsort((np.arange(len(pool)), round_of))  # by round, then by uncertainty rank
    return pool[np.sort(order[:budget])].astype(np.intp)  # the chosen rows, most uncertain first


def _cluster(vectors: np.ndarray, clusters: int, *, weights: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    distinct = len(np.unique(vectors, axis=0))
    if distinct <= 1:
        return np.zeros(len(vectors), dtype=np.intp)
    model = MiniBatchKMeans(
        n_clusters=min(clusters, distinct),
        random_state=seed,
        n_init=3,
        batch_size=max(1024, 3 * clusters),
    )
    # A weight of 0 (p exactly 0 or 1) would leave a row outside every centroid's pull; a floor keeps it counted.
    return model.fit_predict(vectors, sample_weight=np.maximum(weights, 1e-6))


def payload_key(labeling_prefix: str, date: str, inference_id: str) -> str:
    """S3 key of one item's payload: `<labeling_prefix>items/<date>/<name>.json`. `name` is the inference id when
    it is made of letters, digits, '.', '_' and '-' only; otherwise those characters with the rest as '_', plus a
    hash of the id, so two ids never share a key (the id itself is in the payload and the manifest line)."""
    name = inference_id
    if not all(_SAFE_KEY.fullmatch(char) for char in inference_id) or inference_id in {".", ".."}:
        digest = hashlib.sha256(inference_id.encode()).hexdigest()[:16]
        name = "".join(char if _SAFE_KEY.fullmatch(char) else "_" for char in inference_id)[:200] + "-" + digest
    return f"{labeling_prefix}items/{date}/{name}.json"


def _json_value(value: Any) -> Any:
    """A feature value as JSON: numpy scalars as Python ones, missing values (NaN, None, NA, NaT) as null, times
    in ISO 8601, anything else that JSON has no type for as its text."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp | datetime):
        return value.isoformat()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def labeling_items(
    features: pd.DataFrame,
    chosen: np.ndarray,
    *,
    inference_ids: list[str] | np.ndarray | pd.Series,
    probabilities: np.ndarray,
    model_version: str | None = None,
    variant: str | None = None,
) -> list[dict[str, Any]]:
    """The items `manifest_lines` takes, for the rows at positions `chosen` (as `select_for_labeling` returns them):
    each row's features (all of `features`' columns), its join key and its probability."""
    if not len(inference_ids) == len(probabilities) == len(features):
        raise ActiveLearningError(
            f"features ({len(features)} rows), inference_ids ({len(inference_ids)}) and probabilities "
            f"({len(probabilities)}) must have one entry per row"
        )
    ids = np.asarray(inference_ids, dtype=object)
    rows = features.iloc[np.asarray(chosen, dtype=np.intp)].to_dict(orient="records")
    items = []
    for position, row in zip(chosen, rows, strict=True):
        item: dict[str, Any] = {
            "inference_id": str(ids[position]),
            "features": row,
            "probability": float(probabilities[position]),
        }
        if model_version is not None:
            item["model_version"] = model_version
        if variant is not None:
            item["variant"] = variant
        items.append(item)
    return items


def manifest_lines(
    items: list[dict[str, Any]], bucket: str, labeling_prefix: str, date: str
) -> tuple[list[tuple[str, bytes]], bytes]:
    """The payload objects and the Ground Truth input-manifest lines for `items`, in their order.

    Each item is a dict with `inference_id` (the join key labels come back with) and `features` (the captured
    request row, column -> value), and optionally `probability`, `model_version`, `variant`, `inference_time`.
    Returns ([(key, body)], manifest): each body is the JSON `{"inference_id": ..., "features": {...}}` to put at
    `s3://<bucket>/<key>` (key `<labeling_prefix>items/<date>/<id>.json`, see `payload_key`), and the manifest is
    one line per item, `{"source-ref": "s3://<bucket>/<key>", "inference-id": ..., "probability": ...,
    "model-version": ..., ...}` (absent fields omitted), each line ending in a newline."""
    if not bucket or "/" in bucket:
        raise ActiveLearningError(f"bucket must be a bucket name, got {bucket!r}")
    if labeling_prefix and not labeling_prefix.endswith("/"):
        raise ActiveLearningError(f"labeling_prefix must end with '/', got {labeling_prefix!r}")
    try:
        datetime.strptime(date, "%Y-%m-%d")
    except ValueError:
        raise ActiveLearningError(f"date must be YYYY-MM-DD, got {date!r}") from None
    payloads: list[tuple[str, bytes]] = []
    lines: list[str] = []
    keys: set[str] = set()
    for index, item in enumerate(items):
        where = f"item {index}"
        unknown = set(item) - set(ITEM_FIELDS) - {"features"}
        if unknown:
            raise ActiveLearningError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
        inference_id = item.get("inference_id")
        if not isinstance(inference_id, str) or not inference_id:
            raise ActiveLearningError(f"{where}: inference_id must be a non-empty string, got {inference_id!r}")
        features = item.get("features")
        if not isinstance(features, dict):
            raise ActiveLearningError(f"{where} ({inference_id}): features must be a dict of column -> value")
        key = payload_key(labeling_prefix, date, inference_id)
        if key in keys:
            raise ActiveLearningError(f"{where}: inference_id {inference_id!r} appears twice")
        if len(key.encode()) > MAX_S3_KEY_BYTES:
            raise ActiveLearningError(f"{where}: S3 key longer than {MAX_S3_KEY_BYTES} bytes: {key[:80]}...")
        keys.add(key)
        body = {"inference_id": inference_id, "features": {str(k): _json_value(v) for k, v in features.items()}}
        payloads.append((key, json.dumps(body, allow_nan=False, separators=(",", ":")).encode()))
        line: dict[str, Any] = {"source-ref": f"s3://{bucket}/{key}"}
        for field, attribute in ITEM_FIELDS.items():
            if item.get(field) is not None:
                line[attribute] = _json_value(item[field])
        for attribute, value in line.items():
            if len(json.dumps(value)) > MAX_ATTRIBUTE_CHARS:
                raise ActiveLearningError(f"{where}: attribute {attribute} exceeds {MAX_ATTRIBUTE_CHARS} characters")
        text = json.dumps(line, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        if len(text) > MAX_LINE_CHARS:
            raise ActiveLearningError(f"{where}: manifest line exceeds {MAX_LINE_CHARS} characters")
        lines.append(text + "\n")
    return payloads, "".join(lines).encode()


def manifest_entries(manifest: bytes | None) -> list[dict[str, Any]]:
    """The JSON objects of a manifest's non-blank lines; a line that is not a JSON object is an error naming it."""
    entries: list[dict[str, Any]] = []
    for number, line in enumerate((manifest or b"").decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ActiveLearningError(f"manifest line {number} is not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise ActiveLearningError(f"manifest line {number} is not a JSON object")
        entries.append(entry)
    return entries


def selected_ids(manifest: bytes | None) -> set[str]:
    """The inference ids a manifest already sent to labelling, so a later run does not pick them again."""
    return {str(entry["inference-id"]) for entry in manifest_entries(manifest) if "inference-id" in entry}


def remaining_budget(existing_manifest: bytes | None, budget_per_day: int) -> int:
    """Labels still to ask for today: the daily budget less the items the day's manifest (if any) already holds
    (its non-blank lines), never below 0."""
    if budget_per_day < 0:
        raise ActiveLearningError(f"budget_per_day must be >= 0, got {budget_per_day}")
    used = sum(1 for line in (existing_manifest or b"").splitlines() if line.strip())
    return max(0, budget_per_day - used)


def append_manifest(existing_manifest: bytes | None, new_lines: bytes) -> bytes:
    """The day's manifest rewritten with its old lines followed by the new ones (a missing final newline of the old
    part is added, so two lines never merge)."""
    old = existing_manifest or b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    return old + new_lines
