"""The research package: the equivariant probe and distillation, through the library's public pieces only."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from canon import geometry
from canon.canonicalizer import Canonicalizer
from canon.data import fold_of, split_files
from canon.networks import ServingWRN
from canon.research.__main__ import build_parser
from canon.research.distill import Distillation, distillation_loss
from canon.research.probe import (ProbeCanonicalizer, ProbeConfig, ProbedWRN, ProbeSpec, choose_penalty, fit_probe,
                                  fit_probe_weight, probe_features)
from canon.cli import main as cli_main
from canon.tilt import angular_error_deg
from conftest import UPRIGHT
from test_networks import SMALL, randomised_escnn
from test_train import copied_photos


def main(argv):
    return cli_main(argv, parser=build_parser())


def probed_serving(levels=(0, 1), grid=3, seed=0) -> ProbedWRN:
    """The small randomised network with an equivariant probe on ``levels`` and random probe weights."""
    serving = ProbedWRN(**SMALL, probe=ProbeSpec(levels, grid))
    state = ServingWRN.from_escnn_state(randomised_escnn(seed).state_dict(), **SMALL).state_dict()
    state["probe.weight"] = torch.randn(serving.probe.num_features, generator=torch.Generator().manual_seed(seed))
    serving.load_state_dict(state, strict=True)
    return serving.eval()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_probe_turn_gives_the_pooled_features_of_the_turned_input(k):
    serving = probed_serving()
    x = torch.rand(1, 3, 41, 41)
    with torch.no_grad():
        _, tapped = serving.trunk(x, taps=serving.probe.levels)
        _, tapped_turned = serving.trunk(torch.rot90(x, k, dims=(2, 3)), taps=serving.probe.levels)
        probe = serving.probe
        expected = torch.cat([p.flatten(1) for p in probe.pooled(tapped_turned)], dim=1)
        turned = probe.turn(probe.pooled(tapped), k)
    assert not torch.allclose(turned, probe.turn(probe.pooled(tapped), 0), atol=1e-3)  # turning changes them
    torch.testing.assert_close(turned, expected, atol=1e-5, rtol=1e-5)


def test_probe_turn_is_a_permutation_of_order_four():
    probe = probed_serving().probe
    pooled = [torch.randn(2, f, 4, 1 + 9) for f in probe.fields]
    flat = probe.turn(pooled, 0)
    assert torch.equal(flat, torch.cat([p.flatten(1) for p in pooled], dim=1))
    once = probe.turn(pooled, 1)
    assert torch.equal(once.sort(dim=1).values, flat.sort(dim=1).values) and not torch.equal(once, flat)
    back = [p.reshape(2, f, 4, 10) for p, f in zip(once.split([f * 40 for f in probe.fields], dim=1), probe.fields)]
    assert torch.equal(probe.turn(back, 3), flat)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_probe_scores_roll_with_rotation(k):
    serving = probed_serving()
    x = torch.rand(2, 3, 41, 41)
    with torch.no_grad():
        base, rotated = serving(x), serving(torch.rot90(x, k, dims=(2, 3)))
        head = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)(x)
    assert base.shape == (2, 4) and not torch.allclose(base, head)  # the probe, not the head, scores
    torch.testing.assert_close(rotated, torch.roll(base, k, dims=1), atol=1e-4, rtol=1e-4)


def test_probe_refuses_levels_it_cannot_tap_and_scoring_without_weights():
    with pytest.raises(ValueError, match="probe levels are block indices in 0..1"):
        ProbedWRN(**SMALL, probe=ProbeSpec((2,)))
    with pytest.raises(ValueError, match="probe grid"):
        ProbeSpec((1,), grid=0)
    unfitted = ProbedWRN(**SMALL, probe=ProbeSpec((1,)))
    unfitted.load_state_dict({k: v for k, v in probed_serving(levels=(1,)).state_dict().items()
                              if k != "probe.weight"}, strict=False)
    with pytest.raises(ValueError, match="fit it"):
        unfitted.eval()(torch.rand(1, 3, 33, 33))


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
    fitted = ProbeCanonicalizer.load(str(out))
    assert fitted.preprocessing.input_size == 48 and fitted.network.probe.levels == (3, 7, 10)
    assert fitted.policy == paper_canonicalizer.policy  # the base's decision policy is kept
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
        first_pass = fitted.network(x, fitted.arithmetic)
    torch.testing.assert_close(first_pass, probe_features(fitted, x) @ fitted.network.probe.weight)
    assert scores.std() > 0  # the four rotations are told apart


def test_probe_command_saves_a_loadable_canonicalizer(tmp_path, capsys):
    photos = copied_photos(tmp_path, ["animals_cat.jpg", "animals_bison.jpg", "animals_cow.jpg", "animals_horse.jpg"])
    out = tmp_path / "probe"
    assert main(["probe", "--images", str(photos), "--base", "wrn-c4-paper", "--input-size", "40",
                 "--crops-per-photo", "1", "--folds", "2", "--fold", "0", "--out", str(out)]) == 0
    assert f"saved {out}" in capsys.readouterr().out
    assert json.loads((out / "training.json").read_text())["views"] == 2 * len(split_files(
        sorted(photos.glob("*.jpg")), 0, 2)[0])
    loaded = ProbeCanonicalizer.load(str(out))
    assert isinstance(loaded.network, ProbedWRN) and loaded.with_policy(precision="float32").network is loaded.network
    with pytest.raises(RuntimeError, match="probe.weight"):  # the serving class knows no probe
        Canonicalizer.load(str(out))


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


def test_research_commands_without_training_photos_end_with_one_line(tmp_path, capsys):
    alone = copied_photos(tmp_path / "alone", ["animals_cat.jpg"])  # validation of fold 0 of 2
    # Bison and horse train on fold 0 of 2, but neither group is in the first 10 % of the training fraction's hash.
    thinned = copied_photos(tmp_path / "thinned", ["animals_cat.jpg", "animals_bison.jpg", "animals_horse.jpg"])
    for photos, fraction in ((alone, "1"), (thinned, "0.1")):
        for command in ("probe", "train"):
            assert main([command, "--images", str(photos), "--folds", "2", "--train-fraction", fraction,
                         "--out", str(tmp_path / "run")]) == 2
            assert "error: the split left no training photo" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["probe", "--teacher", "wrn-c4-paper"], "unrecognized arguments: --teacher"),
    (["probe", "--resume"], "unrecognized arguments: --resume"),
    (["probe", "--fold", "5"], "--fold takes 0 to 4 with --folds 5"),
    (["train", "--distill-weight", "2"], "argument --distill-weight: 2 is not from 0 to 1"),
    (["train", "--train-fraction", "0"], "argument --train-fraction: 0 is not above 0 and at most 1"),
    (["train", "--train-fraction", "1.5"], "argument --train-fraction: 1.5 is not above 0"),
])
def test_research_commands_refuse_what_they_cannot_do(args, message, tmp_path, capsys):
    assert main([*args, "--images", str(UPRIGHT), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_distillation_mixes_the_prior_with_the_teachers_probabilities(paper_canonicalizer):
    teacher = paper_canonicalizer.with_preprocessing(input_size=64)
    objective = Distillation(teacher, weight=0.25)
    assert objective.preprocessings == (teacher.preprocessing,)
    x = torch.rand(2, 3, 64, 64)
    logits, prior = torch.randn(2, 4), torch.tensor(0.7)
    with torch.no_grad():
        targets = teacher.network(x, teacher.arithmetic)
    expected = 0.75 * prior + 0.25 * distillation_loss(logits, targets, 2.0)
    torch.testing.assert_close(objective.loss(prior, logits, [x]), expected)
    with pytest.raises(ValueError, match="distillation weight"):
        Distillation(teacher, weight=1.5)


def test_tilt_candidates_are_measured_on_the_same_photos(tmp_path, capsys):
    """The three ways on one shared photo (a coarse candidate grid: quick), and photos spread over the folds."""
    from canon.research.tilt_candidates import TILTS_DEG, spread_over_folds

    files = sorted(UPRIGHT.glob("*.jpg"))
    spread = spread_over_folds(files, 2)
    assert len(spread) == len(set(spread)) == 10 and len({fold_of(path) for path in spread}) == 5
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "animals_cat.jpg").write_bytes((UPRIGHT / "animals_cat.jpg").read_bytes())
    target = tmp_path / "c.json"
    assert main(["tilt-candidates", "--images", str(folder), "--per-fold", "1", "--candidate-step", "45",
                 "--json", str(target)]) == 0
    summary = json.loads(target.read_text())
    assert summary["network_candidates_deg"] == [-45.0, 0.0] and summary["n_images"] == 1
    for name in ("edges", "checked", "network"):
        assert set(summary[name]["per_tilt"]) == {f"{t:g}" for t in TILTS_DEG}
        assert summary[name]["within_5deg"] == np.mean(list(summary[name]["per_tilt"].values()))
    # Candidates 0 and -45 cannot bring a photo tilted 15 or 30 degrees within 5 degrees of upright.
    assert summary["network"]["per_tilt"]["15"] == summary["network"]["per_tilt"]["30"] == 0.0
    out = capsys.readouterr().out
    assert "the network on 2 candidate tilts" in out and "include every tilt" not in out  # 15 and 30 are not among them


def _bar_pattern(degrees: float, side: int = 97) -> torch.Tensor:
    """A smooth two-blob pattern, drawn (not resampled) turned ``degrees`` counter-clockwise as displayed:
    ``1 x 3 x side x side``."""
    y, x = np.mgrid[0:side, 0:side] + 0.5 - side / 2
    t = np.radians(degrees)
    along, across = x * np.cos(t) - y * np.sin(t), x * np.sin(t) + y * np.cos(t)  # y points down
    image = (np.exp(-along ** 2 / (2 * 14 ** 2) - across ** 2 / (2 * 4 ** 2))
             + 0.5 * np.exp(-(along - 8) ** 2 / 18 - (across + 6) ** 2 / 18))
    return torch.tensor(np.stack([image] * 3), dtype=torch.float32)[None]


def test_tilt_network_reads_a_turn_of_its_input_as_the_same_tilt_turned():
    from canon.research.tilt_network import TiltNetwork, read_tilt

    torch.manual_seed(1)
    network = TiltNetwork().eval()
    with torch.no_grad():
        x = _bar_pattern(0.0)
        v = network(x).numpy()
        turned = [network(torch.rot90(x, k, dims=(2, 3))).numpy() for k in (1, 2, 3)]
        step = network(_bar_pattern(22.5)).numpy()  # a rotation of C16, off the pixel grid
    for w in turned:  # a quarter turn moves the head a whole circle
        np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-4 * np.abs(v).max())
    (tilt,), _ = read_tilt(v)
    (tilt_turned,), _ = read_tilt(step)
    assert angular_error_deg(tilt_turned, tilt + 22.5, 90.0) < 3.0


def test_tilt_prior_is_the_von_mises_likelihood_and_reading_inverts_it():
    from scipy.stats import vonmises

    from canon.research.tilt_network import prior_loss, read_tilt, target

    tilts = torch.tensor([-45.0, -20.0, 0.0, 10.0, 44.0])
    kappa = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    v = kappa[:, None] * target(torch.tensor([-40.0, -20.0, 5.0, 10.0, -44.0]))
    expected = -vonmises.logpdf(np.radians(4 * tilts.numpy()), kappa.numpy(),
                                loc=np.radians(4 * np.array([-40.0, -20.0, 5.0, 10.0, -44.0]))) - np.log(2 * np.pi)
    torch.testing.assert_close(prior_loss(v, tilts), torch.tensor(expected.mean(), dtype=torch.float32))
    degrees, confidence = read_tilt((kappa[:, None] * target(tilts)).numpy())
    np.testing.assert_allclose(degrees, tilts.numpy(), atol=1e-4)
    np.testing.assert_allclose(confidence, kappa.numpy(), rtol=1e-5)


@pytest.mark.parametrize("tilt", [0.0, 15.0, 30.0, -45.0])
def test_content_box_holds_the_photo_and_none_of_the_canvas(tilt):
    from canon.research.tilt_network import content_box

    height, width = 90, 160
    plain = np.full((height, width, 3), 200, dtype=np.uint8)
    spotted = plain.copy()
    spotted[40:50, 70:80] = 0  # black inside the photo is not canvas
    box = content_box(geometry.rotate_image_free(plain, tilt))
    assert content_box(geometry.rotate_image_free(spotted, tilt)) == box
    left, top, right, bottom = box
    assert right - left == pytest.approx(bottom - top)
    inside = geometry.rotate_image_free(plain, tilt)[int(np.floor(top)):int(np.ceil(bottom)),
                                                     int(np.floor(left)):int(np.ceil(right))]
    assert inside.size and np.all(inside == 200)  # neither canvas nor the bilinear seam at its edge
    c, s = abs(np.cos(np.radians(tilt))), abs(np.sin(np.radians(tilt)))
    assert (right - left) / 2 >= min(height, width) / 2 / (c + s) - 4  # about the largest such square


def test_tilt_network_training_lowers_the_prior(photo):
    from canon.research.tilt_network import TiltNetworkConfig, fit

    config = TiltNetworkConfig(input_size=49, fields=(1, 2), steps=60, batch_size=8, tilts_per_photo=8)
    network, losses = fit([photo[::2, ::2].copy()], config, progress=False)
    assert not network.training and len(losses) == 60
    assert np.mean(losses[-15:]) < np.mean(losses[:15]) - 0.1


def test_tilt_network_command_reads_every_fold_beside_the_edge_stage(tmp_path, capsys):
    names = ["animals_cat.jpg", "animals_bison.jpg", "animals_horse.jpg", "animals_cow.jpg"]
    photos = copied_photos(tmp_path, names)
    target = tmp_path / "n.json"
    assert main(["tilt-network", "--images", str(photos), "--folds", "2", "--steps", "2", "--input-size", "33",
                 "--angle-step", "30", "--json", str(target)]) == 0
    summary = json.loads(target.read_text())
    assert summary["n_images"] == 4 and summary["residuals_deg"] == [-30.0, 0.0, 30.0]
    assert summary["config"]["steps"] == 2 and summary["config"]["group_order"] == 16
    expected_folds = {str(fold_of(tmp_path / "photos" / name, 2)) for name in names}
    for name in ("network", "network_gated", "edges", "edges_agreed"):
        figures = summary[name]
        assert set(figures["folds"]) == expected_folds
        assert figures["within_5deg"] == pytest.approx((figures["upright_kept"] + 2 * figures["tilts_found"]) / 3)
    out = capsys.readouterr().out
    assert "edge orientation where the C_N network agrees" in out and "C16 network at 33 px, 2 steps" in out


@pytest.mark.parametrize("args, message", [
    (["--group-order", "18"], "tilt network settings out of range"),
    (["--input-size", "96"], "tilt network settings out of range"),
    (["--group-order", "8"], "argument --group-order: 8 is less than 16"),
    (["--only-fold", "5"], "--only-fold takes 0 to 4 with --folds 5"),
    (["--angle-step", "90"], "--angle-step leaves no tilt beyond quarter turns"),
])
def test_tilt_network_command_refuses_settings_it_cannot_train(args, message, tmp_path, capsys):
    assert main(["tilt-network", "--images", str(UPRIGHT), *args, "--json", str(tmp_path / "n.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_the_line_segment_stage_reads_a_turned_facade_and_not_the_canvas(tmp_path, capsys):
    """Line segments of a chequered facade give its tilt at any turn; a plain photo turned on a canvas has only the
    canvas's border for segments, and those are not read. The command measures it as evaluate tilt does."""
    from canon.research.tilt_lines import LineSegmentTiltEstimator

    estimator = LineSegmentTiltEstimator()
    y, x = np.mgrid[0:300, 0:400]
    facade = np.repeat(((((x // 25) + (y // 40)) % 2) * 150 + 50).astype(np.uint8)[..., None], 3, axis=2)
    for degrees in (-30.0, 0.0, 20.0):
        tilt = estimator(geometry.rotate_image_free(facade, degrees))
        assert abs(tilt.degrees - degrees) < 1.0, degrees
    plain = geometry.rotate_image_free(np.full((300, 400, 3), 180, np.uint8), 20.0)
    assert not estimator.histogram(plain).any() and estimator(plain).degrees == 0.0
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(facade).save(folder / "facade.png")
    target = tmp_path / "lines.json"
    assert main(["tilt-lines", "--images", str(folder), "--angle-step", "30", "--gate", "1.5", "--json",
                 str(target)]) == 0
    summary = json.loads(target.read_text())
    assert summary["reader"] == "LineSegmentTiltEstimator" and summary["tilt_estimator"]["gate"] == 1.1
    assert summary["gates"]["1.5"]["within_5deg"] == 1.0
    assert summary["peaks"]["right_everywhere"] == 1
    assert "| 1.5 | 100.0 % | 100.0 % | 100.0 % |" in capsys.readouterr().out
