"""Oracle-driven active-learning experiments: AL strategies vs random on an archive with gold
labels (Moellenbrok & Demir, IGARSS 2023, section 3).

Every run is a real project driven through the real commands (``api.init_pool``,
``api.query``, ``api.import_labels``, ``api.finetune``); the oracle only answers the images a
query asked for, by writing the answer file a person would and importing it. Pretraining runs
once, in ``OUT/base``, and every run adopts that backbone.

Layout::

    OUT/simulation.json                  the settings (a resumed simulation must match them)
    OUT/base/                            index + decode cache + the one BYOL backbone
    OUT/runs/s<scenario>/<strategy>/seed<k>/   one project per run ("full" = full supervision)

The loop is driven by each run's stored state (pending query -> answer it; untrained round ->
fine-tune; else query), so an interrupted simulation continues where it stopped.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alft_cli import api
from alft_cli.atomic import atomic_write_text
from alft_cli.config import FinetuneConfig
from alft_cli.errors import OptionError
from alft_cli.labels import header_classes, read_label_file, write_labels_csv
from alft_cli.progress import reporter

# Paper, section 3: minority classes of UC Merced multi-label. dock and ship co-occur in 98%
# of images, so a scenario never removes both (it would remove the same images twice).
UCM_MINORITY = ("airplane", "chaparral", "court", "dock", "field", "mobile-home", "sea", "ship",
                "tanks")
NEVER_TOGETHER = ({"dock", "ship"},)
SCENARIO_REMOVALS = {1: 0, 2: 20, 3: 40}
MINORITY_CHOSEN = 3


@dataclass
class SimulationSettings:
    """Everything that defines a simulation (saved to simulation.json)."""

    archive: str
    labels: str
    strategies: list[str] = field(default_factory=lambda: ["mge-clustering", "random"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    scenarios: list[int] = field(default_factory=lambda: [1])
    initial: int = 40
    budget: int = 20
    max_labels: int = 220
    val_fraction: float = 0.25
    test_fraction: float = 0.25
    image_size: int = 256
    full_supervision: bool = False
    candidates: int | None = None
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"


@dataclass
class SimulationResult:
    out: Path
    runs: list[Path]
    finished: int
    rounds_trained: int

    @property
    def complete(self) -> bool:
        return bool(self.runs) and self.finished == self.expected

    expected: int = 0


def run_simulation(out: Path, settings: SimulationSettings, *, stop_after: int | None = None,
                   max_minutes: float | None = None) -> SimulationResult:
    """Run (or continue) a simulation; ``stop_after`` bounds the number of steps and
    ``max_minutes`` the wall time of this call (training checkpoints and stops at the
    deadline), for time-sliced GPU sessions: a later call continues."""
    import time

    from alft_cli.training import deadline_passed, set_deadline

    set_deadline(time.monotonic() + 60 * max_minutes if max_minutes else None)
    try:
        return _run_simulation(out, settings, stop_after, deadline_passed)
    finally:
        set_deadline(None)


def _run_simulation(out: Path, settings: SimulationSettings, stop_after: int | None,
                    deadline_passed: Callable[[], bool]) -> SimulationResult:
    out = Path(out)
    _check_settings(settings)
    _save_or_check_settings(out, settings)
    rep = reporter()
    classes = header_classes(Path(settings.labels))
    gold = _gold(Path(settings.labels), classes)
    base = out / "base"
    steps = 0
    if not (base / "config.json").exists():
        rep.info("simulate: indexing the archive once")
        api.init_pool(settings.archive, base, labels_file=settings.labels, val_fraction=0,
                      test_fraction=0, initial=0, image_size=settings.image_size)
    names = list(settings.strategies) + (["full"] if settings.full_supervision else [])
    plan = [(scenario, seed, strategy,
             out / "runs" / f"s{scenario}" / strategy / f"seed{seed}")
            for scenario in settings.scenarios for seed in settings.seeds for strategy in names]
    runs = [run for *_, run in plan]
    finished = trained = 0

    def result() -> SimulationResult:
        return SimulationResult(out, runs, finished, trained, expected=len(plan))

    pretrained: dict[int, Path | None] = {}
    for seed in settings.seeds:
        if deadline_passed():
            return result()
        source, done = _pretrain_for(out, base, settings, seed, gold, classes)
        steps += int(done is not None)
        if done is False:  # interrupted (Ctrl-C, SIGTERM or the deadline): checkpoint saved
            return result()
        pretrained[seed] = source
    for scenario, seed, strategy, run in plan:
        while True:
            action = _advance(run, base, pretrained[seed], settings, scenario, seed, strategy,
                              gold, classes, dry=True)
            if action == "done":
                finished += 1
                break
            if (stop_after is not None and steps >= stop_after) or deadline_passed():
                return result()
            action = _advance(run, base, pretrained[seed], settings, scenario, seed, strategy,
                              gold, classes)
            if action == "interrupted":
                return result()
            steps += 1
            trained += action == "finetune"
    return result()


def _pretrain_for(out: Path, base: Path, s: SimulationSettings, seed: int,
                  gold: dict[str, np.ndarray], classes: list[str]
                  ) -> tuple[Path | None, bool | None]:
    """The project whose backbone the seed's runs adopt; pretrains it if needed.

    BYOL uses no labels, so one backbone serves every seed. Supervised pretraining on noisy
    labels must not see labels of the seed's val/test images, so it gets a project per seed
    with that seed's split (noisy rows of val/test images are dropped there).
    Returns (source or None for no pretraining, True if it trained now / False if interrupted
    / None if nothing to do).
    """
    pre = dict(s.pretrain)
    if pre.get("epochs", 1) == 0:
        return None, None
    source = base
    if pre.get("method", "byol") == "supervised-noisy":
        source = out / f"base-seed{seed}"
        if not (source / "config.json").exists():
            api.init_pool(s.archive, source, labels_file=s.labels, val_fraction=s.val_fraction,
                          test_fraction=s.test_fraction, initial=0, image_size=s.image_size,
                          seed=seed, index_from=base)
        flip = pre.pop("noisy_flip", None)
        if flip is not None:
            noisy = out / f"noisy-labels-flip{flip:g}.csv"
            if not noisy.exists():
                keys = sorted(gold)
                from alft_cli.noisy import corrupt

                y = corrupt(np.stack([gold[k] for k in keys]), float(flip), seed=0)
                write_labels_csv(noisy, keys, y, classes, fmt="onehot")
            pre["noisy_labels"] = str(noisy)
    else:
        pre.pop("noisy_flip", None)
    if api.status(source)["pretrained"] is not None:
        return source, None
    from alft_cli.pretrain import CHECKPOINT
    from alft_cli.routes import SUPERVISED_BACKBONE

    resume = any((source / "pretrain" / f).exists() for f in (CHECKPOINT, SUPERVISED_BACKBONE))
    reporter().info(f"simulate: pretraining ({pre.get('method', 'byol')}) in {source.name}"
                    + (" (resuming)" if resume else ""))
    result = api.pretrain(source, resume=resume, device=s.device, **pre)
    return source, not result.interrupted


def _advance(run: Path, base: Path, pretrained: Path | None, s: SimulationSettings,
             scenario: int, seed: int, strategy: str, gold: dict[str, np.ndarray],
             classes: list[str], dry: bool = False) -> str:
    """Take the next step of one run; returns what it did ('done' when finished). With
    ``dry``, only says what it would do."""
    rep = reporter()
    if not (run / "config.json").exists():
        if dry:
            return "create"
        _create_run(run, base, pretrained, s, scenario, seed, strategy, gold, classes)
        return "create"
    info = api.status(run)
    label = f"[s{scenario} {strategy} seed{seed}]"
    if info["pending"]:
        if dry:
            return "import"
        answers = run / "rounds" / f"round_{info['rounds'][-1]['round']:03d}" / "oracle.csv"
        _answer(info["pending"], gold, classes, answers)
        api.import_labels(run, answers)
        return "import"
    last = info["rounds"][-1] if info["rounds"] else None
    if last is not None and last["model"] is None and info["labeled"]:
        if dry:
            return "finetune"
        rep.info(f"{label} round {last['round']}: fine-tuning on {info['labeled']} labels")
        ft_checkpoint = run / "rounds" / f"round_{last['round']:03d}" / "finetune_checkpoint.pt"
        result = api.finetune(run, device=s.device, resume=ft_checkpoint.exists(),
                              seed=seed, **s.finetune)
        return "interrupted" if result.interrupted else "finetune"
    pool_left = info["splits"]["pool"] - info["labeled"]
    if strategy == "full" or info["labeled"] >= s.max_labels or pool_left == 0:
        return "done"
    if dry:
        return "query"
    budget = min(s.budget, s.max_labels - info["labeled"])
    # The run's seed, as a user would give it: query derives each round's draws from
    # (seed, round), so a study measures exactly what the plain command does.
    api.query(run, budget=budget, strategy=strategy, seed=seed, candidates=s.candidates,
              device=s.device)
    return "query"


def _create_run(run: Path, base: Path, pretrained: Path | None, s: SimulationSettings,
                scenario: int, seed: int, strategy: str, gold: dict[str, np.ndarray],
                classes: list[str]) -> None:
    """A run project: the seed's split, the scenario's removals, the seed's initial set.

    Strategies of one seed share the split, the removals and the initial set, so their curves
    are paired (differences are between strategies, not between random starts).
    """
    run.parent.mkdir(parents=True, exist_ok=True)
    api.init_pool(s.archive, run, labels_file=s.labels, val_fraction=s.val_fraction,
                  test_fraction=s.test_fraction, initial=0, image_size=s.image_size,
                  seed=seed, index_from=base)
    if pretrained is not None:
        api.adopt_pretrained(run, pretrained)
    removed = scenario_removals(run, scenario, seed, gold, classes)
    if removed:
        api.exclude_samples(run, removed)
    if strategy == "full":
        from alft_cli.project import open_project

        project = open_project(run, readonly=True)
        try:
            keys = project.store.keys_by_id()
            pool = [keys[int(i)] for i in project.store.sample_ids("pool")]
        finally:
            project.close()
        answers = run / "full-supervision.csv"
        _answer(pool, gold, classes, answers)
        api.import_labels(run, answers)
        return
    # The initial set: random, seeded by the run seed only (same for every strategy).
    api.query(run, budget=s.initial, strategy="random", seed=seed)


def scenario_removals(run: Path, scenario: int, seed: int, gold: dict[str, np.ndarray],
                      classes: list[str]) -> list[str]:
    """Pool images to remove for an imbalance scenario (paper section 3).

    Scenario 2 (3) removes 20 (40) pool images associated with each of three randomly chosen
    minority classes; UC Merced's minority classes are the paper's list (never dock and ship
    together), other datasets use their least frequent third of classes (at least 3).
    """
    n_remove = SCENARIO_REMOVALS.get(scenario)
    if n_remove is None:
        raise OptionError(f"--scenario {scenario}: use 1, 2 or 3")
    if n_remove == 0:
        return []
    from alft_cli.project import open_project

    project = open_project(run, readonly=True)
    try:
        keys = project.store.keys_by_id()
        pool = sorted(keys[int(i)] for i in project.store.sample_ids("pool"))
    finally:
        project.close()
    chosen = minority_classes(classes, gold, seed)
    rng = np.random.default_rng([seed, scenario])
    removed: list[str] = []
    for name in chosen:
        c = classes.index(name)
        having = [k for k in pool if gold[k][c] and k not in removed]
        take = rng.permutation(len(having))[:n_remove]
        removed += [having[i] for i in sorted(take)]
    return removed


def minority_classes(classes: list[str], gold: dict[str, np.ndarray], seed: int) -> list[str]:
    """The three minority classes a scenario removes images of (seeded)."""
    rng = np.random.default_rng([seed, 7])
    if set(UCM_MINORITY) <= set(classes):
        candidates = list(UCM_MINORITY)
    else:
        freq = np.sum(np.stack(list(gold.values())), axis=0)
        order = np.argsort(freq, kind="stable")
        candidates = [classes[i] for i in order[:max(MINORITY_CHOSEN, len(classes) // 3)]]
    while True:
        picked = [candidates[i] for i in rng.choice(len(candidates), MINORITY_CHOSEN,
                                                     replace=False)]
        if not any(pair <= set(picked) for pair in NEVER_TOGETHER):
            return sorted(picked)


def _answer(keys: list[str], gold: dict[str, np.ndarray], classes: list[str],
            path: Path) -> None:
    """The oracle: the gold labels of exactly the queried images, as a person would return."""
    missing = [k for k in keys if k not in gold]
    if missing:
        raise OptionError(f"the gold labels have no row for {missing[0]} "
                          f"(+{len(missing) - 1} more)")
    write_labels_csv(path, keys, np.stack([gold[k] for k in keys]), classes, fmt="onehot")


def _gold(path: Path, classes: list[str]) -> dict[str, np.ndarray]:
    parsed = read_label_file(path, classes)
    return {row.ref: np.array(row.labels, dtype=np.uint8) for row in parsed.rows}


def _check_settings(s: SimulationSettings) -> None:
    from alft_cli.strategies import STRATEGIES

    unknown = [x for x in s.strategies if x not in STRATEGIES]
    if unknown:
        raise OptionError(f"--strategies: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(sorted(STRATEGIES))}")
    if not s.strategies and not s.full_supervision:
        raise OptionError("--strategies: give at least one")
    if not s.seeds:
        raise OptionError("--seeds: give at least one")
    bad = [x for x in s.scenarios if x not in SCENARIO_REMOVALS]
    if bad:
        raise OptionError(f"--scenario {bad[0]}: use 1, 2 or 3")
    if s.initial < 1 or s.budget < 1 or s.max_labels < s.initial:
        raise OptionError("need --initial >= 1, --budget >= 1 and --max-labels >= --initial")


def _save_or_check_settings(out: Path, s: SimulationSettings) -> None:
    path = out / "simulation.json"
    mine = json.loads(json.dumps(s.__dict__))
    mine.setdefault("finetune", {}).setdefault("precise_bn", FinetuneConfig().precise_bn)
    if path.exists():
        saved = json.loads(path.read_text())
        # Simulations made before precise BN was an option were fine-tuned without it.
        saved.setdefault("finetune", {}).setdefault("precise_bn", False)
        # Strategies, seeds and scenarios may grow, and so may the budget (every run then
        # continues to the new maximum); what defines a run may not change.
        fixed = [k for k in mine if k not in ("strategies", "seeds", "scenarios",
                                               "full_supervision", "device", "max_labels")]
        diff = [k for k in fixed if saved.get(k) != mine.get(k)]
        if mine["max_labels"] < saved.get("max_labels", mine["max_labels"]):
            diff.append("max_labels (it may only grow)")
        if diff:
            hint = ""
            if saved["finetune"]["precise_bn"] != mine["finetune"]["precise_bn"]:
                hint = (" (its fine-tuning precise BN is "
                        f"{'on' if saved['finetune']['precise_bn'] else 'off'}: "
                        "--finetune-precise-bn / --no-finetune-precise-bn)")
            raise OptionError(f"{out} holds a simulation with other settings ({', '.join(diff)})"
                              f"{hint}; use a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(mine, indent=2) + "\n")


def collect(out: Path) -> list[dict[str, Any]]:
    """One row per trained round of every run in a simulation (or of one project)."""
    out = Path(out)
    if (out / "config.json").exists():
        projects = [(out, {"scenario": 0, "strategy": "project", "seed": 0})]
    else:
        projects = []
        for run in sorted((out / "runs").glob("s*/*/seed*")):
            if (run / "config.json").exists():
                projects.append((run, {"scenario": int(run.parts[-3][1:]),
                                       "strategy": run.parts[-2],
                                       "seed": int(run.parts[-1][4:])}))
    rows = []
    for run, ident in projects:
        info = api.status(run)
        label_rounds = _label_rounds(run)
        for r in info["rounds"]:
            if not r["metrics"]:
                continue
            row = {**ident, "round": r["round"], "labeled": r["labeled"]}
            no_positives = {}
            for split in ("val", "test"):
                m = r["metrics"].get(split)
                if m:
                    row.update({f"{split}_micro_f1": m["micro_f1"],
                                f"{split}_macro_f1": m["macro_f1"], f"{split}_mAP": m["mAP"]})
                    no_positives[split] = [c for c, v in m.get("per_class", {}).items()
                                           if v.get("support") == 0]
            # Agreement with the previous round on the stop set (alft_cli.stopping).
            stability = r.get("stability") or {}
            row["stop_kappa"] = stability.get("kappa")
            row["stop_changed"] = stability.get("changed")
            row["class_counts"] = _counts_up_to(label_rounds, r["round"], info["classes"])
            row["no_positives"] = no_positives
            rows.append(row)
    return rows


def _label_rounds(run: Path) -> list[tuple[int, np.ndarray]]:
    from alft_cli.project import open_project
    from alft_cli.store import decode_y

    project = open_project(run, readonly=True)
    try:
        rounds = project.store.label_rounds()
        return [(rounds[s], decode_y(y)) for s, y in project.store.labels().items()]
    finally:
        project.close()


def _counts_up_to(label_rounds: list[tuple[int, np.ndarray]], round_: int,
                  classes: list[str]) -> dict[str, int]:
    total = np.zeros(len(classes), dtype=int)
    for r, y in label_rounds:
        if r <= round_:
            total += y
    return dict(zip(classes, total.tolist()))


ROW_INTS = ("scenario", "seed", "round", "labeled")


def read_rows_csv(path: Path) -> list[dict[str, Any]]:
    """Rows that :func:`write_rows_csv` wrote (an earlier report's ``rounds.csv``), typed as
    :func:`collect` returns them, so a report can compare new runs with archived ones. The
    classes without positives are not in the file: those rows name none."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise OptionError(f"{path}: cannot read it as a report's rounds.csv ({e})") from None
    rows = []
    for line, raw in enumerate(table, start=2):
        try:
            row: dict[str, Any] = {"strategy": raw["strategy"]}
            row.update({k: int(raw[k]) for k in ROW_INTS})
            row.update({k: float(v) if v not in ("", None) else None for k, v in raw.items()
                        if k not in row and not k.startswith("count_")})
            row["class_counts"] = {k[len("count_"):]: int(v) for k, v in raw.items()
                                   if k.startswith("count_")}
        except (KeyError, TypeError, ValueError) as e:
            raise OptionError(f"{path}, row {line}: not a report's rounds.csv row ({e})"
                              ) from None
        row["no_positives"] = {}
        rows.append(row)
    return rows


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The collected rows as CSV (class counts flattened into count_<class> columns; the
    classes without positives per split are in the report's notes instead)."""
    if not rows:
        atomic_write_text(path, "")
        return
    flat = []
    for row in rows:
        base = {k: v for k, v in row.items() if k not in ("class_counts", "no_positives")}
        base.update({f"count_{c}": n for c, n in row["class_counts"].items()})
        flat.append(base)
    header = list(dict.fromkeys(k for row in flat for k in row))
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(path, buffer.getvalue())
