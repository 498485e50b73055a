import numpy as np
import pytest
from PIL import Image

from canon.evaluate import orientation_accuracy

pytestmark = pytest.mark.slow  # the 215 shared photos through the paper network, and masks over many


def test_paper_canonicalizer_recovers_the_rotation_of_most_shared_photos(paper_canonicalizer, upright_files, capsys):
    """The issue's bar: at least 78 % of the rotated copies of shared/data/upright (a reference measurement of the
    model as served gave 84.2 %, 80.9 % without the mirror's look at near-ties). One decision per photo (the other
    rotations come from the orbit cache)."""
    summary = orientation_accuracy(paper_canonicalizer, upright_files, "wrn-c4-paper", progress=False)
    with capsys.disabled():
        print(f"\nwrn-c4-paper on {summary['n_images']} shared photos: {100 * summary['accuracy']:.1f} % recovered, "
              f"per rotation {summary['per_rotation']}, median {summary['median_ms']:.0f} ms")
    assert summary["accuracy"] >= 0.78
    # Exact equivariance: every rotation is recovered equally often.
    assert len(set(summary["per_rotation"].values())) == 1


def test_mask_consistency_separates_the_two_paths(paper_canonicalizer, standin_backend, upright_files):
    from canon.evaluate import consistency_table, mask_consistency
    from canon.segmenter import EquivariantSegmenter

    summary = mask_consistency(EquivariantSegmenter(paper_canonicalizer, standin_backend), upright_files[:2],
                               "standin", progress=False)
    assert summary["n_images"] == 2
    assert summary["canonicalized"]["mean_iou"] == 1.0  # exact equivariance
    assert set(summary["sam"]["per_rotation"]) == {"90", "180", "270"}
    assert 0.0 <= summary["sam"]["mean_iou"] < 1.0  # the stand-in SAM alone is not equivariant
    assert "| SAM + canonicalizer | 1.000 | 1.000 | 1.000 | 1.000 |" in consistency_table(summary)


def test_orientation_by_angle_measures_both_stages(paper_canonicalizer, upright_files):
    from canon.evaluate import orientation_by_angle, orientation_by_angle_table

    files = upright_files[:3]
    summary = orientation_by_angle(paper_canonicalizer, files, "wrn-c4-paper", 45, progress=False)
    assert summary["angles_deg"] == [45.0 * i for i in range(8)] and summary["n_images"] == 3
    full, quarter = summary["full"], summary["quarter_turns"]
    # The quarter-turn stage alone cannot undo half a quarter turn; on quarter turns it is the C4 evaluation.
    assert all(quarter["per_angle"][a] == {"within_5deg": 0.0, "median_error_deg": 45.0}
               for a in ("45", "135", "225", "315"))
    accuracy = orientation_accuracy(paper_canonicalizer, files, "wrn-c4-paper", progress=False)["accuracy"]
    assert quarter["quarter_turn_angles_within_5deg"] == accuracy
    # Exact for quarter turns, with the tilt stage too: angles a quarter turn apart fare identically.
    for stage in (full, quarter):
        assert len({str(stage["per_angle"][a]) for a in ("0", "90", "180", "270")}) == 1
        assert len({str(stage["per_angle"][a]) for a in ("45", "135", "225", "315")}) == 1
    assert summary["within_5deg"] == full["within_5deg"] and summary["median_error_deg"] == full["median_error_deg"]
    assert 1 <= len(full["folds"]) <= 3 and summary["tilt_ms"] > 0 and summary["network_ms"] > 0
    assert "| all (3 photos x 8) |" in orientation_by_angle_table(summary)


