"""paired_mean.csv: each seed's paired difference averaged over a range of budgets."""

import csv

import numpy as np
import pytest
from scipy import stats

from alft_cli.errors import OptionError
from alft_cli.experiments.budgetmean import budget_means, parse_budgets
from alft_cli.experiments.report import is_full

METRICS = ("test_micro_f1", "test_macro_f1")


def _rows(rng, seeds=5, budgets=(40, 60, 80, 100, 120)):
    rows = []
    for scenario in (1, 3):
        for strategy in ("random", "auto", "full"):
            for seed in range(seeds):
                for b in budgets:
                    rows.append({"scenario": scenario, "strategy": strategy, "seed": seed,
                                 "labeled": b, "test_micro_f1": float(rng.random()),
                                 "test_macro_f1": float(rng.random())})
    return rows


def _reference(rows, scenario, metric, grid, seeds):
    # Independent: per seed, mean of (auto - random) over the grid; scipy's one-sample t CI.
    val = {(r["strategy"], r["seed"], r["labeled"]): r[metric] for r in rows
           if r["scenario"] == scenario}
    per_seed = [np.mean([val[("auto", s, b)] - val[("random", s, b)] for b in grid])
                for s in seeds]
    ci = stats.ttest_1samp(per_seed, 0.0).confidence_interval(0.95)
    by_budget = {b: np.mean([val[("auto", s, b)] - val[("random", s, b)] for s in seeds])
                 for b in grid}
    worst = min(by_budget, key=by_budget.get)
    return np.mean(per_seed), ci.low, ci.high, by_budget[worst], worst


def test_budget_means_match_an_independent_computation():
    rng = np.random.default_rng(0)
    rows = _rows(rng)
    # Scenario 1, seed 4: the auto run stopped at 100 labels, so it cannot be averaged over
    # 60-120 and is left out there.
    rows = [r for r in rows if not (r["scenario"] == 1 and r["strategy"] == "auto"
                                    and r["seed"] == 4 and r["labeled"] == 120)]
    out = budget_means(rows, METRICS, baseline="random", budgets=(60, 120), skip=is_full)
    assert [(o["scenario"], o["strategy"]) for o in out] == [(1, "auto"), (3, "auto")]
    for o in out:
        seeds = range(4) if o["scenario"] == 1 else range(5)
        assert o["n"] == len(seeds) and o["budgets"] == "60-120" and o["n_budgets"] == 4
        for m in METRICS:
            mean, lo, hi, worst, at = _reference(rows, o["scenario"], m, [60, 80, 100, 120],
                                                 seeds)
            assert o[f"{m}_mean_diff"] == pytest.approx(mean, abs=1e-12)
            assert o[f"{m}_ci_low"] == pytest.approx(lo, abs=1e-9)
            assert o[f"{m}_ci_high"] == pytest.approx(hi, abs=1e-9)
            assert o[f"{m}_worst_diff"] == pytest.approx(worst, abs=1e-12)
            assert o[f"{m}_worst_labels"] == at


def test_default_range_leaves_out_the_shared_initial_set():
    rows = _rows(np.random.default_rng(1), seeds=3)
    out = budget_means(rows, METRICS, skip=is_full)
    assert {o["budgets"] for o in out} == {"60-120"}
    for o in out:
        mean, *_ = _reference(rows, o["scenario"], "test_micro_f1", [60, 80, 100, 120],
                              range(3))
        assert o["test_micro_f1_mean_diff"] == pytest.approx(mean, abs=1e-12)
    # Full supervision is not a strategy to compare; without skip it is one.
    assert {o["strategy"] for o in budget_means(rows, METRICS)} == {"auto", "full"}


def test_identical_strategies_differ_by_exactly_zero():
    rows = _rows(np.random.default_rng(2), seeds=3)
    twin = [dict(r, strategy="twin") for r in rows if r["strategy"] == "random"]
    out = budget_means(rows + twin, METRICS, skip=is_full)
    zero = next(o for o in out if o["strategy"] == "twin" and o["scenario"] == 1)
    assert zero["test_macro_f1_mean_diff"] == 0.0 and zero["test_macro_f1_ci_low"] == 0.0


@pytest.mark.parametrize("text, want", [("60-220", (60, 220)), (" 80 ", (80, 80)),
                                        (None, None), ("", None)])
def test_parse_budgets(text, want):
    assert parse_budgets(text) == want


@pytest.mark.parametrize("text", ["abc", "220-60", "60-", "-5"])
def test_parse_budgets_refuses_what_is_not_a_range(text):
    with pytest.raises(OptionError, match="--budgets"):
        parse_budgets(text)


def test_report_budgets_option_bad_range_is_one_line(cli, tmp_path):
    r = cli("report", tmp_path, "--budgets", "220-60")
    assert r.code != 0
    assert "--budgets '220-60'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_paired_mean_csv_round_trips_through_the_report_writer(tmp_path):
    from alft_cli.experiments.report import _write_paired_csv

    rows = _rows(np.random.default_rng(3), seeds=3)
    out = budget_means(rows, METRICS, skip=is_full)
    _write_paired_csv(out, tmp_path / "paired_mean.csv")
    back = list(csv.DictReader(open(tmp_path / "paired_mean.csv")))
    assert len(back) == 2
    assert float(back[0]["test_micro_f1_mean_diff"]) == pytest.approx(
        out[0]["test_micro_f1_mean_diff"], abs=1e-4)
    assert int(back[0]["test_micro_f1_worst_labels"]) == out[0]["test_micro_f1_worst_labels"]
