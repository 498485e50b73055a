import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from canon import geometry

sizes = st.tuples(st.integers(1, 9), st.integers(1, 9))
ks = st.integers(-8, 8)


@st.composite
def images(draw):
    height, width = draw(sizes)
    channels = draw(st.sampled_from([None, 1, 3]))
    shape = (height, width) if channels is None else (height, width, channels)
    return draw(arrays(np.uint8, shape))


@st.composite
def points(draw, size):
    height, width = size
    n = draw(st.integers(0, 6))
    xs = draw(st.lists(st.floats(0, width, allow_nan=False), min_size=n, max_size=n))
    ys = draw(st.lists(st.floats(0, height, allow_nan=False), min_size=n, max_size=n))
    return np.stack([np.array(xs, dtype=float), np.array(ys, dtype=float)], axis=1).reshape(-1, 2)


@given(images(), ks)
def test_image_round_trip_is_exact(image, k):
    rotated = geometry.rotate_image(image, k)
    assert rotated.shape[:2] == geometry.rotated_size(image.shape[:2], k)
    assert np.array_equal(geometry.unrotate_image(rotated, k), image)


@given(images(), ks, st.booleans())
def test_image_rotation_is_numpys_rot90(image, k, mirrored):
    """Pixels are moved as whole items for speed; the result is numpy's rot90, for contiguous inputs and views."""
    image = image[:, ::-1] if mirrored else image
    rotated = geometry.rotate_image(image, k)
    assert np.array_equal(rotated, np.rot90(image, k % 4, axes=(0, 1)))
    assert rotated.flags.c_contiguous and rotated.dtype == image.dtype


@given(images(), ks, ks)
def test_image_rotations_compose(image, a, b):
    assert np.array_equal(geometry.rotate_image(geometry.rotate_image(image, a), b), geometry.rotate_image(image, a + b))


@given(st.data(), sizes, ks)
def test_masks_round_trip_and_match_images(data, size, k):
    masks = data.draw(arrays(np.bool_, (3, *size)))
    rotated = geometry.rotate_masks(masks, k)
    assert np.array_equal(geometry.unrotate_masks(rotated, k), masks)
    for i in range(3):
        assert np.array_equal(rotated[i], geometry.rotate_image(masks[i], k))


@given(st.data(), sizes, ks)
def test_points_round_trip(data, size, k):
    pts = data.draw(points(size))
    back = geometry.unrotate_points(geometry.rotate_points(pts, k, size), k, size)
    np.testing.assert_allclose(back, pts, atol=1e-9)


@given(sizes, ks, st.data())
def test_points_follow_the_pixels(size, k, data):
    """A pixel centre maps to the centre of the pixel that rot90 moved it to (exact on the half-grid)."""
    height, width = size
    row, col = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    marker = np.zeros(size, dtype=np.uint8)
    marker[row, col] = 1
    rotated = geometry.rotate_image(marker, k)
    (new_row,), (new_col,) = np.nonzero(rotated)
    mapped = geometry.rotate_points([[col + 0.5, row + 0.5]], k, size)
    assert mapped.tolist() == [[new_col + 0.5, new_row + 0.5]]


@given(st.data(), sizes, ks)
def test_boxes_round_trip_and_cover_the_same_pixels(data, size, k):
    height, width = size
    x0, x1 = sorted(data.draw(st.lists(st.integers(0, width), min_size=2, max_size=2)))
    y0, y1 = sorted(data.draw(st.lists(st.integers(0, height), min_size=2, max_size=2)))
    box = np.array([[x0, y0, x1, y1]], dtype=float)
    rotated = geometry.rotate_boxes(box, k, size)
    assert np.array_equal(geometry.unrotate_boxes(rotated, k, size), box)
    inside = np.zeros(size, dtype=np.uint8)
    inside[y0:y1, x0:x1] = 1
    rx0, ry0, rx1, ry1 = rotated[0].astype(int)
    expected = np.zeros(geometry.rotated_size(size, k), dtype=np.uint8)
    expected[ry0:ry1, rx0:rx1] = 1
    assert np.array_equal(geometry.rotate_image(inside, k), expected)


def test_quarter_turn_is_counter_clockwise_as_displayed():
    image = np.array([[1, 2], [3, 4]])
    # The top-right pixel (2) moves to the top-left.
    assert geometry.rotate_image(image, 1).tolist() == [[2, 4], [1, 3]]


@pytest.mark.parametrize("degrees, k", [(0, 0), (90, 1), (-90, 3), (450, 1), (180.0, 2)])
def test_k_from_degrees(degrees, k):
    assert geometry.k_from_degrees(degrees) == k


@pytest.mark.parametrize("degrees", [45, 1.5, float("nan"), float("inf")])
def test_k_from_degrees_refuses_other_angles(degrees):
    with pytest.raises(ValueError):
        geometry.k_from_degrees(degrees)


# --- free angles ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("degrees, k, residual", [(0, 0, 0), (90, 1, 0), (100, 1, 10), (44, 0, 44), (45, 1, -45),
                                                  (-45, 0, -45), (-100, 3, -10), (270, 3, 0), (359, 0, -1)])
def test_split_degrees(degrees, k, residual):
    assert geometry.split_degrees(degrees) == (k, pytest.approx(residual))


def test_split_degrees_refuses_non_finite_angles():
    with pytest.raises(ValueError):
        geometry.split_degrees(float("nan"))


@given(images(), ks)
def test_free_rotation_by_quarter_turns_is_the_exact_one(image, k):
    assert np.array_equal(geometry.rotate_image_free(image, 90 * k), geometry.rotate_image(image, k))


