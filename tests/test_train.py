import json

import numpy as np
import pytest
import torch

from canon import geometry
from canon.__main__ import main
from canon.canonicalizer import Canonicalizer, trunk_arithmetic
from canon.networks import EscnnWRN, load_escnn_from_serving
from canon.train import (ProbeConfig, TrainConfig, augment, choose_penalty, distillation_loss, fit_probe,
                         fit_probe_weight, matched_views, probe_features, split_files, split_group)
from conftest import UPRIGHT, float32_logits


def copied_photos(tmp_path, names: list[str]):
    """A folder ``tmp_path / "photos"`` holding copies of the named shared photos."""
    photos = tmp_path / "photos"
    photos.mkdir(parents=True)
    for name in names:
        (photos / name).write_bytes((UPRIGHT / name).read_bytes())
    return photos


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


def test_augmented_views_are_valid_inputs(photo):
    rng = np.random.default_rng(0)
    views = [augment(photo, rng, TrainConfig(), dict(canvas_size=1024, crop_ratio=0.9, input_size=128))
             for _ in range(4)]
    assert all(v.shape == (3, 128, 128) and 0 <= v.min() and v.max() <= 1 for v in views)
    assert not torch.equal(views[0], views[1])


def test_paper_weights_round_trip_through_escnn(paper_canonicalizer, photo):
    """--init paper: the serving weights loaded into escnn give the paper's activations back."""
    escnn_model = load_escnn_from_serving(EscnnWRN(initialize=False), paper_canonicalizer.network).eval()
    with torch.no_grad():
        activations = escnn_model(paper_canonicalizer.preprocess(photo))[0].double().numpy()
    np.testing.assert_allclose(activations, float32_logits(paper_canonicalizer, photo), atol=1e-5)


def test_train_resume_and_load_the_checkpoint(tmp_path, capsys):
    names = ("animals_cat.jpg", "animals_dog.jpg", "tools_hammer.jpg", "fishes_fish1.jpg", "music_guitar.jpg",
             "usa_goldenGateBridge.jpg")
    photos = copied_photos(tmp_path, [name for name in names if (UPRIGHT / name).exists()])
    out = tmp_path / "run"
    common = ["train", "--images", str(photos), "--arch", "wrn-c4-small", "--crops-per-photo", "1",
              "--input-size", "64", "--lr", "0.01", "--out", str(out)]
    assert main([*common, "--epochs", "1"]) == 0
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    history = json.loads((out / "epoch-2" / "training.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in history)
    assert (out / "epoch-2" / "optimizer.safetensors").exists()
    trained = Canonicalizer.load(str(out / "epoch-2"))
    image = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    assert trained.preprocess_config["input_size"] == 64 and trained.preprocess(image).shape == (1, 3, 64, 64)
    decisions = [trained.canonicalize(geometry.rotate_image(image, k)) for k in range(4)]
    assert [d.k for d in decisions] == [(decisions[0].k + k) % 4 for k in range(4)]
    assert "best validation" in capsys.readouterr().out


def test_matched_views_are_one_crop_at_two_sizes(photo):
    config = TrainConfig()
    sizes = [dict(canvas_size=1024, crop_ratio=0.9, input_size=s) for s in (64, 128)]
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    small, large = matched_views(photo, rng, config, sizes)
    assert small.shape == (3, 64, 64) and large.shape == (3, 128, 128)
    assert torch.equal(small, augment(photo, twin, config, sizes[0]))  # the student's view, as without a teacher
    assert rng.bit_generator.state == twin.bit_generator.state  # advanced by exactly one view
    halved = torch.nn.functional.interpolate(large[None], size=64, mode="bilinear", antialias=True)[0]
    assert (halved - small).abs().mean() < 0.02  # the same crop, flip and colours


def test_distillation_loss_is_the_tempered_kl_divergence():
    teacher = torch.tensor([[3.0, 0.0, -1.0, 0.5], [0.2, 0.1, 0.0, -0.3]])
    student = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]])
    p, q = torch.softmax(teacher / 2, dim=1), torch.softmax(student / 2, dim=1)
    expected = 4 * (p * (p.log() - q.log())).sum(dim=1).mean()
    assert torch.allclose(distillation_loss(student, teacher, 2.0), expected)
    assert distillation_loss(teacher, teacher, 2.0).abs() < 1e-6


