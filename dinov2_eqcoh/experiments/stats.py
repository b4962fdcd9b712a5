# SPDX-License-Identifier: Apache-2.0
"""Statistics the experiments share: the 95 % t-interval of a mean over training seeds, and metric lookup.

A claim about the method holds over training seeds, paired by seed, with a 95 % interval (`interval` of the
per-seed differences), or is called a single run.
"""

from __future__ import annotations

import math

# two-sided 95 % Student-t quantiles t_{0.975, df}
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile (tabulated; the next smaller tabulated df, i.e. conservative)."""
    if df <= 0:
        return math.nan
    if df > 30:
        return 1.960 if df > 120 else 2.0
    return _T975[max(k for k in _T975 if k <= df)]


def interval(values: list[float]) -> dict:
    """Mean, sample standard deviation and the 95 % t-interval of the mean of `values` (n ≥ 2 for an interval)."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "half_width": half}


def get_metric(score: dict, key: str):
    value = score
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
