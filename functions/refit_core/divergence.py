"""How far apart two models' live output distributions are.

`prediction_divergence` compares the scores two variants returned on the same window (a probability for binary
classification, the prediction for regression) with the two-sample Kolmogorov-Smirnov test: its statistic is the
largest gap between the two empirical distribution functions (0 = the same distribution, 1 = disjoint), a distance
with a practical reading, and its p-value says whether the gap is more than sampling noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import ks_2samp


def prediction_divergence(champion: Sequence[float], challenger: Sequence[float]) -> dict[str, Any]:
    """The KS distance between the champion's and the challenger's scores, its two-sided exact-or-asymptotic p-value
    (scipy's choice by sample size), both sample sizes and means. With an empty side there is nothing to compare:
    statistic and p-value are None."""
    a = np.asarray(champion, dtype=float)
    b = np.asarray(challenger, dtype=float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("prediction_divergence: scores must be finite numbers")
    result: dict[str, Any] = {
        "n_champion": int(a.size),
        "n_challenger": int(b.size),
        "mean_champion": round(float(a.mean()), 6) if a.size else None,
        "mean_challenger": round(float(b.mean()), 6) if b.size else None,
        "statistic": None,
        "p_value": None,
    }
    if a.size and b.size:
        test = ks_2samp(a, b)
        result["statistic"] = round(float(test.statistic), 6)
        result["p_value"] = float(test.pvalue)
    return result
