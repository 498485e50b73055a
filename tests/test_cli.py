import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from canon.cli import main
from canon.maskio import label_image, masks_from_coco
from conftest import REPO, UPRIGHT


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "canon", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)


def test_segment_writes_both_results(standin_sam_path, tmp_path, capsys):
    code = main(["segment", str(UPRIGHT / "animals_cat.jpg"), "--rotate", "90", "--point", "320,240",
                 "--point", "50,50,0", "--box", "200,120,460,400", "--sam", str(standin_sam_path),
                 "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "canonicalizer: k=" in out and "SAM + canonicalizer: 3 masks" in out
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["rotation_deg"] == 90 and set(record) >= {"canonicalizer", "iou", "sam", "canonicalized"}
    for path, stem in (("sam", "sam_alone"), ("canonicalized", "sam_canonicalized")):
        overlay = np.asarray(Image.open(tmp_path / f"{stem}_overlay.png"))
        assert overlay.shape == (640, 480, 3)  # the photo turned by 90 degrees
        # The mask files are the app's: a label PNG and COCO RLE JSON, read back by canon.maskio.
        masks, scores = masks_from_coco(json.loads((tmp_path / f"{stem}.json").read_text()))
        assert masks.shape == (3, 640, 480) and scores.shape == (3,)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"{stem}.png")), label_image(masks))
        assert record[path]["masks"]["annotations"] == json.loads((tmp_path / f"{stem}.json").read_text())[
            "annotations"]


def test_segment_undoes_a_tilt_with_the_tilt_stage(standin_sam_path, tmp_path, capsys):
    from canon import geometry
    from canon.images import load_image

    photo = tmp_path / "tilted.png"
    Image.fromarray(geometry.rotate_image_free(load_image(REPO / "examples" / "france_eiffelTower.jpg"), 20)).save(photo)
    assert main(["segment", str(photo), "--point", "380,300", "--tilt", "--sam", str(standin_sam_path),
                 "--out", str(tmp_path / "out")]) == 0
    assert "deg undone first" in capsys.readouterr().out
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert 15 < record["canonicalizer"]["tilt_deg"] < 25
    masks, _ = masks_from_coco(json.loads((tmp_path / "out" / "sam_canonicalized.json").read_text()))
    assert masks.shape[1:] == np.asarray(Image.open(photo)).shape[:2]  # back on the photo's own canvas


@pytest.mark.parametrize("args, message", [
    (["segment", "missing.jpg", "--point", "1,1", "--out", "OUT"], "cannot read missing.jpg"),
    (["segment", "IMAGE", "--point", "1,x", "--out", "OUT"], "argument --point: 'x' is not a number"),
    (["segment", "IMAGE", "--point", "1,1,7", "--out", "OUT"], "argument --point: point labels must be 1"),
    (["segment", "IMAGE", "--point", "1e400,1", "--out", "OUT"], "argument --point: prompt coordinates must be finite"),
    (["segment", "IMAGE", "--point", "1," + "9" * 400, "--out", "OUT"], "has more than 32 characters"),
    (["segment", "IMAGE", "--box", "1,2,3", "--out", "OUT"], "argument --box: give a box"),
    (["segment", "IMAGE", "--rotate", "45", "--point", "1,1", "--out", "OUT"], "not a multiple of 90"),
    (["segment", "IMAGE", "--point", "9999,1", "--out", "OUT"], "outside"),
    (["segment", "IMAGE", "--out", "OUT"], "--everything"),
    (["segment", "IMAGE", "--point", "1,1", "--out", "OUT", "--device", "tpu"], "invalid choice"),
    (["segment", "IMAGE", "--point", "1,1"], "--out"),
    (["evaluate", "orientation", "--images", "NOWHERE", "--json", "x.json"], "NOWHERE"),
])
@pytest.mark.slow  # python -m canon as a process of its own
def test_bad_arguments_exit_2_with_one_line_before_loading_models(args, message, tmp_path):
    args = [str(UPRIGHT / "animals_cat.jpg") if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a
            for a in args]
    # A SAM name that cannot resolve: reaching model loading would give a different error.
    result = run_cli(*args, *(["--sam", "no-such-model"] if args[0] == "segment" else []))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # python -m canon as a process of its own
