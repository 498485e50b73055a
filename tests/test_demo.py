"""The demo's library (``canon.demo``), without the page: a visitor's state, photos, the SAMs offered and loaded."""

import numpy as np
import pytest
from PIL import Image

from canon import demo, geometry
from canon.demo import (MAX_SIDE, SHOW, Click, Display, Models, Session, draw_panels, embeddings_to_prepare,
                        prepare_photo, sam_sources)
from canon.prompts import MAX_POINTS
from canon.registry import ModelUnavailableError, sam_names
from canon.render import DIFFERENCE_COLOUR
from canon.runtime import image_digest
from canon.segmenter import DualResult, PathResult, SamBackend
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


def test_the_sams_offered_list_a_registered_checkpoint_once_under_its_name(monkeypatch):
    monkeypatch.setattr(demo, "registered_sam", lambda path: "vit_b")  # what its sha256 says (test_registry)
    sources, first = sam_sources("/models/my_copy.pth")
    assert first == "vit_b" and sources["vit_b"] == "/models/my_copy.pth"
    assert list(sources) == sam_names()


def test_segment_everything_keeps_the_clicks_and_undo_brings_them_back():
    session = Session().with_photo(np.zeros((10, 10, 3), np.uint8)).clicked(2.5, 2.5, "object")
    everything = session.asking_everything()
    assert everything.everything and everything.clicks == session.clicks
    assert everything.undone().clicks == session.clicks and not everything.undone().everything
    assert everything.clicked(5.5, 5.5, "background").everything is False
    assert everything.cleared().clicks == () and session.key != everything.key


def test_a_new_photo_starts_at_its_own_angle_without_prompts():
    photo = np.zeros((10, 12, 3), np.uint8)
    session = Session().with_photo(photo, 90).clicked(2.5, 2.5, "object")
    again = session.with_photo(photo)
    assert again.angle == 0 and again.clicks == () and again.photo_id == session.photo_id != ""


def test_the_tilt_stage_outlives_the_photo_and_is_part_of_the_request():
    photo = np.zeros((10, 12, 3), np.uint8)
    session = Session().with_photo(photo, 30)
    tilted = session.with_tilt_stage(True)
    assert session.tilt_stage is None and tilted.tilt_stage is True and tilted.key != session.key
    assert tilted.with_photo(photo).tilt_stage is True and tilted.without_photo().tilt_stage is True
    assert tilted.without_photo().photo is None and tilted.with_tilt_stage(False).key != session.key


@pytest.mark.parametrize("served_with_tilt", [False, True])
def test_models_serve_the_canonicalizer_with_and_without_the_tilt_stage(paper_canonicalizer, standin_sam_path,
                                                                         served_with_tilt):
    """One set of weights, with the server's tilt settings where it has some; None is the server's choice."""
    from canon.tilt import TiltEstimator

    own = TiltEstimator(gate=1.0)
    served = paper_canonicalizer.with_tilt(own if served_with_tilt else None)
    models = Models(served, {"standin": str(standin_sam_path)}, device="cpu")
    assert models.canonicalizer_for(None) is served is models.canonicalizer_for(served_with_tilt)
    assert models.canonicalizer_for(False).tilt is None
    assert models.canonicalizer_for(True).tilt == (own if served_with_tilt else TiltEstimator())
    assert all(models.canonicalizer_for(on).network is served.network for on in (False, True))
    photo = prepare_photo(REPO / "examples" / "france_eiffelTower.jpg")[0]
    session = Session().with_photo(photo, 20)
    undone = {on: demo.canonicalized(models, session.with_tilt_stage(on)) for on in (False, True)}
    assert undone[False].canonicalization.tilt_deg == 0 and not undone[False].tilt_stage
    assert undone[True].canonicalization.tilt_deg != 0 and undone[True].tilt_stage
    assert models.segmenter("standin", True).canonicalizer is models.canonicalizer_for(True)


