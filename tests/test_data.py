import pytest

from canon.data import image_files, split_files, split_group
from conftest import UPRIGHT


def test_split_is_fixed_and_keeps_groups_together(upright_files):
    train, validation = split_files(upright_files)
    assert split_files(list(reversed(upright_files))) == (sorted(train, reverse=True), sorted(validation,
                                                                                             reverse=True))
    assert not set(train) & set(validation) and len(train) + len(validation) == len(upright_files)
    assert 0.1 < len(validation) / len(upright_files) < 0.35
    assert not {split_group(f) for f in train} & {split_group(f) for f in validation}
    assert split_group(UPRIGHT / "fishes_fish12.jpg") == split_group(UPRIGHT / "fishes_fish3.jpg")


def test_folds_put_every_photo_in_validation_once(upright_files):
    validations = [split_files(upright_files, fold, 5)[1] for fold in range(5)]
    assert sorted(f for v in validations for f in v) == sorted(upright_files)
    assert all(validations)
    assert split_files(upright_files, 0, 5) == split_files(upright_files)  # fold 0 of 5 is the fixed split
    for fold, validation in enumerate(validations):
        train, _ = split_files(upright_files, fold, 5)
        assert not {split_group(f) for f in train} & {split_group(f) for f in validation}
    with pytest.raises(ValueError, match="fold must be in 0..4"):
        split_files(upright_files, 5, 5)


def test_training_fraction_nests_and_leaves_validation_alone(upright_files):
    full_train, validation = split_files(upright_files, 2, 5)
    assert split_files(upright_files, 2, 5, train_fraction=1.0) == (full_train, validation)
    kept = [set(split_files(upright_files, 2, 5, train_fraction=f)[0]) for f in (0.25, 0.5, 0.75)]
    assert all(split_files(upright_files, 2, 5, train_fraction=f)[1] == validation for f in (0.25, 0.5, 0.75))
    assert kept[0] < kept[1] < kept[2] < set(full_train)  # nested, and each smaller than the next
    groups = {split_group(f) for f in full_train}
    for fraction, train in zip((0.25, 0.5, 0.75), kept):
        assert {f for f in full_train if split_group(f) in {split_group(g) for g in train}} == train  # whole groups
        assert abs(len({split_group(f) for f in train}) / len(groups) - fraction) < 0.2
    for fraction in (0, 1.5):
        with pytest.raises(ValueError, match="training fraction must be in"):
            split_files(upright_files, 2, 5, train_fraction=fraction)


def test_image_files_are_the_photos_of_a_folder_sorted_by_name(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.jpg").mkdir()  # a folder named like a photo is not one
    assert [p.name for p in image_files(tmp_path)] == ["a.png", "b.JPG", "c.webp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_files(tmp_path / "empty")
