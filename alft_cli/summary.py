"""What ``alft status`` shows: the project's splits, labels, pending queries, rounds with their
metrics and stop-set agreement, whether to stop labeling, and the suggested next command. The
keys are a contract (README, "Scripting against alft"): extend them, never rename them.
"""

from __future__ import annotations

import json
from typing import Any

from alft_cli import __version__, stopping
from alft_cli.evidence import last_answered_suggestions
from alft_cli.metrics import classes_without_positives
from alft_cli.project import Project


def summarize(project: Project, stop_kappa: float = stopping.DEFAULT_KAPPA,
              stop_window: int = stopping.DEFAULT_WINDOW) -> dict[str, Any]:
    """The status summary of an open project (read-only).

    ``stop_kappa`` / ``stop_window`` set the stop rule judged in ``stop``.
    """
    store = project.store
    stabilities = store.stabilities()
    keys = store.keys_by_id()
    label_ids, label_y = store.labeled_arrays()
    label_rounds = store.label_rounds()
    pending = store.pending()
    auto = store.auto_decisions()
    rounds = []
    for rec in store.rounds():
        labeled_in_round = sum(1 for r in label_rounds.values() if r <= rec.round)
        rounds.append({
            "round": rec.round,
            "labeled": rec.trained_on if rec.trained_on is not None else labeled_in_round,
            "strategy": rec.strategy,
            "metrics": rec.metrics or {},
            "queried": rec.budget,
            "pending": sum(1 for r, _ in pending if r == rec.round),
            "query_file": rec.query_file,
            "model": rec.model_file,
            "model_round": rec.model_round,
            "created_at": rec.created_at,
            "trained_at": rec.trained_at,
            # Agreement of this round's stop-set predictions with the previous round's.
            "stability": stabilities.get(rec.round),
            # The default strategy's evidence for this round's query (alft_cli.auto.combine).
            "auto": auto.get(rec.round),
        })
    class_counts = (label_y.sum(0).astype(int).tolist() if len(label_ids)
                    else [0] * len(project.classes))
    pretrained = store.get_meta("pretrained")
    evidence = last_answered_suggestions(project, minimum=1)
    splits = store.split_counts()
    info = {
        "project": str(project.root),
        "alft_version": __version__,
        "archive": str(project.archive),
        "archive_found": project.archive.is_dir(),
        "classes": project.classes,
        "image_size": project.config.image_size,
        "splits": splits,
        "labeled": len(label_ids),
        "pending": [keys[s] for _, s in pending],
        "skipped": len(store.skipped()),
        "class_counts": dict(zip(project.classes, class_counts)),
        "rounds": rounds,
        "pretrained": json.loads(pretrained) if pretrained else None,
        # Evidence without gold labels: how the last answered suggestions matched the answers.
        "suggestions": evidence.as_dict() if evidence else None,
        "val_from_answers": len(store.val_answers()),
        "next": _next_step(project, len(label_ids), pending, rounds, pretrained),
        "stop": _stop(rounds, store.get_meta("stop_set"), stop_kappa, stop_window),
        # Macro F1 counts such a class as F1 0 (scikit-learn's zero_division=0); mAP leaves
        # it out. Named so that nobody reads a low macro F1 as a model problem.
        "classes_without_positives": {
            split: classes_without_positives(store.gold(split)[1], project.classes)
            for split in ("val", "test") if splits.get(split)},
    }
    return info


def _stop(rounds: list[dict], stop_set: str | None, kappa: float, window: int
          ) -> dict[str, Any]:
    trained = [(r["round"], r["labeled"], (r["stability"] or {}).get("kappa"))
               for r in rounds if r["model"]]
    size = json.loads(stop_set)["size"] if stop_set else None
    return {**stopping.recommendation(trained, kappa, window, size),
            "kappa": kappa, "window": window}


def _next_step(project: Project, labeled: int, pending: list, rounds: list[dict],
               pretrained: str | None) -> str:
    p = str(project.root)
    current = rounds[-1]["round"] if rounds else None
    if current is not None and rounds[-1]["model"] is None and \
            project.finetune_checkpoint(current).exists():
        # Started over, an interrupted fine-tuning would be lost: say how to continue it.
        return (f"alft finetune -p {p} --resume   (continues the interrupted fine-tuning of "
                f"round {current}; --restart starts over)")
    if pending:
        link = project.store.ls_current_link()
        if link is not None and project.store.ls_tasks(link.id).keys() & set(pending):
            return (f"answer the {len(pending)} pending images in Label Studio project "
                    f"{link.project_id} at {link.url}, then: alft labelstudio pull -p {p}")
        first = rounds[-1]["query_file"] if rounds else None
        return (f"label the {len(pending)} pending images"
                + (f" listed in {first}" if first else "")
                + f", then: alft import-labels FILE -p {p}")
    if pretrained is None and labeled == 0:
        return f"alft pretrain -p {p}   (or import labels for the initial set)"
    stale = stale_model(rounds, labeled)
    if stale:
        return f"alft finetune -p {p}   ({stale})"
    if rounds and rounds[-1]["model"] is None and labeled:
        return f"alft finetune -p {p}"
    if labeled:
        return f"alft query -p {p} --budget 20"
    return f"alft query -p {p} --budget 20 --strategy kmeans"


def stale_model(rounds: list[dict], labeled: int) -> str | None:
    """Why the latest model is behind the labels (None when it is not, or there is none).

    ``rounds`` are status rows; ``labeled`` the training labels stored now.
    """
    latest = next((r for r in reversed(rounds) if r["model"]), None)
    if latest is None or latest["labeled"] is None or labeled <= latest["labeled"]:
        return None
    return (f"round {latest['round']}'s model was trained on {latest['labeled']} labels; "
            f"{labeled - latest['labeled']} labeled since are not in it")
