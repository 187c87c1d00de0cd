"""Learning curves and tables from a simulation (or one project): what `alft report` writes.

- ``rounds.csv``: one row per trained round of every run (metrics, class counts of the
  labeled set);
- ``curves.csv`` / ``curves.md``: test micro/macro F1 vs number of labels, mean +- std over
  seeds, per scenario and strategy;
- ``paired.csv`` (and in ``curves.md``): each strategy minus random on the same seed (same
  split, same initial set), mean and 95% paired-t interval per budget;
- ``paired_mean.csv`` (and in ``curves.md``): the same differences averaged over a range of
  budgets seed by seed, with the interval over seeds and the worst budget
  (:mod:`alft_cli.experiments.budgetmean`);
- ``curves_s<k>.png``, ``paired_s<k>.png``, ``classes_s<k>.png``: the plots (matplotlib);
- ``class_hist.csv``: per-round class histogram of the labeled set (mean over seeds), to show
  which classes a strategy picks;
- ``stop.csv`` (and in ``curves.md``, marked on ``curves_s<k>.png``): where the stop rule
  (stabilizing predictions on the stop set, :mod:`alft_cli.stopping`) would have ended each
  run, F1 there vs at the maximum budget, and the labels saved; ``stability_s<k>.png``: the
  stop-set kappa between consecutive rounds vs labels.

``curves.md`` also names the classes that a seed's evaluation split has no image of: macro F1
counts each as F1 0 (scikit-learn's definition), mAP leaves it out.

Several simulation folders can be compared in one report (e.g. pretraining routes under the
same AL protocol): strategies are then named ``<source>:<strategy>`` and the paired baseline is
the first source's random runs. Pairing across folders holds because a run's split, removals
and initial set depend only on its seed and the protocol, which must agree. An earlier
report's ``rounds.csv`` can stand in for a folder (new runs against archived ones, without
keeping the archived simulations): its strategies keep the names it gave them, and since the
file does not carry its simulation's settings, the report notes that pairing is not checked.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli.atomic import atomic_open, atomic_write_text
from alft_cli.errors import OptionError
from alft_cli.experiments.budgetmean import (
    budget_means,
    interval_cell,
    markdown_lines,
    mean_interval,
)
from alft_cli.experiments.simulate import collect, read_rows_csv, write_rows_csv
from alft_cli.experiments.stops import stop_markdown, stop_table, write_stop_csv
from alft_cli.labels.base import csv_text
from alft_cli.stopping import DEFAULT_KAPPA, DEFAULT_WINDOW

METRICS = ("test_micro_f1", "test_macro_f1")
# What pairs runs of different simulations seed by seed (see simulate._create_run).
PAIRING_SETTINGS = ("archive", "labels", "val_fraction", "test_fraction", "initial")


@dataclass
class ReportResult:
    out: Path
    files: list[Path]
    runs: int
    rows: int


def make_report(source: Path | list[Path] | list[tuple[str, Path]], out: Path | None = None,
                split: str = "test", baseline: str | None = None,
                seeds: list[int] | None = None, strategies: list[str] | None = None,
                scenarios: list[int] | None = None, stop_kappa: float = DEFAULT_KAPPA,
                stop_window: int = DEFAULT_WINDOW,
                budgets: tuple[int, int] | None = None) -> ReportResult:
    """Write curves, tables and plots for a simulation or project folder, or compare several
    simulation folders (a list of paths or of (name, path)). ``seeds`` / ``strategies`` /
    ``scenarios`` keep only those runs (a strategy matches with or without its ``<source>:``
    prefix). ``stop_kappa`` / ``stop_window``: the stop rule replayed on every run.
    ``budgets``: the (low, high) labels averaged in ``paired_mean.csv`` (None: every budget
    after the initial set)."""
    sources = _named_sources(source)
    if out is None and (len(sources) > 1 or sources[0][1].is_file()):
        raise OptionError("comparing several folders or reading a rounds.csv: give --out DIR "
                          "for the report")
    notes = _check_comparable(sources) if len(sources) > 1 else []
    rows: list[dict[str, Any]] = []
    for name, path in sources:
        mine = read_rows_csv(path) if path.is_file() else collect(path)
        if not mine:
            raise OptionError(f"{path}: no trained rounds with metrics yet (run alft simulate "
                              "or alft finetune with gold val/test labels)")
        for r in mine:
            bare = r["strategy"]
            # An archived report's rows keep the <source>: names of the report they come from.
            if len(sources) > 1 and not (path.is_file() and ":" in bare):
                r["strategy"] = f"{name}:{bare}"
            if ((seeds is None or r["seed"] in seeds)
                    and (scenarios is None or r["scenario"] in scenarios)
                    and (strategies is None or bare in strategies
                         or r["strategy"] in strategies)):
                rows.append(r)
    if not rows:
        raise OptionError("no runs left after --seeds/--strategies/--scenario")
    if baseline is None:
        baseline = "random" if len(sources) == 1 else f"{sources[0][0]}:random"
    elif baseline not in {r["strategy"] for r in rows}:
        raise OptionError(f"--baseline {baseline!r}: no such runs; choose from "
                          + ", ".join(sorted({r["strategy"] for r in rows})))
    metrics = tuple(m.replace("test_", f"{split}_") for m in METRICS)
    missing = [m for m in metrics if not any(m in r for r in rows)]
    if missing:
        raise OptionError(f"{sources[0][1]}: no {split} metrics in the stored rounds")
    out = Path(out) if out else sources[0][1] / "report"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    write_rows_csv(rows, out / "rounds.csv")
    files.append(out / "rounds.csv")
    curves = curve_table(rows, metrics)
    paired = paired_differences(rows, metrics, baseline=baseline)
    files += _write_curves_csv(curves, metrics, out / "curves.csv")
    files += _write_paired_csv(paired, out / "paired.csv")
    over_budgets = budget_means(rows, metrics, baseline=baseline, budgets=budgets, skip=is_full)
    files += _write_paired_csv(over_budgets, out / "paired_mean.csv")
    files += _write_class_hist(rows, out / "class_hist.csv")
    stops = stop_table(rows, metrics, stop_kappa, stop_window, is_full)
    files += write_stop_csv(stops, out / "stop.csv")
    files.append(out / "curves.md")
    atomic_write_text(out / "curves.md", markdown(
        curves, paired, metrics, rows, baseline, notes, over_budgets=over_budgets,
        extra=stop_markdown(stops, metrics, stop_kappa, stop_window),
        split_notes=no_positive_notes(rows, split)))
    files += _plots(curves, paired, rows, metrics, out, baseline, stops, stop_kappa)
    runs = len({(r["scenario"], r["strategy"], r["seed"]) for r in rows})
    return ReportResult(out, files, runs, len(rows))


def _named_sources(source: Path | list[Path] | list[tuple[str, Path]]
                   ) -> list[tuple[str, Path]]:
    items = source if isinstance(source, list) else [source]
    named = [(item if isinstance(item, tuple) else (Path(item).name, item)) for item in items]
    named = [(name, Path(path)) for name, path in named]
    if not named:
        raise OptionError("give a simulation or project folder")
    for name, path in named:
        if not path.exists():
            raise OptionError(f"{path} does not exist")
        if path.is_file() and path.suffix != ".csv":
            raise OptionError(f"{path}: give a simulation or project folder, or an earlier "
                              "report's rounds.csv")
        if len(named) > 1 and path.is_dir() and not (path / "simulation.json").exists():
            raise OptionError(f"{path}: not a simulation folder (no simulation.json); only "
                              "simulations and earlier reports' rounds.csv can be compared")
        if not name or ":" in name:
            raise OptionError(f"report name {name!r}: give a name without ':' (NAME=FOLDER)")
    names = [name for name, _ in named]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OptionError(f"two sources are named {twice[0]!r}: name them (NAME=FOLDER)")
    return named


def _check_comparable(sources: list[tuple[str, Path]]) -> list[str]:
    """Refuses folders whose runs are not paired seed by seed; returns notes on the settings
    that do differ (the thing being compared, e.g. the pretraining route)."""
    archived = [f"{name}: rows of an earlier report ({path}); their seed-by-seed pairing with "
                "the other sources is not checked (the file does not carry its settings)"
                for name, path in sources if path.is_file()]
    settings = {name: json.loads((path / "simulation.json").read_text())
                for name, path in sources if path.is_dir()}
    if not settings:
        return archived
    first, ref = next(iter(settings.items()))
    for name, s in settings.items():
        bad = [k for k in PAIRING_SETTINGS if s.get(k) != ref.get(k)]
        if bad:
            raise OptionError(f"{name} and {first} differ in {', '.join(bad)}: their runs are "
                              "not paired, so they cannot be compared in one report")
    varying = ("pretrain", "finetune", "image_size", "budget", "max_labels", "candidates")
    notes = []
    for key in varying:
        values = {name: s.get(key) for name, s in settings.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            notes.append(f"{key}: " + "; ".join(f"{name} = {json.dumps(v, sort_keys=True)}"
                                                 for name, v in values.items()))
    return notes + archived


def is_full(strategy: str) -> bool:
    """Full-supervision runs (``full``, or ``<source>:full`` in a comparison)."""
    return strategy == "full" or strategy.endswith(":full")


def curve_table(rows: list[dict[str, Any]], metrics: tuple[str, ...]
                ) -> dict[tuple[int, str], list[dict[str, Any]]]:
    """(scenario, strategy) -> rows of {labeled, n, <metric>_mean, <metric>_std} by labels."""
    groups: dict[tuple[int, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["strategy"], r["labeled"])].append(r)
    curves: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for (scenario, strategy, labeled), items in sorted(groups.items()):
        point: dict[str, Any] = {"labeled": labeled, "n": len(items)}
        for m in metrics:
            values = np.array([r[m] for r in items if m in r], dtype=float)
            point[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            point[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        curves[(scenario, strategy)].append(point)
    return dict(curves)


def paired_differences(rows: list[dict[str, Any]], metrics: tuple[str, ...],
                       baseline: str = "random") -> list[dict[str, Any]]:
    """Strategy minus baseline on the same (scenario, seed, labels): mean and 95% CI."""
    index = {(r["scenario"], r["strategy"], r["seed"], r["labeled"]): r for r in rows}
    out = []
    keys = sorted({(r["scenario"], r["strategy"], r["labeled"]) for r in rows
                   if r["strategy"] != baseline and not is_full(r["strategy"])})
    for scenario, strategy, labeled in keys:
        item: dict[str, Any] = {"scenario": scenario, "strategy": strategy, "labeled": labeled}
        for m in metrics:
            diffs = np.array([
                r[m] - index[(scenario, baseline, r["seed"], labeled)][m]
                for (s, st, _, lab), r in index.items()
                if s == scenario and st == strategy and lab == labeled and m in r
                and (scenario, baseline, r["seed"], labeled) in index
            ], dtype=float)
            item["n"] = len(diffs)
            item[f"{m}_diff"], item[f"{m}_ci_low"], item[f"{m}_ci_high"] = mean_interval(diffs)
        if item["n"]:
            out.append(item)
    return out


def _fmt(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else (
        "" if isinstance(value, float) else value)


def _write_curves_csv(curves: dict, metrics: tuple[str, ...], path: Path) -> list[Path]:
    header = ["scenario", "strategy", "labeled", "n_seeds"]
    for m in metrics:
        header += [f"{m}_mean", f"{m}_std"]
    body = []
    for (scenario, strategy), points in sorted(curves.items()):
        for p in points:
            body.append([scenario, strategy, p["labeled"], p["n"]] + [
                _fmt(p[f"{m}_{s}"]) for m in metrics for s in ("mean", "std")])
    atomic_write_text(path, csv_text(header, body))
    return [path]


def _write_paired_csv(paired: list[dict[str, Any]], path: Path) -> list[Path]:
    if not paired:
        atomic_write_text(path, "")
        return [path]
    header = list(paired[0])
    atomic_write_text(path, csv_text(header, [[_fmt(p[h]) for h in header] for p in paired]))
    return [path]


def _class_hist(rows: list[dict[str, Any]]) -> dict[tuple[int, str, int], dict[str, float]]:
    groups: dict[tuple[int, str, int], list[dict[str, int]]] = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["strategy"], r["round"])].append(r["class_counts"])
    return {k: {c: float(np.mean([v[c] for v in items])) for c in items[0]}
            for k, items in sorted(groups.items())}


def _write_class_hist(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    hist = _class_hist(rows)
    classes = list(next(iter(hist.values())))
    body = [[s, st, r] + [f"{v[c]:.2f}" for c in classes] for (s, st, r), v in hist.items()]
    atomic_write_text(path, csv_text(["scenario", "strategy", "round", *classes], body))
    return [path]


def no_positive_notes(rows: list[dict[str, Any]], split: str) -> list[str]:
    """One line per seed whose ``split`` has classes without a positive (named)."""
    missing: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        missing[r["seed"]].update((r.get("no_positives") or {}).get(split, []))
    return [f"seed {seed}: the {split} split has no image of {', '.join(sorted(names))}; "
            "macro F1 counts each as F1 0 (scikit-learn's definition), mAP leaves it out"
            for seed, names in sorted(missing.items()) if names]


def markdown(curves: dict, paired: list[dict[str, Any]], metrics: tuple[str, ...],
             rows: list[dict[str, Any]], baseline: str = "random",
             notes: list[str] | None = None, extra: list[str] | None = None,
             split_notes: list[str] | None = None,
             over_budgets: list[dict[str, Any]] | None = None) -> str:
    """Mean +- std per budget (one column per strategy), then the paired differences (per
    budget, then averaged over the budgets), then ``extra`` lines (the stop-rule section)."""
    lines = ["# Learning curves", ""]
    if notes:
        lines += ["Compared simulations differ in:", ""] + [f"- {n}" for n in notes] + [""]
    if split_notes:
        lines += ["Classes without positives:", ""] + [f"- {n}" for n in split_notes] + [""]
    split = metrics[0].split("_")[0]
    for scenario in sorted({s for s, _ in curves}):
        strategies = sorted(st for s, st in curves if s == scenario)
        lines += [f"## Scenario {scenario}: {split} micro F1 / macro F1 (mean +- std over seeds)",
                  ""]
        lines.append("| labels | " + " | ".join(strategies) + " |")
        lines.append("|---|" + "---|" * len(strategies))
        budgets = sorted({p["labeled"] for (s, _), pts in curves.items() if s == scenario
                          for p in pts})
        for b in budgets:
            cells = []
            for st in strategies:
                p = next((p for p in curves[(scenario, st)] if p["labeled"] == b), None)
                cells.append("" if p is None else
                             f"{100 * p[metrics[0] + '_mean']:.2f} +- "
                             f"{100 * p[metrics[0] + '_std']:.2f} / "
                             f"{100 * p[metrics[1] + '_mean']:.2f} +- "
                             f"{100 * p[metrics[1] + '_std']:.2f} (n={p['n']})")
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines.append("")
        mine = [p for p in paired if p["scenario"] == scenario]
        if mine:
            lines += [f"### Scenario {scenario}: strategy minus {baseline}, same seed "
                      "(F1 points, mean [95% paired-t CI])", ""]
            lines.append("| strategy | labels | n | micro F1 diff | macro F1 diff |")
            lines.append("|---|---|---|---|---|")
            for p in mine:
                lines.append(f"| {p['strategy']} | {p['labeled']} | {p['n']} | "
                             + " | ".join(_diff_cell(p, m) for m in metrics) + " |")
            lines.append("")
        lines += markdown_lines(over_budgets or [], metrics, scenario, baseline)
    return "\n".join(lines + list(extra or [])) + "\n"


def _diff_cell(p: dict[str, Any], m: str) -> str:
    return interval_cell(p[f"{m}_diff"], p[f"{m}_ci_low"], p[f"{m}_ci_high"])


def _plots(curves: dict, paired: list[dict[str, Any]], rows: list[dict[str, Any]],
           metrics: tuple[str, ...], out: Path, baseline: str = "random",
           stops: list[dict[str, Any]] | None = None,
           stop_kappa: float = DEFAULT_KAPPA) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for scenario in sorted({s for s, _ in curves}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
        for ax, m in zip(axes, metrics):
            for (s, strategy), points in sorted(curves.items()):
                if s != scenario:
                    continue
                x = np.array([p["labeled"] for p in points])
                y = np.array([p[f"{m}_mean"] for p in points])
                e = np.array([p[f"{m}_std"] for p in points])
                if is_full(strategy):
                    ax.axhline(y[-1], linestyle="--", color="grey",
                               label=f"{strategy.replace('full', 'full supervision')} "
                                     f"({x[-1]} labels)")
                    continue
                (line,) = ax.plot(x, y, marker="o", label=strategy)
                ax.fill_between(x, y - e, y + e, alpha=0.2)
                _mark_stops(ax, stops, scenario, strategy, m, line.get_color())
            ax.set_xlabel("labeled images")
            ax.set_ylabel(m.replace("_", " "))
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle(f"scenario {scenario}: mean +- std over seeds; v = where the stop rule "
                     "ended a run (its F1 there)")
        fig.tight_layout()
        files.append(_save(fig, out / f"curves_s{scenario}.png"))
        plt.close(fig)
        mine = [p for p in paired if p["scenario"] == scenario]
        if mine:
            fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
            for ax, m in zip(axes, metrics):
                for strategy in sorted({p["strategy"] for p in mine}):
                    pts = [p for p in mine if p["strategy"] == strategy]
                    x = np.array([p["labeled"] for p in pts])
                    y = 100 * np.array([p[f"{m}_diff"] for p in pts])
                    lo = 100 * np.array([p[f"{m}_ci_low"] for p in pts])
                    hi = 100 * np.array([p[f"{m}_ci_high"] for p in pts])
                    ax.plot(x, y, marker="o", label=strategy)
                    ax.fill_between(x, lo, hi, alpha=0.2)
                ax.axhline(0, color="black", linewidth=0.8)
                ax.set_xlabel("labeled images")
                ax.set_ylabel(f"{m.replace('_', ' ')} minus {baseline} (points)")
                ax.grid(alpha=0.3)
            axes[0].legend()
            fig.suptitle(f"scenario {scenario}: paired difference vs {baseline}, 95% CI")
            fig.tight_layout()
            files.append(_save(fig, out / f"paired_s{scenario}.png"))
            plt.close(fig)
        files += _class_plot(rows, scenario, out, plt)
        files += _stability_plot(rows, scenario, out, plt, stop_kappa)
    return files


def _mark_stops(ax: Any, stops: list[dict[str, Any]] | None, scenario: int, strategy: str,
                m: str, color: str) -> None:
    """One marker per run of (scenario, strategy) where the stop rule fired."""
    mine = [e for e in stops or [] if e["scenario"] == scenario and e["strategy"] == strategy
            and e["stop_labels"] is not None and e.get(f"{m}_at_stop") is not None]
    if mine:
        ax.scatter([e["stop_labels"] for e in mine], [e[f"{m}_at_stop"] for e in mine],
                   marker="v", s=70, color=color, edgecolors="black", zorder=5)


def _stability_plot(rows: list[dict[str, Any]], scenario: int, out: Path, plt: Any,
                    stop_kappa: float) -> list[Path]:
    """Stop-set kappa between consecutive rounds vs labels: each run thin, the mean thick."""
    mine = [r for r in rows if r["scenario"] == scenario and not is_full(r["strategy"])
            and r.get("stop_kappa") is not None]
    if not mine:
        return []
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, strategy in enumerate(sorted({r["strategy"] for r in mine})):
        color = f"C{i}"
        runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in mine:
            if r["strategy"] == strategy:
                runs[r["seed"]].append(r)
        for items in runs.values():
            items.sort(key=lambda r: r["labeled"])
            ax.plot([r["labeled"] for r in items], [r["stop_kappa"] for r in items],
                    color=color, alpha=0.3, linewidth=1)
        by_labels: dict[int, list[float]] = defaultdict(list)
        for r in mine:
            if r["strategy"] == strategy:
                by_labels[r["labeled"]].append(r["stop_kappa"])
        x = sorted(by_labels)
        ax.plot(x, [float(np.mean(by_labels[b])) for b in x], color=color, marker="o",
                label=strategy)
    ax.axhline(stop_kappa, linestyle="--", color="grey", label=f"threshold {stop_kappa:g}")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("stop-set kappa vs previous round")
    ax.set_title(f"scenario {scenario}: agreement of consecutive rounds (runs thin, mean thick)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = _save(fig, out / f"stability_s{scenario}.png")
    plt.close(fig)
    return [path]


def _class_plot(rows: list[dict[str, Any]], scenario: int, out: Path, plt: Any) -> list[Path]:
    hist = _class_hist([r for r in rows if r["scenario"] == scenario
                        and not is_full(r["strategy"])])
    if not hist:
        return []
    last: dict[str, dict[str, float]] = {}
    for (_, strategy, _round), counts in sorted(hist.items()):
        last[strategy] = counts  # sorted by round: the last one wins
    classes = list(next(iter(last.values())))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes)), 4))
    width = 0.8 / len(last)
    for i, (strategy, counts) in enumerate(sorted(last.items())):
        ax.bar(np.arange(len(classes)) + i * width, [counts[c] for c in classes], width,
               label=strategy)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=45, ha="right")
    ax.set_ylabel("labeled images with the class (mean over seeds)")
    ax.set_title(f"scenario {scenario}: class histogram of the labeled set, last round")
    ax.legend()
    fig.tight_layout()
    path = _save(fig, out / f"classes_s{scenario}.png")
    plt.close(fig)
    return [path]


def _save(fig: Any, path: Path) -> Path:
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    return path
