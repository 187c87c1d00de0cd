"""Where the stop rule would have ended each simulated run, and what stopping there cost.

For every run (scenario, strategy, seed) the stored stop-set agreements of its trained rounds
(:mod:`alft_cli.stopping`) are replayed through the same rule ``alft status`` applies
(:func:`alft_cli.stopping.stop_point`): the first round whose window of consecutive kappas
averages at least the threshold. The report then compares the F1 at that round with the F1 at
the run's maximum budget, and counts the labels the rule would have saved.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.atomic import atomic_write_text
from alft_cli.labels.base import csv_text
from alft_cli.stopping import stop_point


def stop_table(rows: list[dict[str, Any]], metrics: tuple[str, ...], threshold: float,
               window: int, is_full: Any) -> list[dict[str, Any]]:
    """One entry per run: where the rule stops (None if never) and F1 there vs at the end.

    Args:
        rows: collected rounds (:func:`alft_cli.experiments.simulate.collect`).
        metrics: the (micro, macro) F1 columns to compare.
        threshold: kappa threshold of the rule.
        window: rounds the rule averages over.
        is_full: predicate on a strategy name for full-supervision runs (left out: one round).
    """
    runs: dict[tuple[int, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if not is_full(r["strategy"]):
            runs[(r["scenario"], r["strategy"], r["seed"])].append(r)
    table = []
    for (scenario, strategy, seed), mine in sorted(runs.items()):
        mine = sorted(mine, key=lambda r: r["round"])
        at = stop_point([r.get("stop_kappa") for r in mine], threshold, window)
        last = mine[-1]
        entry: dict[str, Any] = {
            "scenario": scenario, "strategy": strategy, "seed": seed,
            "stop_round": None if at is None else mine[at]["round"],
            "stop_labels": None if at is None else mine[at]["labeled"],
            "max_labels": last["labeled"],
            "labels_saved": 0 if at is None else last["labeled"] - mine[at]["labeled"],
            "last_kappa": last.get("stop_kappa"),
        }
        for m in metrics:
            entry[f"{m}_at_stop"] = None if at is None else mine[at].get(m)
            entry[f"{m}_at_max"] = last.get(m)
        table.append(entry)
    return table


def write_stop_csv(table: list[dict[str, Any]], path: Path) -> list[Path]:
    """``stop.csv``: the per-run table."""
    if not table:
        atomic_write_text(path, "")
        return [path]
    header = list(table[0])
    body = [[_cell(e[h]) for h in header] for e in table]
    atomic_write_text(path, csv_text(header, body))
    return [path]


def stop_markdown(table: list[dict[str, Any]], metrics: tuple[str, ...], threshold: float,
                  window: int) -> list[str]:
    """The Markdown section: per run, then the mean per (scenario, strategy)."""
    if not table:
        return []
    micro, macro = metrics
    lines = [f"## When to stop: stabilizing predictions (mean stop-set kappa >= {threshold:g} "
             f"over {window} consecutive rounds)", "",
             "Per run: where the rule would have stopped, F1 there and at the run's maximum "
             "budget (points), and the labels it would have saved. `never` = the rule did not "
             "fire within the budget (last kappa shown).", "",
             "| scenario | strategy | seed | stop at labels | micro F1 at stop / at max | "
             "macro F1 at stop / at max | labels saved | last kappa |",
             "|---|---|---|---|---|---|---|---|"]
    for e in table:
        stop = "never" if e["stop_labels"] is None else str(e["stop_labels"])
        lines.append(
            f"| {e['scenario']} | {e['strategy']} | {e['seed']} | {stop} | "
            f"{_pts(e[micro + '_at_stop'])} / {_pts(e[micro + '_at_max'])} | "
            f"{_pts(e[macro + '_at_stop'])} / {_pts(e[macro + '_at_max'])} | "
            f"{e['labels_saved']} | {_kappa(e['last_kappa'])} |")
    lines += ["", "Mean per strategy (F1 change = at stop minus at max, over the runs that "
              "stopped):", "",
              "| scenario | strategy | runs stopped | mean labels saved | micro F1 change | "
              "macro F1 change |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for e in table:
        groups[(e["scenario"], e["strategy"])].append(e)
    for (scenario, strategy), items in sorted(groups.items()):
        stopped = [e for e in items if e["stop_labels"] is not None]
        saved = float(np.mean([e["labels_saved"] for e in items]))
        lines.append(f"| {scenario} | {strategy} | {len(stopped)}/{len(items)} | {saved:.1f} | "
                     f"{_mean_change(stopped, micro)} | {_mean_change(stopped, macro)} |")
    return lines + [""]


def _mean_change(stopped: list[dict[str, Any]], m: str) -> str:
    diffs = [e[f"{m}_at_stop"] - e[f"{m}_at_max"] for e in stopped
             if e[f"{m}_at_stop"] is not None and e[f"{m}_at_max"] is not None]
    return f"{100 * float(np.mean(diffs)):+.2f}" if diffs else "-"


def _pts(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:.2f}"


def _kappa(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else value
