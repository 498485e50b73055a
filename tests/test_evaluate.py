import pytest

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
