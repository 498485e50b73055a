"""The demo's library (``canon.demo``), without the page: a visitor's state, photos, the SAMs offered and loaded."""

import numpy as np
import pytest
from PIL import Image

from canon.demo import MAX_SIDE, Click, Models, Session, prepare_photo, sam_sources
from canon.prompts import MAX_POINTS
from canon.registry import ModelUnavailableError, sam_names
from canon.segmenter import SamBackend
from conftest import REPO

CAT = REPO / "examples" / "animals_cat.jpg"


def test_clicks_are_kept_in_the_upright_photo_and_follow_the_turn():
    photo = np.zeros((4, 6, 3), np.uint8)
    session = Session().with_photo(photo).rotated_to(90).clicked(1.5, 2.5, "object")
    # In the view (the photo turned 90 degrees, 6 x 4), (1.5, 2.5) is the photo's (x, y) = (6 - 2.5, 1.5).
    assert session.clicks == (Click(3.5, 1.5, "object"),)
    np.testing.assert_allclose(session.prompts().points, [[1.5, 2.5]])
    np.testing.assert_allclose(session.rotated_to(0).prompts().points, [[3.5, 1.5]])
    assert session.rotated_to(180).prompts().labels.tolist() == [1]


def test_corner_clicks_pair_up_into_a_box():
    session = Session().with_photo(np.zeros((10, 10, 3), np.uint8)).clicked(7.5, 2.5, "corner")
    assert not session.has_prompts and session.pending_corner().tolist() == [7.5, 2.5]
    session = session.clicked(1.5, 8.5, "corner")
    assert session.has_prompts and session.pending_corner() is None
    assert session.prompts().box.tolist() == [1.5, 2.5, 7.5, 8.5]
    session = session.clicked(5.5, 5.5, "corner")  # a third corner starts the next box; the last complete one stays
    assert session.prompts().box.tolist() == [1.5, 2.5, 7.5, 8.5] and session.pending_corner() is not None
    assert session.undone().undone().prompts().box is None


def test_session_refuses_clicks_off_the_photo_and_too_many_points():
    session = Session().with_photo(np.zeros((40, 60, 3), np.uint8)).rotated_to(30)
    with pytest.raises(ValueError, match="corner the tilt left black"):
        session.clicked(0.5, 0.5, "object")
    with pytest.raises(ValueError, match="upload a photo first"):
        Session().clicked(1, 1, "object")
    crowded = Session(photo=np.zeros((40, 60, 3), np.uint8), clicks=(Click(1, 1, "object"),) * MAX_POINTS)
    with pytest.raises(ValueError, match=f"at most {MAX_POINTS} points"):
        crowded.clicked(2, 2, "background")


def test_prepare_photo_shrinks_large_photos(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (2 * MAX_SIDE, MAX_SIDE // 2), (10, 20, 30)).save(path)
    photo, size = prepare_photo(path)
    assert photo.shape == (MAX_SIDE // 4, MAX_SIDE, 3) and size == (MAX_SIDE // 2, 2 * MAX_SIDE)
    cat, size = prepare_photo(CAT)
    assert size == cat.shape[:2]


def test_models_load_sam_once_on_first_use_and_keep_a_bounded_number(paper_canonicalizer, standin_sam_path):
    models = Models(paper_canonicalizer, {"a": str(standin_sam_path), "b": str(standin_sam_path)}, device="cpu")
    first = models.sam("a")
    assert isinstance(first, SamBackend) and models.sam("a") is first
    models.sam("b")  # max_loaded=1: "a" is dropped
    assert models.sam("a") is not first
    with pytest.raises(ModelUnavailableError, match="unknown SAM 'c'"):
        models.sam("c")


def test_models_remember_a_failure_for_a_while(paper_canonicalizer, standin_sam_path, tmp_path):
    target = tmp_path / "later.pth"
    models = Models(paper_canonicalizer, {"later": str(target)}, device="cpu", retry_after_s=3600)
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        models.sam("later")
    target.write_bytes(standin_sam_path.read_bytes())
    with pytest.raises(ModelUnavailableError, match="does not exist"):  # not asked again so soon
        models.sam("later")
    models.retry_after_s = 0
    assert isinstance(models.sam("later"), SamBackend)


def test_the_sams_offered_are_the_registrys_and_a_local_checkpoint_first():
    sources, first = sam_sources()
    assert sources == {name: name for name in sam_names()} and first == "vit_b"
    assert sam_sources("vit_l")[1] == "vit_l"
    sources, first = sam_sources("/models/sam_vit_b_01ec64.pth")
    assert first == "sam_vit_b_01ec64.pth (local)" and list(sources)[0] == first
    assert sources[first] == "/models/sam_vit_b_01ec64.pth" and set(sam_names()) < set(sources)
