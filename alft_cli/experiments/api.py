"""The experiments' face: one function per experiment command (``alft simulate``,
``alft report``), each parsing its list options and calling the module that owns the step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alft_cli.errors import OptionError


@dataclass
class SimulateResult:
    """What simulate did."""

    out: Path
    runs: list[Path]
    finished: int
    report: Path | None
    complete: bool = False


def _int_list(text: str | Sequence[int], name: str, count_ok: bool = False) -> list[int]:
    if not isinstance(text, str):
        return [int(v) for v in text]
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise OptionError(f"{name} {text!r}: give integers separated by commas") from exc
    if count_ok and len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise OptionError(f"{name} {text}: give a positive count or a list")
        return list(range(values[0]))
    return values


def simulate(archive: Path | str, labels: Path | str, out: Path | str, *,
             strategies: str | Sequence[str] = "mge-clustering,random",
             seeds: str | Sequence[int] = "5", scenarios: str | Sequence[int] = "1",
             initial: int = 40, budget: int = 20, max_labels: int = 220,
             val_fraction: float = 0.25, test_fraction: float = 0.25, image_size: int = 256,
             full_supervision: bool = False, candidates: int | None = None,
             device: str = "auto", max_steps: int | None = None,
             max_minutes: float | None = None,
             pretrain: dict[str, Any] | None = None, finetune: dict[str, Any] | None = None,
             write_report: bool = True) -> SimulateResult:
    """Run (or continue) an oracle simulation; see :mod:`alft_cli.experiments.simulate`."""
    from alft_cli.experiments.simulate import SimulationSettings, run_simulation

    names = ([s.strip() for s in strategies.split(",") if s.strip()]
             if isinstance(strategies, str) else list(strategies))
    pre = dict(pretrain or {})
    fin = {k: v for k, v in (finetune or {}).items() if v is not None}
    if pre.get("epochs", 1) != 0:
        fin.pop("backbone", None)  # the pretrained backbone decides
    # Without pretraining, round 0 starts from random weights and later rounds still
    # warm-start from the previous one: the same AL protocol as the pretrained routes.
    settings = SimulationSettings(
        archive=str(Path(archive).resolve()), labels=str(Path(labels).resolve()),
        strategies=names, seeds=_int_list(seeds, "--seeds", count_ok=True),
        scenarios=_int_list(scenarios, "--scenario"), initial=initial, budget=budget,
        max_labels=max_labels, val_fraction=val_fraction, test_fraction=test_fraction,
        image_size=image_size, full_supervision=full_supervision, candidates=candidates,
        pretrain=pre, finetune=fin, device=device)
    result = run_simulation(Path(out), settings, stop_after=max_steps, max_minutes=max_minutes)
    report_dir = None
    if write_report and result.rounds_trained + result.finished > 0:
        try:
            report_dir = report(out).out
        except OptionError:
            report_dir = None
    return SimulateResult(Path(out), result.runs, result.finished, report_dir, result.complete)


def report(source: Path | str | list[Path | str] | list[tuple[str, Path | str]], *,
           out: Path | str | None = None, split: str = "test", baseline: str | None = None,
           seeds: str | None = None, strategies: str | None = None,
           scenarios: str | None = None, stop_kappa: float | None = None,
           stop_window: int | None = None, budgets: str | None = None) -> Any:
    """Write learning curves, tables and plots for one folder, or compare several simulation
    folders (paths, or (name, path) pairs); see :mod:`alft_cli.experiments.report`.
    ``budgets``: e.g. "60-220", the labels averaged in ``paired_mean.csv``."""
    from alft_cli import stopping
    from alft_cli.experiments.budgetmean import parse_budgets
    from alft_cli.experiments.report import make_report

    if split not in ("test", "val"):
        raise OptionError("--split: test or val")
    stop_kappa, stop_window = stopping.rule_options(stop_kappa, stop_window)
    budget_range = parse_budgets(budgets)
    items = source if isinstance(source, list) else [source]
    sources = [(item[0], Path(item[1])) if isinstance(item, tuple) else Path(item)
               for item in items]
    return make_report(sources if len(sources) > 1 else sources[0],
                       Path(out) if out else None, split=split, baseline=baseline,
                       seeds=_int_list(seeds, "--seeds") if seeds else None,
                       strategies=[x.strip() for x in strategies.split(",") if x.strip()]
                       if strategies else None,
                       scenarios=_int_list(scenarios, "--scenario") if scenarios else None,
                       stop_kappa=stop_kappa, stop_window=stop_window, budgets=budget_range)

