import io
import json

import numpy as np
import pytest
from PIL import Image

from canon import maskio
from canon.render import PALETTE


def _masks(n, height=7, width=9, seed=0):
    return np.random.default_rng(seed).random((n, height, width)) < 0.3


def test_label_image_gives_each_pixel_its_first_mask():
    masks = np.zeros((2, 2, 3), bool)
    masks[0, 0, :2] = True
    masks[1, 0, 1:] = True  # overlaps mask 0 at (row 0, col 1)
    assert maskio.label_image(masks).tolist() == [[1, 1, 2], [0, 0, 0]]


def test_png_holds_the_labels_in_the_overlay_colours_on_a_transparent_background():
    masks = _masks(3)
    image = Image.open(io.BytesIO(maskio.png_bytes(masks)))
    assert image.mode == "P" and image.info["transparency"] == 0
    assert np.array_equal(np.asarray(image), maskio.label_image(masks))
    palette = np.array(image.getpalette()[:12]).reshape(4, 3)
    assert np.array_equal(palette[1:], PALETTE[:3].astype(int))


def test_png_with_more_than_255_masks_is_16_bit():
    masks = np.zeros((300, 4, 300), bool)
    masks[np.arange(300), 0, np.arange(300)] = True
    image = Image.open(io.BytesIO(maskio.png_bytes(masks)))
    assert np.asarray(image)[0].tolist() == list(range(1, 301))


@pytest.mark.parametrize("n", [0, 1, 3])
def test_coco_json_round_trips(n, tmp_path):
    masks, scores = _masks(n), np.linspace(0.9, 0.5, n)
    png, path = maskio.save_masks(tmp_path, "sam", masks, scores, path="sam alone", rotation_deg=90)
    assert png.name == "sam.png" and png.stat().st_size > 0
    document = json.loads(path.read_text())
    assert document["path"] == "sam alone" and document["rotation_deg"] == 90
    assert document["image"] == {"height": 7, "width": 9}
    decoded, decoded_scores = maskio.masks_from_coco(document)
    assert np.array_equal(decoded, masks.reshape(n, 7, 9)) and np.allclose(decoded_scores, scores)
    for mask, annotation in zip(masks, document["annotations"]):
        assert annotation["area"] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
