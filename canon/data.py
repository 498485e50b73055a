"""Photo folders and their splits: which files are photos, and which side of a training split each one is on.

Validation never sees a training photo: :func:`split_files` assigns whole groups of files (names that differ only
by trailing digits, such as ``fishes_fish1`` and ``fishes_fish2``, form one group) by a hash of the group name, so the
split is fixed, independent of the order on disk, and keeps near-duplicate series on one side. The hash also cuts
the photos into folds (5 by default; fold 0 is the fixed split), so that a recipe can be judged on every photo once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (the split and the order never depend on the disk)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def split_group(path: Path) -> str:
    """Files whose names differ only by trailing digits belong to one group (one side of the split)."""
    return re.sub(r"\d+$", "", path.stem)


def _group_position(path: Path, salt: str) -> float:
    """The hash of ``salt`` and the file's group, read as a number in [0, 1) (53 bits: exact in a float, never 1)."""
    digest = hashlib.sha256((salt + split_group(path)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def fold_of(path: Path, folds: int = 5, salt: str = "") -> int:
    """The fold (``0 .. folds - 1``) whose validation side holds ``path`` in :func:`split_files`."""
    return int(_group_position(path, salt) * folds)


def split_files(files: list[Path], fold: int = 0, folds: int = 5, salt: str = "",
                train_fraction: float = 1.0) -> tuple[list[Path], list[Path]]:
    """Fixed file-level split into ``(train, validation)``: the hash of a file's group, read as a number in [0, 1),
    falls into one of ``folds`` equal intervals, and the group is validation for that fold and training for the
    others. Fold 0 of 5 is the default split; the 5 folds together put every photo in validation once. A ``salt``
    (hashed before the group) gives another split, independent of the unsalted one: for folds inside a fold.

    ``train_fraction`` keeps about that share of the training groups, chosen by a third hash, so that a smaller
    fraction's photos are a subset of a larger one's and validation does not change: for learning curves."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"the training fraction must be in (0, 1], got {train_fraction}")
    train, validation = [], []
    for f in files:
        if fold_of(f, folds, salt) == fold:
            validation.append(f)
        elif _group_position(f, salt + "fraction/") < train_fraction:
            train.append(f)
    return train, validation
