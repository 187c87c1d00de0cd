"""Sum what a device call would send, and refuse more than the lease's 64 MiB.

A device call sends the checkout's tracked files and its untracked files that git does not
ignore, a ``shared/`` folder inside the checkout if there is one, and the git-ignored paths
named in ``carry`` (at most 8): all together at most 64 MiB (/work/.library/device/README.md).
Symbolic links travel as links, so they count as links here.

Usage: python bench/gpu_travel_size.py [CARRIED_PATH ...]      (default: .gpu-carry)
Exit status 1 when the total exceeds the limit, or a carried path is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20
MAX_CARRIED = 8


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder; links count as links."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        total += sum((Path(root) / f).lstat().st_size for f in files)
    return total


def working_tree(repo: Path = REPO) -> tuple[int, int]:
    """(files, bytes) of tracked + untracked-not-ignored files (and ``shared/``)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    names = {n for n in out.decode().split("\0") if n}
    files = total = 0
    for name in names:
        path = repo / name
        if path.is_symlink() or path.is_file():  # tracked but deleted: not sent
            files += 1
            total += path.lstat().st_size
    shared = repo / "shared"
    if shared.is_dir() and not any(n.startswith("shared/") for n in names):
        total += _size(shared)
    return files, total


def check(carried: list[Path], repo: Path = REPO) -> int:
    """Print the breakdown; 0 if it fits, 1 if not."""
    files, tree = working_tree(repo)
    print(f"working tree (tracked + untracked, not ignored): {files} files, "
          f"{tree / 2**20:.1f} MiB")
    total, status = tree, 0
    if len(carried) > MAX_CARRIED:
        print(f"error: {len(carried)} carried paths; a call carries at most {MAX_CARRIED}")
        status = 1
    for path in carried:
        full = path if path.is_absolute() else repo / path
        if not full.exists():
            print(f"error: carried path {path} does not exist (run bench/gpu_prepare.py)")
            status = 1
            continue
        size = _size(full)
        total += size
        print(f"carried {path}: {size / 2**20:.1f} MiB")
    print(f"total: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
    if total > LIMIT:
        print(f"error: {total / 2**20:.1f} MiB would travel, more than the device call's "
              f"{LIMIT / 2**20:.0f} MiB: carry less (e.g. fewer wheels, or no data)")
        status = 1
    return status


def main() -> None:
    carried = [Path(a) for a in sys.argv[1:]] or [Path(".gpu-carry")]
    sys.exit(check(carried))


if __name__ == "__main__":
    main()
