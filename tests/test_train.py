import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from canon import geometry
from canon.canonicalizer import Canonicalizer, NetworkSpec, Preprocessing
from canon.cli import main
from canon.networks import EscnnWRN, load_escnn_from_serving
from canon.train import TrainConfig, augment, views
from conftest import UPRIGHT, float32_logits


def copied_photos(tmp_path, names: list[str]):
    """A folder ``tmp_path / "photos"`` holding copies of the named shared photos."""
    photos = tmp_path / "photos"
    photos.mkdir(parents=True)
    for name in names:
        (photos / name).write_bytes((UPRIGHT / name).read_bytes())
    return photos


def test_augmented_views_are_valid_inputs(photo):
    rng = np.random.default_rng(0)
    views = [augment(photo, rng, TrainConfig(), Preprocessing())
             for _ in range(4)]
    assert all(v.shape == (3, 128, 128) and 0 <= v.min() and v.max() <= 1 for v in views)
    assert not torch.equal(views[0], views[1])


def test_paper_weights_round_trip_through_escnn(paper_canonicalizer, photo):
    """--init paper: the serving weights loaded into escnn give the paper's activations back."""
    escnn_model = load_escnn_from_serving(EscnnWRN(**asdict(NetworkSpec()), initialize=False),
                                          paper_canonicalizer.network).eval()
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
    assert trained.preprocessing.input_size == 64 and trained.preprocess(image).shape == (1, 3, 64, 64)
    decisions = [trained.canonicalize(geometry.rotate_image(image, k)) for k in range(4)]
    assert [d.k for d in decisions] == [(decisions[0].k + k) % 4 for k in range(4)]
    assert "best validation" in capsys.readouterr().out


def test_views_are_one_crop_at_two_sizes(photo):
    config = TrainConfig()
    sizes = [Preprocessing(input_size=s) for s in (64, 128)]
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    small, large = views(photo, rng, config, sizes)
    assert small.shape == (3, 64, 64) and large.shape == (3, 128, 128)
    assert torch.equal(small, augment(photo, twin, config, sizes[0]))  # the student's view, as without a teacher
    assert rng.bit_generator.state == twin.bit_generator.state  # advanced by exactly one view
    halved = torch.nn.functional.interpolate(large[None], size=64, mode="bilinear", antialias=True)[0]
    assert (halved - small).abs().mean() < 0.02  # the same crop, flip and colours


def test_resume_refuses_a_checkpoint_of_another_network_or_input_size(tmp_path, capsys):
    photos = copied_photos(tmp_path, ["animals_cat.jpg", "animals_dog.jpg", "animals_cow.jpg"])
    out = tmp_path / "run"
    common = ["train", "--images", str(photos), "--crops-per-photo", "1", "--epochs", "1", "--out", str(out)]
    assert main([*common, "--input-size", "48"]) == 0
    capsys.readouterr()
    assert main([*common, "--input-size", "64", "--epochs", "2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume from" in err[0] and "input_size 48 (asked: 64)" in err[0]
    assert main([*common, "--input-size", "48", "--arch", "wrn-c4-paper", "--epochs", "2", "--resume"]) == 2
    assert "its network differs (out_channels 16 (asked: 64), num_layers 6 (asked: 12))" in capsys.readouterr().err
    assert not (out / "epoch-2").exists()


def test_train_without_training_photos_ends_with_one_line(tmp_path, capsys):
    alone = copied_photos(tmp_path / "alone", ["animals_cat.jpg"])  # validation of fold 0 of 2
    assert main(["train", "--images", str(alone), "--folds", "2", "--out", str(tmp_path / "run")]) == 2
    assert "error: the split left no training photo" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--fold", "5"], "--fold takes 0 to 4 with --folds 5"),
    (["--folds", "1"], "argument --folds: 1 is less than 2"),
    (["--group", "C8"], "unrecognized arguments: --group C8"),  # C4 is all the library serves: no such option
    (["--arch", "resnet"], "argument --arch: invalid choice: 'resnet'"),
    (["--init", "paper"], "--init paper needs --arch wrn-c4-paper"),
    (["--input-size", "8"], "argument --input-size: 8 is not from 32 to 512"),
    (["--lr", "5"], "argument --lr: 5 is not above 0 and at most 1"),
    (["--lr", "nan"], "argument --lr: nan is not above 0"),
    (["--epochs", "0"], "argument --epochs: 0 is less than 1"),
    (["--teacher", "wrn-c4-paper"], "unrecognized arguments"),  # distillation is the research command line's
])
def test_train_refuses_what_it_cannot_do(args, message, tmp_path, capsys):
    assert main(["train", "--images", str(UPRIGHT), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