@given(images().filter(lambda image: image.ndim == 2 or image.shape[2] == 3), st.sampled_from([7.5, 15, -30, 44]),
       ks)
def test_a_further_quarter_turn_of_a_free_rotation_is_exact(image, degrees, k):
    """The tilt is done first, so angles a quarter turn apart give quarter turns of one array, bit for bit."""
    assert np.array_equal(geometry.rotate_image_free(image, degrees + 90 * k),
                          geometry.rotate_image(geometry.rotate_image_free(image, degrees), k))
    assert geometry.rotate_image_free(image, degrees).flags.writeable  # a new array, not PIL's buffer


@given(st.data(), sizes, ks)
def test_free_rotation_of_points_by_quarter_turns_is_the_exact_one(data, size, k):
    pts = data.draw(points(size))
    assert np.array_equal(geometry.rotate_points_free(pts, 90 * k, size), geometry.rotate_points(pts, k, size))


@given(st.data(), sizes, ks)
def test_the_box_around_quarter_turned_corners_is_the_turned_box(data, size, k):
    height, width = size
    (x0, x1), (y0, y1) = (sorted(data.draw(st.lists(st.floats(0, side, allow_nan=False), min_size=2, max_size=2)))
                          for side in (width, height))
    boxes = np.array([[x0, y0, x1, y1]])
    around = geometry.boxes_around(boxes, lambda p: geometry.rotate_points(p, k, size))
    assert np.array_equal(around, geometry.rotate_boxes(boxes, k, size))


def test_the_box_around_tilted_corners_holds_the_tilted_box():
    box, size = np.array([[10.0, 20.0, 110.0, 70.0]]), (100, 200)
    corners = np.array([[10.0, 20.0], [110.0, 20.0], [110.0, 70.0], [10.0, 70.0]])
    turned = geometry.rotate_points_free(corners, 30, size)
    (x0, y0, x1, y1), = geometry.boxes_around(box, lambda p: geometry.rotate_points_free(p, 30, size))
    assert [x0, y0, x1, y1] == [*turned.min(axis=0), *turned.max(axis=0)] and x1 - x0 > 100 and y1 - y0 > 50


@given(st.data(), sizes, st.floats(-720, 720, allow_nan=False))
def test_free_rotation_of_points_round_trips(data, size, degrees):
    pts = data.draw(points(size))
    turned = geometry.rotate_points_free(pts, degrees, size)
    np.testing.assert_allclose(geometry.unrotate_points_free(turned, degrees, size), pts, atol=1e-9)
    # The photo lands inside the enlarged canvas (whose size is rounded to a millionth of a pixel first).
    height, width = geometry.free_rotated_size(size, degrees)
    assert np.all((turned >= -1e-6) & (turned <= np.array([width, height]) + 1e-6))


@pytest.mark.parametrize("size, degrees, expected", [((100, 100), 45, (142, 142)), ((480, 640), 100, (714, 584)),
                                                     ((480, 640), 180, (480, 640)), ((3, 5), 30, (6, 6))])
def test_free_rotation_enlarges_the_canvas(size, degrees, expected):
    assert geometry.free_rotated_size(size, degrees) == expected
    assert geometry.rotate_image_free(np.zeros((*size, 3), np.uint8), degrees).shape == (*expected, 3)


@pytest.mark.parametrize("degrees", [10, -30, 100, 217])
def test_free_rotation_moves_pixels_where_points_go(degrees):
    """A bright square's centre of mass after the image tilt is where the point map sends the square's centre."""
    image = np.zeros((60, 80), np.uint8)
    image[14:20, 49:55] = 255  # centre (52, 17) in continuous coordinates
    turned = geometry.rotate_image_free(image, degrees).astype(float)
    ys, xs = np.indices(turned.shape)
    centroid = np.array([(xs * turned).sum(), (ys * turned).sum()]) / turned.sum() + 0.5
    expected = geometry.rotate_points_free([[52.0, 17.0]], degrees, image.shape)[0]
    np.testing.assert_allclose(centroid, expected, atol=0.05)


def test_free_rotation_corners_are_outside_the_photo():
    size = (60, 80)
    canvas_corner = geometry.unrotate_points_free([[0.5, 0.5]], 30, size)[0]
    assert not (0 <= canvas_corner[0] <= 80 and 0 <= canvas_corner[1] <= 60)
    assert geometry.rotate_image_free(np.full((*size, 3), 200, np.uint8), 30)[0, 0].tolist() == [0, 0, 0]


@given(st.integers(1, 9), st.integers(1, 9), ks)
def test_free_mask_unrotation_by_quarter_turns_is_the_exact_one(height, width, k):
    masks = np.random.default_rng(height * 10 + width).random((2, height, width)) > 0.5
    turned = geometry.rotate_masks(masks, k)
    assert np.array_equal(geometry.unrotate_masks_free(turned, 90 * k, (height, width)), masks)


@pytest.mark.parametrize("degrees", [12, -33, 130])
def test_free_mask_unrotation_undoes_the_image_rotation(degrees):
    """A disc turned with the photo and brought back covers the disc it came from, but for its rim."""
    columns, rows = np.meshgrid(np.arange(80) + 0.5, np.arange(60) + 0.5)
    disc = (columns - 50) ** 2 + (rows - 25) ** 2 < 12 ** 2
    turned = geometry.rotate_image_free(disc.astype(np.uint8) * 255, degrees) > 127
    back = geometry.unrotate_masks_free(turned[None], degrees, disc.shape)[0]
    assert back.shape == disc.shape and np.logical_xor(back, disc).sum() < 0.1 * disc.sum()