@pytest.mark.slow  # a distillation run
def test_frozen_batch_norm_keeps_its_statistics_in_bfloat16_distillation(tmp_path):
    photos = copied_photos(tmp_path, ["animals_cat.jpg", "animals_dog.jpg", "animals_cow.jpg", "fishes_fish1.jpg"])
    out = tmp_path / "run"
    assert main(["train", "--images", str(photos), "--arch", "wrn-c4-small", "--crops-per-photo", "2",
                 "--input-size", "48", "--lr", "0.05", "--epochs", "1", "--freeze-batch-norm", "--bf16",
                 "--teacher", "wrn-c4-paper", "--folds", "2", "--fold", "1", "--out", str(out)]) == 0
    state = Canonicalizer.load(str(out / "epoch-1")).network.state_dict()
    stats = {k: v for k, v in state.items() if "running_" in k}
    assert stats and all(torch.equal(v, torch.zeros_like(v) if "mean" in k else torch.ones_like(v))
                         for k, v in stats.items())  # escnn's initial statistics, untouched
    scales = [v for k, v in state.items() if k.endswith("_weight")]  # batch-norm scales, initialised to 1
    assert scales and not all(torch.equal(v, torch.ones_like(v)) for v in scales)  # but the network trained


def upright_signal_features(views: int, seed: int = 0, noise: float = 1.0) -> torch.Tensor:
    """``views x 4 x 6`` features whose first dimension says, through noise, which row is the upright one."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(views, 4, 6, generator=generator) * noise
    features[:, 0, 0] += 3.0
    features[:, :, 1] += 50.0  # an offset common to the rows must not matter
    return features


def test_probe_weight_learns_the_upright_row_and_the_penalty_shrinks_it():
    features = upright_signal_features(200)
    weight = fit_probe_weight(features, penalty=0.01)
    assert (features @ weight).argmax(dim=1).eq(0).float().mean() > 0.95
    assert weight.abs().argmax() == 0
    held_out = upright_signal_features(200, seed=1)
    assert (held_out @ weight).argmax(dim=1).eq(0).float().mean() > 0.9
    std = features.std(dim=(0, 1))
    assert (fit_probe_weight(features, penalty=10.0) * std).norm() < 0.5 * (weight * std).norm()


def test_choose_penalty_breaks_ties_by_cross_entropy():
    files = [UPRIGHT / f"group{chr(97 + i)}.jpg" for i in range(12)]  # twelve groups, spread over the inner folds
    features = [upright_signal_features(3, seed=i, noise=0.01) for i in range(12)]  # separable at any penalty
    penalty, inner = choose_penalty(files, features, ProbeConfig(penalties=(10.0, 0.01, 1.0)))
    assert [v["accuracy"] for v in inner.values()] == [1.0, 1.0, 1.0]
    # A weaker penalty lets the scores grow, so the recovered photos are more certain: the smallest wins the tie.
    assert inner[0.01]["cross_entropy"] < inner[1.0]["cross_entropy"] < inner[10.0]["cross_entropy"]
    assert penalty == 0.01


def test_fit_probe_freezes_the_trunk_and_saves_an_equivariant_canonicalizer(tmp_path, paper_canonicalizer):
    names = ("animals_cat.jpg", "animals_dog.jpg", "animals_cow.jpg", "animals_bison.jpg", "animals_horse.jpg")
    files = [UPRIGHT / name for name in names]
    out = tmp_path / "probe"
    config = ProbeConfig(crops_per_photo=1, folds=2, fold=1, penalties=(0.1, 1.0), inner_folds=2)
    result = fit_probe(files, out, base="wrn-c4-paper", input_size=48, config=config, progress=False)
    train_files, validation_files = split_files(files, 1, 2)
    assert result["training_photos"] == len(train_files) and result["views"] == 2 * len(train_files)
    assert result["validation_photos"] == len(validation_files) and result["penalty"] in (0.1, 1.0)
    assert json.loads((out / "training.json").read_text()) == result
    fitted = Canonicalizer.load(str(out))
    assert fitted.preprocess_config["input_size"] == 48 and fitted.network.probe.levels == (3, 7, 10)
    probe_state = {k: v for k, v in fitted.network.state_dict().items() if k.startswith("probe.")}
    assert list(probe_state) == ["probe.weight"] and probe_state["probe.weight"].abs().sum() > 0
    trunk = {k: v for k, v in fitted.network.state_dict().items() if not k.startswith("probe.")}
    assert all(torch.equal(v, paper_canonicalizer.network.state_dict()[k]) for k, v in trunk.items())
    x = fitted.preprocess(np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    with torch.no_grad():
        scores = fitted.network(x)
        for k in (1, 2, 3):  # the saved probe's scores themselves roll with the input
            torch.testing.assert_close(fitted.network(torch.rot90(x, k, dims=(2, 3))), scores.roll(k, dims=1),
                                       atol=1e-4, rtol=1e-4)
        first_pass = fitted.network(x, *trunk_arithmetic(fitted.precision, fitted.device))
    torch.testing.assert_close(first_pass, probe_features(fitted, x) @ fitted.network.probe.weight)
    assert scores.std() > 0  # the four rotations are told apart


def test_train_probe_command_saves_a_loadable_canonicalizer(tmp_path, capsys):
    photos = copied_photos(tmp_path, ["animals_cat.jpg", "animals_bison.jpg", "animals_cow.jpg", "animals_horse.jpg"])
    out = tmp_path / "probe"
    assert main(["train", "--images", str(photos), "--probe", "wrn-c4-paper", "--input-size", "40",
                 "--crops-per-photo", "1", "--folds", "2", "--fold", "0", "--out", str(out)]) == 0
    assert f"saved {out}" in capsys.readouterr().out
    assert json.loads((out / "training.json").read_text())["views"] == 2 * len(split_files(
        sorted(photos.glob("*.jpg")), 0, 2)[0])
    assert Canonicalizer.load(str(out)).network.probe is not None


def test_train_without_training_photos_ends_with_one_line(tmp_path, capsys):
    alone = copied_photos(tmp_path / "alone", ["animals_cat.jpg"])  # validation of fold 0 of 2
    # Bison and horse train on fold 0 of 2, but neither group is in the first 10 % of the training fraction's hash.
    thinned = copied_photos(tmp_path / "thinned", ["animals_cat.jpg", "animals_bison.jpg", "animals_horse.jpg"])
    for photos, fraction in ((alone, "1"), (thinned, "0.1")):
        for extra in (["--probe", "wrn-c4-paper"], ["--arch", "wrn-c4-small"]):
            assert main(["train", "--images", str(photos), "--folds", "2", "--train-fraction", fraction,
                         "--out", str(tmp_path / "run"), *extra]) == 2
            assert "error: the split left no training photo" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--probe", "wrn-c4-paper", "--teacher", "wrn-c4-paper"], "takes no --teacher"),
    (["--probe", "wrn-c4-paper", "--resume"], "no --resume"),
    (["--fold", "5"], "--fold 0 to folds - 1"),
    (["--distill-weight", "2"], "--distill-weight takes"),
    (["--folds", "1"], "--folds takes 2 or more"),
    (["--train-fraction", "0"], "--train-fraction takes a share"),
    (["--group", "C8"], "not supported"),
    (["--arch", "resnet"], "--arch takes"),
    (["--init", "paper"], "--init paper needs --arch wrn-c4-paper"),
    (["--input-size", "8"], "--input-size takes"),
    (["--lr", "5"], "--lr takes"),
])
def test_train_refuses_what_it_cannot_do(args, message, tmp_path, capsys):
    assert main(["train", "--images", str(UPRIGHT), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