def test_models_say_which_sam_can_be_had_without_loading_it(paper_canonicalizer, standin_sam_path, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    models = Models(paper_canonicalizer, {"here": str(standin_sam_path), "gone": str(tmp_path / "x.pth"),
                                          "vit_h": "vit_h"}, device="cpu")
    assert [models.availability(c) for c in models.sam_choices] == ["here", "missing", "missing"]
    assert models.loaded("here") is None
    models.sam("here")
    assert models.loaded("here") is not None and models.availability("here") == "here"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert models.availability("vit_h") == "hub"


def test_embeddings_to_prepare_are_those_not_cached(paper_canonicalizer, standin_sam_path):
    models = Models(paper_canonicalizer, {"standin": str(standin_sam_path)}, device="cpu")
    session = Session().with_photo(prepare_photo(CAT)[0], 90)
    pending = embeddings_to_prepare(models, session, "standin")
    assert [name for name, _ in pending] == ["canonical", "turned"]
    [embedding] = demo.encode(models, "standin", [pending[0][1]])
    assert len(embeddings_to_prepare(models, session, "standin")) == 2  # encode stores nothing
    models.sam("standin").store(pending[0][1], embedding)
    assert [name for name, _ in embeddings_to_prepare(models, session, "standin")] == ["turned"]
    # A sweep needs the four quarter turns of the photo: their one canonical image (stored) and three turned ones;
    # the one turn that the canonicalizer leaves as it is is the canonical image itself.
    for_sweep = embeddings_to_prepare(models, session, "standin", "quarter turns")
    assert len(for_sweep) == 3 and all(name == "turned" for name, _ in for_sweep)
    # The tilt sweep shows SAM the upright photo (stored: the canonical image), three tilts of it, and what the
    # canonicalizer makes of each tilt where that is another image.
    for_tilts = [image_digest(image) for _, image in embeddings_to_prepare(models, session, "standin", "tilts")]
    tilted = [geometry.rotate_image_free(session.photo, a) for a in demo.SWEEPS["tilts"][1:]]
    canonical = [models.canonicalizer.canonicalize(image).canonical_image for image in tilted]
    assert len(for_tilts) == len(set(for_tilts)) and set(for_tilts) == {image_digest(i) for i in tilted + canonical}


def _dual() -> DualResult:
    """Two paths whose best masks overlap in part (SAM alone's: rows and columns 10-39; the other's: 25-54)."""
    a, b = np.zeros((2, 60, 90), bool)
    a[10:40, 10:40], b[25:55, 25:55] = True, True
    masks = np.stack([a, b, a | b])
    return DualResult(PathResult(masks, np.ones(3), 0, 0, False), PathResult(masks[[1, 0, 2]], np.ones(3), 0, 0, True),
                      None)  # draw_panels reads the masks only


def test_the_panels_draw_the_best_mask_every_candidate_or_the_difference():
    view = np.full((60, 90, 3), 128, np.uint8)
    dual = _dual()
    best = draw_panels(view, dual, Display())
    every = draw_panels(view, dual, Display(show="all candidates"))
    assert not np.array_equal(best[0], every[0])  # the other candidates' outlines
    assert np.array_equal(best[0][58, 88], view[58, 88])  # outside every mask: the photo as it is
    sam_view, canonicalized_view = draw_panels(view, dual, Display(show="difference"))
    assert np.array_equal(sam_view[15, 15], [round(0.25 * 128 + 0.75 * c) for c in DIFFERENCE_COLOUR])  # SAM's only
    assert np.array_equal(canonicalized_view[15, 15], view[15, 15])  # not in the canonicalized best mask
    faint, strong = (draw_panels(view, dual, Display(opacity=o))[0][20, 20] for o in (0.1, 0.9))
    assert abs(int(strong[2]) - 128) > abs(int(faint[2]) - 128)


@pytest.mark.parametrize("options, message", [({"show": "sideways"}, "show one of"), ({"opacity": 1.5}, "0 to 1"),
                                              ({"opacity": "x"}, "0 to 1")])
def test_display_options_are_checked(options, message):
    with pytest.raises(ValueError, match=message):
        Display(**options)
    assert len(SHOW) == 3