def test_unreadable_image_is_refused(tmp_path):
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is text, not a JPEG")
    result = run_cli("segment", str(fake), "--point", "1,1", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.startswith("error: photo.jpg is not an image")


def test_evaluate_orientation_writes_the_summary(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("animals_cat.jpg", "animals_dog.jpg"):
        (folder / name).write_bytes((UPRIGHT / name).read_bytes())
    code = main(["evaluate", "orientation", "--images", str(folder), "--model", "wrn-c4-paper",
                 "--device", "cpu", "--json", str(tmp_path / "summary.json")])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"model", "n_images", "accuracy", "per_rotation", "median_ms", "mean_ms", "missed"}
    assert summary["n_images"] == 2 and set(summary["per_rotation"]) == {"0", "90", "180", "270"}
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["median_ms"] > 0 and summary["mean_ms"] > 0
    assert len(summary["missed"]) == round(2 * (1 - summary["accuracy"]))
    assert set(summary["missed"]) <= {"animals_cat.jpg", "animals_dog.jpg"}
    assert "| all (2 photos x 4) |" in capsys.readouterr().out


def test_evaluate_orientation_at_any_angle_writes_both_stages(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "animals_cat.jpg").write_bytes((UPRIGHT / "animals_cat.jpg").read_bytes())
    target = tmp_path / "o.json"
    assert main(["evaluate", "orientation", "--images", str(folder), "--angle-step", "30", "--tilt-gate", "1.5",
                 "--json", str(target)]) == 0
    summary = json.loads(target.read_text())
    assert summary["angles_deg"] == [30.0 * i for i in range(12)] and summary["tilt_estimator"]["gate"] == 1.5
    assert {"within_5deg", "median_error_deg", "full", "quarter_turns"} <= set(summary)
    assert set(summary["full"]["per_angle"]) == {f"{30 * i}" for i in range(12)}
    assert "with the tilt stage" in capsys.readouterr().out
    assert main(["evaluate", "orientation", "--images", str(folder), "--angle-step", "30", "--plot", "o.png",
                 "--json", str(target)]) == 2
    assert "--plot" in capsys.readouterr().err


def test_evaluate_tilt_writes_a_row_per_gate(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "animals_cat.jpg").write_bytes((UPRIGHT / "animals_cat.jpg").read_bytes())
    target = tmp_path / "t.json"
    assert main(["evaluate", "tilt", "--images", str(folder), "--gate", "1.2", "--gate", "3", "--json",
                 str(target)]) == 0
    summary = json.loads(target.read_text())
    assert list(summary["gates"]) == ["1.2", "3"] and summary["residuals_deg"] == [-45, -30, -15, 0, 15, 30]
    assert "| 3 |" in capsys.readouterr().out
    assert main(["evaluate", "tilt", "--images", str(folder), "--gate", "nan", "--json", str(target)]) == 2


def test_evaluate_orientation_on_one_side_of_the_split_at_another_input_size(tmp_path, capsys):
    from canon.data import split_files

    train, validation = split_files(sorted(UPRIGHT.glob("*.jpg")))
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in (train[0], validation[0], validation[1]):
        (folder / path.name).write_bytes(path.read_bytes())
    code = main(["evaluate", "orientation", "--images", str(folder), "--model", "wrn-c4-paper", "--input-size", "64",
                 "--split", "validation", "--device", "cpu", "--json", str(tmp_path / "summary.json")])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n_images"] == 2 and summary["model"] == "wrn-c4-paper at 64 px"
    fold_4 = split_files(sorted(UPRIGHT.glob("*.jpg")), 4, 5)[1]
    for path in fold_4[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    assert main(["evaluate", "orientation", "--images", str(folder), "--input-size", "64", "--split", "validation",
                 "--fold", "4", "--precision", "float32", "--recheck-margin", "inf", "--mirror-average",
                 "--mirror-margin", "inf", "--json", str(tmp_path / "fold.json")]) == 0
    summary = json.loads((tmp_path / "fold.json").read_text())
    assert summary["n_images"] == 2
    assert summary["model"].endswith("at 64 px in float32, recheck margin inf, mirror average on, mirror margin inf")
    for option, value in (("--recheck-margin", "-1"), ("--mirror-margin", "nan"), ("--input-size", "1024")):
        assert main(["evaluate", "orientation", "--images", str(folder), option, value,
                     "--json", str(tmp_path / "other.json")]) == 2
        bounds = "32 to 512" if option == "--input-size" else "0 to inf"
        assert f"argument {option}: {value} is not from {bounds}" in capsys.readouterr().err


@pytest.mark.slow  # python -m canon as a process of its own
def test_a_sam_that_is_not_a_checkpoint_is_one_error_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    result = run_cli("segment", str(UPRIGHT / "animals_cat.jpg"), "--point", "1,1", "--sam", str(notes),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: notes.txt "), result.stderr
