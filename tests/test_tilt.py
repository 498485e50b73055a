import numpy as np
import pytest

from canon import geometry
from canon.tilt import Tilt, TiltEstimator, angular_error_deg

ESTIMATOR = TiltEstimator()


@pytest.fixture(scope="module")
def facade() -> np.ndarray:
    """A 300 x 400 x 3 uint8 chequer of 25 x 40 px cells: edges along both axes only, like windows on a wall."""
    y, x = np.mgrid[0:300, 0:400]
    cells = (((x // 25) + (y // 40)) % 2).astype(np.uint8) * 150 + 50
    return np.repeat(cells[..., None], 3, axis=2)


@pytest.mark.parametrize("degrees", [7.5, 15, 30, -20, -44])
def test_the_tilt_of_a_turned_facade_is_found(facade, degrees):
    tilt = ESTIMATOR(geometry.rotate_image_free(facade, degrees))
    assert abs(tilt.degrees - degrees) < 1.0 and tilt.confidence > ESTIMATOR.gate


@pytest.mark.parametrize("k", range(4))
def test_an_upright_facade_is_left_as_it_is(facade, k, paper_canonicalizer):
    image = geometry.rotate_image(facade, k)
    assert ESTIMATOR(image).degrees == 0
    with_tilt, without = paper_canonicalizer.with_tilt(ESTIMATOR), paper_canonicalizer.with_tilt(None)
    decision = with_tilt.canonicalize(image)
    assert decision.tilt_deg == 0 and np.array_equal(decision.canonical_image,
                                                      without.canonicalize(image).canonical_image)


def test_the_canvas_corners_of_a_turned_photo_are_not_its_edges():
    """A flat grey photo turned by 30 degrees has no edges of its own; the border of its black canvas does not
    count as one."""
    tilt = ESTIMATOR(geometry.rotate_image_free(np.full((240, 320, 3), 128, np.uint8), 30))
    assert tilt == Tilt(degrees=0.0, found_deg=tilt.found_deg, confidence=0.0)


def test_the_tilt_stage_is_exact_for_quarter_turns(photo, paper_canonicalizer):
    """The four quarter turns of a tilted photo: one tilt, the identical canonical image, and masks brought back
    that are quarter turns of one another bit for bit."""
    canonicalizer = paper_canonicalizer.with_tilt(ESTIMATOR)
    turned = geometry.rotate_image_free(photo, 25)
    decisions = [canonicalizer.canonicalize(geometry.rotate_image(turned, k)) for k in range(4)]
    assert decisions[0].tilt_deg != 0 and len({d.tilt_deg for d in decisions}) == 1
    assert [d.k for d in decisions] == [(decisions[0].k + k) % 4 for k in range(4)]
    assert all(np.array_equal(d.canonical_image, decisions[0].canonical_image) for d in decisions[1:])
    masks = np.random.default_rng(0).random((2, *decisions[0].canonical_image.shape[:2])) > 0.5
    back = [d.masks_to_input(masks, geometry.rotated_size(turned.shape[:2], k)) for k, d in enumerate(decisions)]
    assert back[0].shape == (2, *turned.shape[:2])
    assert all(np.array_equal(b, geometry.rotate_masks(back[0], k)) for k, b in enumerate(back))


@pytest.mark.parametrize("degrees", [20, 110, -160])
def test_prompts_and_masks_follow_the_untilted_photo(facade, paper_canonicalizer, degrees):
    """A red spot on a tilted facade: its centre goes to the spot in the canonical image, and the spot's mask in
    the canonical image comes back onto the spot in the input."""
    marked = facade.copy()
    marked[140:160, 290:310] = (255, 0, 0)
    image = geometry.rotate_image_free(marked, degrees)
    decision = paper_canonicalizer.with_tilt(ESTIMATOR).canonicalize(image)
    assert abs(decision.tilt_deg - geometry.split_degrees(degrees)[1]) < 1
    spot = geometry.rotate_points_free([[300, 150]], degrees, marked.shape[:2])
    x, y = decision.points_to_canonical(spot, image.shape[:2])[0]
    canonical = decision.canonical_image
    assert tuple(canonical[int(y), int(x)]) == (255, 0, 0)
    red = np.all(canonical == (255, 0, 0), axis=2)
    box = decision.boxes_to_canonical([[*spot[0] - 5, *spot[0] + 5]], image.shape[:2])[0]
    assert box[0] < x < box[2] and box[1] < y < box[3]
    back = decision.masks_to_input(red[None], image.shape[:2])[0]
    assert back.shape == image.shape[:2]
    assert np.all(image[back] == (255, 0, 0), axis=1).mean() > 0.9 and back.sum() > 0.5 * 400  # the rims blur


def test_angular_error_is_the_distance_on_the_circle():
    assert angular_error_deg(355, 5) == 10 and angular_error_deg(90 + 14.5, 15) == 89.5
    assert angular_error_deg(180, 0) == 180 and angular_error_deg(10, 100, period_deg=90) == 0


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="tilt settings"):
        TiltEstimator(gate=-1)


def test_an_odd_number_of_bins_is_refused():
    with pytest.raises(ValueError, match="tilt settings"):
        TiltEstimator(bins=9)  # no bin would be centred on 0 degrees, where the gate looks
