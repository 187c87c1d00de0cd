"""Rounds draw independently (issue #15, part 1): every random draw of a round comes from
(seed, round), so the plain default command does not pick the previous round's neighbours in
an archive sorted by class folder, and the same round with the same seed repeats its query."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alft_cli import api
from alft_cli.project import open_project

FOLDERS = 20
PER_FOLDER = 15
BUDGET = 8
ROUNDS = 5


@pytest.fixture(scope="module")
def folder_archive(tmp_path_factory) -> Path:
    """20 class folders of 15 tiny PNGs each: the id-sorted list is sorted by class."""
    root = tmp_path_factory.mktemp("folders")
    rng = np.random.default_rng(0)
    for f in range(FOLDERS):
        (root / f"class{f:02d}").mkdir()
        for i in range(PER_FOLDER):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{f:02d}" / f"img{i:02d}.png")
    return root


def answer_pending(root: Path, out: Path) -> None:
    info = api.status(root)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "labels"])
        writer.writerows([key, "a"] for key in info["pending"])
    api.import_labels(root, out)


def queried(root: Path) -> list[int]:
    project = open_project(root, readonly=True)
    try:
        return project.store.queried_ids(project.store.current_round())
    finally:
        project.close()


def uniform_reference(unlabeled_sets: list[np.ndarray], sizes: list[int], reps: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour share and folder coverage of independent uniform draws of the same sizes
    from the same unlabeled sets (plain numpy, independent of alft's code)."""
    rng = np.random.default_rng(seed)
    shares, coverage = [], []
    for _ in range(reps):
        draws = [rng.choice(u, size=k, replace=False) for u, k in zip(unlabeled_sets, sizes)]
        shares.append(np.mean([neighbour_share(a, b) for a, b in zip(draws, draws[1:])]))
        coverage.append(len({int(i) // PER_FOLDER for d in draws for i in d}))
    return np.array(shares), np.array(coverage)


def neighbour_share(previous: np.ndarray, current: np.ndarray) -> float:
    """Share of ``current``'s ids within 2 ids of one of ``previous``'s."""
    prev = np.asarray(previous)
    return float(np.mean([np.min(np.abs(prev - int(c))) <= 2 for c in current]))


def test_rounds_of_the_default_command_draw_independently(folder_archive, tmp_path):
    root = tmp_path / "proj"
    api.init_pool(folder_archive, root, classes="a,b", initial=0, image_size=16)
    draws, unlabeled_sets = [], []
    for r in range(ROUNDS):
        project = open_project(root, readonly=True)
        labeled = set(project.store.labels())
        unlabeled_sets.append(np.array([int(i) for i in project.store.sample_ids("pool")
                                        if int(i) not in labeled]))
        project.close()
        result = api.query(root, budget=BUDGET)  # the plain default command (auto, seed 0)
        assert result.strategy == "auto" and result.round == r
        draws.append(np.array(queried(root)))
        answer_pending(root, tmp_path / f"answers{r}.csv")
    # Ids follow the sorted keys: id // PER_FOLDER is the class folder.
    assert open_project(root, readonly=True).store.keys_by_id()[PER_FOLDER].startswith("class01/")
    share = np.mean([neighbour_share(a, b) for a, b in zip(draws, draws[1:])])
    coverage = len({int(i) // PER_FOLDER for d in draws for i in d})
    ref_share, ref_coverage = uniform_reference(unlabeled_sets, [BUDGET] * ROUNDS, 400, 1)
    # No closer to the previous round than independent draws (the old draws: share ~1.0)...
    assert share <= np.quantile(ref_share, 0.99), (share, np.quantile(ref_share, 0.99))
    # ...and covering as many class folders as they do.
    assert coverage >= np.quantile(ref_coverage, 0.01), (coverage, ref_coverage.mean())


def test_same_round_and_seed_repeat_the_query_and_another_seed_does_not(folder_archive,
                                                                        tmp_path):
    root = tmp_path / "proj"
    api.init_pool(folder_archive, root, classes="a,b", initial=0, image_size=16)
    api.query(root, budget=BUDGET, seed=3)
    answer_pending(root, tmp_path / "answers.csv")
    first = api.query(root, budget=BUDGET, seed=3)
    picks = queried(root)
    again = api.query(root, budget=BUDGET, seed=3, force=True)  # replaces the same round
    assert again.round == first.round == 1
    assert queried(root) == picks
    api.query(root, budget=BUDGET, seed=4, force=True)
    assert queried(root) != picks
