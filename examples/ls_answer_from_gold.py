#!/usr/bin/env python3
"""Stand-in for the people who label in Label Studio: answer alft's pushed tasks from gold.

Finds the Label Studio project a project's pending images were pushed to (`alft labelstudio
status --json`) and submits, for every unanswered task, the gold labels of its image as an
annotation, through the Label Studio API as the labeling page would. Images without a gold
row are skipped, as a labeler would skip them.

Usage: ls_answer_from_gold.py GOLD.csv PROJECT   (LABEL_STUDIO_API_KEY set)

GOLD comes first so that `ls_answer_from_gold.py GOLD.csv` is a labeler command taking
PROJECT, as examples/al_rounds_labelstudio.sh expects (LS_LABELER).
"""

import csv
import json
import os
import subprocess
import sys

from label_studio_sdk.client import LabelStudio


def main(gold_path: str, project: str) -> int:
    with open(gold_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        classes = next(reader)[1:]
        gold = {row[0]: [c for c, v in zip(classes, row[1:]) if v.strip() == "1"]
                for row in reader}
    info = json.loads(subprocess.run(["alft", "labelstudio", "status", "-p", project,
                                      "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    ls = LabelStudio(base_url=info["url"], api_key=os.environ["LABEL_STUDIO_API_KEY"])
    answered = skipped = 0
    for task in ls.tasks.list(project=info["project_id"]):
        if task.total_annotations or task.cancelled_annotations:
            continue
        choices = gold.get((task.data or {}).get("alft_key"))
        result = [] if not choices else [{"from_name": "labels", "to_name": "image",
                                          "type": "choices", "value": {"choices": choices}}]
        ls.annotations.create(id=task.id, result=result, was_cancelled=choices is None)
        answered += choices is not None
        skipped += choices is None
    print(f"answered {answered} tasks in Label Studio project {info['project_id']}"
          + (f", skipped {skipped} without a gold row" if skipped else ""))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
