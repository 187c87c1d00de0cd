#!/usr/bin/env python3
"""Stand-in for the person who labels: answer an alft query file from a gold labels file.

Reads the `filename` column of QUERY (what `alft query` wrote) and writes OUT, a one-hot CSV
with the gold labels of exactly those files - the same file a labeling team would hand back.
Only the stdlib is used, so this runs anywhere a shell script does.

Usage: label_from_gold.py GOLD.csv QUERY.csv OUT.csv

GOLD comes first so that `label_from_gold.py GOLD.csv` is a labeling command taking
(QUERY, OUT), as examples/al_rounds.sh expects.
"""

import csv
import sys


def main(gold_path: str, query_path: str, out_path: str) -> int:
    with open(gold_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        gold = {row[0]: row[1:] for row in reader}
    with open(query_path, newline="", encoding="utf-8-sig") as handle:
        wanted = [row["filename"] for row in csv.DictReader(handle)]
    missing = [name for name in wanted if name not in gold]
    if missing:
        print(f"no gold label for {len(missing)} files, e.g. {missing[0]}", file=sys.stderr)
        return 1
    with open(out_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name in wanted:
            writer.writerow([name, *gold[name]])
    print(f"labeled {len(wanted)} images -> {out_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(*sys.argv[1:]))
