"""A strategy minus the baseline averaged over a range of budgets, seed by seed: one number per
pair of runs, with a 95% paired-t interval over the seeds (``paired_mean.csv``).

Why next to the per-budget differences (``paired.csv``): at small budgets one run's F1 moves
by up to 10 points from one round to the next (docs/RESULTS.md section 7), so per-budget
intervals over a handful of seeds are several points wide and a single budget's mean can
swing either way by chance. Averaging each seed's paired differences over the budgets first
(the area between the two learning curves, divided by the number of budgets) keeps what
differs between seeds and averages out what differs between neighbouring rounds. The worst
budget's mean difference is reported beside it, so a dip is not hidden by the average.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alft_cli.errors import OptionError


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval of paired differences (NaN bounds below two values, NaN mean
    for none): the interval of ``paired.csv`` and of ``paired_mean.csv``."""
    from scipy import stats

    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half


def interval_cell(mean: float, low: float, high: float) -> str:
    """``+1.23 [-0.45, +2.91]`` in F1 points (the mean alone without an interval)."""
    if math.isnan(low):
        return f"{100 * mean:+.2f}"
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def parse_budgets(text: str | None) -> tuple[int, int] | None:
    """``"60-220"`` -> (60, 220); None -> None (every budget after the initial set)."""
    if text is None or not text.strip():
        return None
    lo, sep, hi = text.strip().partition("-")
    try:
        bounds = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        raise OptionError(f"--budgets {text!r}: give a range of labels, e.g. 60-220") from None
    if bounds[0] < 0 or bounds[1] < bounds[0]:
        raise OptionError(f"--budgets {text!r}: give a range of labels, e.g. 60-220")
    return bounds


def budget_means(rows: list[dict[str, Any]], metrics: tuple[str, ...],
                 baseline: str = "random", budgets: tuple[int, int] | None = None,
                 skip: Any = None) -> list[dict[str, Any]]:
    """Per (scenario, strategy other than ``baseline``): each seed's mean over the budgets of
    (strategy minus baseline), then the mean and 95% paired-t interval of those over seeds.

    Args:
        rows: trained rounds ({scenario, strategy, seed, labeled, <metric>...}).
        metrics: the metric columns to compare.
        baseline: the strategy subtracted.
        budgets: (low, high) labels, inclusive; None: every budget above the smallest one
            (the shared initial set, where the difference is 0 by construction).
        skip: predicate on a strategy name; true ones are left out (full supervision).

    Returns:
        One dict per (scenario, strategy): the budgets averaged, the number of seeds whose
        two runs reached every one of them (others are left out), and per metric the mean
        difference, its interval and the budget with the lowest mean difference.
    """
    index = {(r["scenario"], r["strategy"], r["seed"], r["labeled"]): r for r in rows}
    out = []
    pairs = sorted({(r["scenario"], r["strategy"]) for r in rows
                    if r["strategy"] != baseline and not (skip and skip(r["strategy"]))})
    for scenario, strategy in pairs:
        mine = [r for r in rows if r["scenario"] == scenario and r["strategy"] == strategy]
        labeled = sorted({r["labeled"] for r in mine})
        lo, hi = budgets if budgets is not None else (labeled[0] + 1, labeled[-1])
        grid = [b for b in labeled if lo <= b <= hi]
        seeds = sorted(s for s in {r["seed"] for r in mine}
                       if all((scenario, st, s, b) in index
                              for b in grid for st in (strategy, baseline)))
        if not grid or not seeds:
            continue
        item: dict[str, Any] = {"scenario": scenario, "strategy": strategy,
                                "budgets": f"{grid[0]}-{grid[-1]}", "n_budgets": len(grid),
                                "n": len(seeds)}
        for m in metrics:
            # diffs[seed, budget]
            diffs = np.array([[index[(scenario, strategy, s, b)][m]
                               - index[(scenario, baseline, s, b)][m] for b in grid]
                              for s in seeds], dtype=float)
            mean, low, high = mean_interval(diffs.mean(axis=1))
            by_budget = diffs.mean(axis=0)
            worst = int(np.argmin(by_budget))
            item[f"{m}_mean_diff"] = mean
            item[f"{m}_ci_low"] = low
            item[f"{m}_ci_high"] = high
            item[f"{m}_worst_diff"] = float(by_budget[worst])
            item[f"{m}_worst_labels"] = grid[worst]
        out.append(item)
    return out


def markdown_lines(summary: list[dict[str, Any]], metrics: tuple[str, ...], scenario: int,
                   baseline: str) -> list[str]:
    """The ``curves.md`` table of one scenario (F1 points)."""
    mine = [s for s in summary if s["scenario"] == scenario]
    if not mine:
        return []
    lines = [f"### Scenario {scenario}: strategy minus {baseline}, each seed's mean over the "
             "budgets (F1 points, mean [95% paired-t CI]; worst budget's mean difference)", "",
             "| strategy | labels | n | micro F1 diff | macro F1 diff | worst micro (labels) "
             "| worst macro (labels) |", "|---|---|---|---|---|---|---|"]
    for s in mine:
        cells = [interval_cell(s[f"{m}_mean_diff"], s[f"{m}_ci_low"], s[f"{m}_ci_high"])
                 for m in metrics[:2]]
        worst = [f"{100 * s[f'{m}_worst_diff']:+.2f} ({s[f'{m}_worst_labels']})"
                 for m in metrics[:2]]
        lines.append(f"| {s['strategy']} | {s['budgets']} | {s['n']} | " + " | ".join(cells)
                     + " | " + " | ".join(worst) + " |")
    return lines + [""]