def test_mask_consistency_at_any_step_is_exact_at_quarter_turns(paper_canonicalizer, standin_backend, upright_files):
    from canon.evaluate import consistency_table, mask_consistency
    from canon.segmenter import EquivariantSegmenter

    files = upright_files[:1]
    quarter = mask_consistency(EquivariantSegmenter(paper_canonicalizer, standin_backend), files, "standin", 90,
                               progress=False)
    assert set(quarter["canonicalized"]["per_rotation"]) == {"90", "180", "270"}
    assert quarter["canonicalized"]["mean_iou"] == 1.0 and quarter["sam"]["mean_iou"] < 1.0
    tilted = mask_consistency(EquivariantSegmenter(paper_canonicalizer.with_tilt(), standin_backend), files,
                              "standin", 45, progress=False)
    assert set(tilted["sam"]["per_rotation"]) == {f"{45 * i}" for i in range(1, 8)} and tilted["angle_step_deg"] == 45
    assert all(0.0 <= v <= 1.0 for path in ("sam", "canonicalized") for v in tilted[path]["per_rotation"].values())
    assert "| SAM + canonicalizer |" in consistency_table(tilted)


def test_tilt_estimates_trade_tilts_found_against_upright_photos_kept(upright_files, tmp_path):
    """A chequered facade has its tilt found at every residual with any gate; a flat photo has none, and stays
    upright; a higher gate never finds more tilts nor keeps fewer upright photos."""
    from canon.evaluate import tilt_estimates, tilt_estimates_table

    y, x = np.mgrid[0:300, 0:400]
    facade = np.repeat(((((x // 25) + (y // 40)) % 2) * 150 + 50).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(facade).save(tmp_path / "facade.png")
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    files = [tmp_path / "facade.png", tmp_path / "flat.png"]
    summary = tilt_estimates(files, 30, [1.0, 1.5], progress=False)
    assert summary["residuals_deg"] == [-30.0, 0.0, 30.0] and list(summary["gates"]) == ["1", "1.5"]
    for figures in summary["gates"].values():
        assert figures["upright_kept"] == 1.0 and figures["tilts_found"] == 0.5  # the facade's two tilts only
        assert figures["per_residual"] == {"-30": 0.5, "0": 1.0, "30": 0.5}
    real = tilt_estimates(upright_files[:6], 15, [1.0, 1.1, 2.0], progress=False)["gates"]
    assert real["1"]["tilts_found"] >= real["1.1"]["tilts_found"] >= real["2"]["tilts_found"]
    assert real["1"]["upright_kept"] <= real["1.1"]["upright_kept"] <= real["2"]["upright_kept"]
    assert "| 1.5 | 100.0 % | 50.0 % | 66.7 % |" in tilt_estimates_table(summary)


def test_tilt_peaks_tell_a_photo_whose_up_is_not_along_its_edges(tmp_path):
    """A facade is read right at every tilt; a bar lying at 30 degrees on a plain ground is read wrong at every
    tilt by the same 30 degrees (its edges turn with it, its up is the frame's); a flat photo has no peak to trust.
    A perfect gate keeps the facade's three readings and the upright photo of the other two."""
    from canon.evaluate import tilt_estimates, tilt_peaks_table

    y, x = np.mgrid[0:300, 0:400]
    facade = np.repeat(((((x // 25) + (y // 40)) % 2) * 150 + 50).astype(np.uint8)[..., None], 3, axis=2)
    Image.fromarray(facade).save(tmp_path / "facade.png")
    t = np.radians(30.0)  # counter-clockwise as displayed (y points down)
    along, across = (x - 200) * np.cos(t) - (y - 150) * np.sin(t), (x - 200) * np.sin(t) + (y - 150) * np.cos(t)
    bar = np.where((np.abs(along) < 120) & (np.abs(across) < 12), 60, 220).astype(np.uint8)
    Image.fromarray(np.repeat(bar[..., None], 3, axis=2)).save(tmp_path / "bar.png")
    Image.fromarray(np.full((300, 400, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    summary = tilt_estimates([tmp_path / name for name in ("facade.png", "bar.png", "flat.png")], 30, [1.1],
                             progress=False)
    peaks = summary["peaks"]
    assert (peaks["right_everywhere"], peaks["one_offset"], peaks["mixed"]) == (1, 1, 1)
    assert list(peaks["offset_photos"]) == ["bar.png"] and abs(peaks["offset_photos"]["bar.png"] - 30) < 5
    assert peaks["perfect_gate_within_5deg"] == pytest.approx(5 / 9)
    table = tilt_peaks_table(summary)
    assert "| wrong at every tilt, by one offset | 1 | 33.3 % |" in table and "55.6 %" in table
