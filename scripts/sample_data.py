"""A realistic, generated customer-churn table (no downloads): numeric and categorical features, a binary target,
and a `shift` knob that moves feature distributions and the labelling rule, as a market change would."""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ["basic", "plus", "premium"]
REGIONS = ["north", "south", "east", "west"]


def churn_batch(rows: int, seed: int, shift: float = 0.0, new_market: float = 0.0) -> pd.DataFrame:
    """`new_market`: the share of rows from a region the history never saw ("central"), where customers churn by
    another rule (long-tenure heavy users leave, support calls keep them): a concept change a model trained on the
    history gets wrong, and one that labelled traffic from that region fixes."""
    rng = np.random.default_rng(seed)
    tenure = rng.gamma(2.0, 12.0, rows).round(1)
    monthly = rng.normal(70 + 8 * shift, 20, rows).clip(10, None).round(2)
    support_calls = rng.poisson(1.5 + 1.0 * shift, rows)
    usage = rng.normal(50 - 12 * shift, 15, rows).round(2)
    plan = rng.choice(PLANS, rows, p=[0.5 - 0.2 * shift, 0.3, 0.2 + 0.2 * shift])
    region = rng.choice(REGIONS, rows)
    logit = (
        -0.6
        - 0.05 * tenure
        + 0.03 * (monthly - 70)
        + 0.45 * support_calls
        - 0.02 * (usage - 50) * (1 - 2.5 * shift)  # after the shift, heavy users churn: the rule changed
        + np.where(plan == "premium", -0.5 + 1.5 * shift, 0.0)
        + np.where(region == "south", 0.3, 0.0)
    )
    churned = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    if new_market:
        central = rng.random(rows) < new_market
        region = np.where(central, "central", region)
        other_rule = -0.3 + 0.06 * (tenure - 24) + 0.06 * (usage - 38) - 0.5 * (support_calls - 2.5)
        other = (rng.random(rows) < 1 / (1 + np.exp(-other_rule))).astype(int)
        churned = np.where(central, other, churned)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "support_calls": support_calls,
            "usage_gb": usage,
            "plan": plan,
            "region": region,
            "churned": churned,
        }
    )


def to_csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()
