"""Point a project at its archive's new location, after checking it holds the same files.

Images are read from the archive only when indexing and by ``doctor`` (everything else uses
the decode cache), so a moved archive goes unnoticed until then. ``alft relocate`` checks that
every indexed image is at the new location with the size and SHA-256 recorded at indexing,
and only then records the new location; otherwise it refuses and changes nothing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from alft_cli.config import ProjectConfig, RasterConfig
from alft_cli.errors import ArchiveError
from alft_cli.images import file_sha256
from alft_cli.progress import reporter
from alft_cli.project import ARCHIVE_META, Project, archive_location
from alft_cli.store import SampleRecord

MAX_LISTED_PROBLEMS = 50


@dataclass
class RelocateResult:
    """What relocate did.

    Attributes:
        old: the archive location recorded before.
        new: the new archive root.
        checked: images found with the recorded size and SHA-256.
        relative: the location recorded relative to the project (None: absolute only).
    """

    old: str
    new: Path
    checked: int
    relative: str | None


def new_archive_root(project: Project, new_archive: Path) -> tuple[Path, Path | None]:
    """(archive root, manifest or None) for a folder or manifest CSV given as the new place."""
    new_archive = Path(new_archive)
    if not new_archive.exists():
        raise ArchiveError(f"{new_archive} does not exist")
    if new_archive.is_file():
        if new_archive.suffix.lower() != ".csv":
            raise ArchiveError(f"{new_archive}: give the archive's folder (or its manifest CSV)")
        return new_archive.parent.resolve(), new_archive.resolve()
    manifest = None
    if project.config.manifest:
        manifest = new_archive.resolve() / Path(project.config.manifest).name
        if not manifest.is_file():
            raise ArchiveError(f"the project was indexed from the manifest "
                               f"{Path(project.config.manifest).name}, which is not in "
                               f"{new_archive}; give the manifest's new path")
    return new_archive.resolve(), manifest


def check_files(records: list[SampleRecord], root: Path, workers: int = 4,
                raster: RasterConfig | None = None) -> list[str]:
    """One line per indexed image missing from ``root`` or different in size or SHA-256
    (a band-folder sample: its band files, sizes summed and hashes combined)."""
    problems: list[str] = []

    def check(rec: SampleRecord) -> str | None:
        if raster is not None and raster.layout == "band-folder":
            return _check_band_folder(rec, root, raster)
        path = root / rec.key
        try:
            size = path.stat().st_size
        except OSError:
            return f"{rec.key}: not found"
        if size != rec.size:
            return f"{rec.key}: {size} bytes, indexed with {rec.size}"
        try:
            if file_sha256(path) != rec.sha256:
                return f"{rec.key}: same size, other content (SHA-256 differs)"
        except OSError as exc:
            return f"{rec.key}: unreadable ({exc.strerror or exc})"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            reporter().task("checking the archive", total=len(records)) as task:
        for problem in pool.map(check, records):
            task.advance(1)
            if problem:
                problems.append(problem)
    return problems


def _check_band_folder(rec: SampleRecord, root: Path, raster: RasterConfig) -> str | None:
    from alft_cli import raster_index, rasters

    files = raster_index.sample_files(rasters.sample_for(root, rec.key, "band-folder"), raster)
    if len(files) != len(raster.bands):
        return f"{rec.key}: band files not found"
    try:
        size, _, digest = raster_index.fingerprint(root, files)
    except OSError as exc:
        return f"{rec.key}: unreadable ({exc.strerror or exc})"
    if size != rec.size:
        return f"{rec.key}: {size} bytes, indexed with {rec.size}"
    if digest != rec.sha256:
        return f"{rec.key}: same size, other content (SHA-256 differs)"
    return None


def relocate_project(project: Project, new_archive: Path) -> RelocateResult:
    """Check every indexed image at ``new_archive``, then record it as the archive.

    Args:
        project: an open project (held under its write lock by the caller).
        new_archive: the archive's new folder, or its manifest CSV when the project was
            indexed from one.

    Raises:
        ArchiveError: the place does not exist, or an indexed image is missing there or
            differs (one line per image in ``details``); nothing is changed.
    """
    root, manifest = new_archive_root(project, new_archive)
    records = [rec for _, rec, _ in project.store.sample_records()]
    problems = check_files(records, root, raster=project.config.raster)
    if problems:
        raise ArchiveError(
            f"{root} does not hold the indexed images: {len(problems)} of {len(records)} "
            "missing or different; the project still points at "
            f"{project.config.archive}",
            details=problems[:MAX_LISTED_PROBLEMS] + (
                [f"... and {len(problems) - MAX_LISTED_PROBLEMS} more"]
                if len(problems) > MAX_LISTED_PROBLEMS else []))
    location = archive_location(project.root, root)
    old = str(project.archive_candidates()[-1])
    # The store is what this alft reads; config.json follows for older versions (it is
    # rewritten second: a crash between the two leaves the store right, and relocate can be
    # run again).
    with project.store.transaction():
        project.store.set_meta(ARCHIVE_META, json.dumps(location))
    config = ProjectConfig.model_validate({
        **project.config.model_dump(), "archive": str(root),
        "manifest": str(manifest) if manifest else None})
    config.save(project.root / "config.json")
    project.config = config
    return RelocateResult(old, root, len(records), location["relative"])
