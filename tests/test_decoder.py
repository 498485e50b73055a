"""The decoder with per-image state: segment-anything's masks and scores, bit for bit."""

from __future__ import annotations

import pytest
import torch
from segment_anything import SamPredictor

from canon.decoder import decode_masks, image_state

PROMPTS = {
    "one point": dict(points=([[30.0, 40.0]], [1])),
    "points with a negative": dict(points=([[30.0, 40.0], [200.0, 100.0], [90.5, 10.25]], [1, 0, 1])),
    "box": dict(boxes=[[10.0, 20.0, 300.0, 200.0]]),
    "box and point": dict(points=([[50.0, 60.0]], [0]), boxes=[[10.0, 20.0, 300.0, 200.0]]),
}


def _prompt_tensors(prompt: dict) -> tuple:
    points = boxes = None
    if "points" in prompt:
        coords, labels = prompt["points"]
        points = (torch.tensor([coords]), torch.tensor([labels]))
    if "boxes" in prompt:
        boxes = torch.tensor(prompt["boxes"])
    return points, boxes


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", PROMPTS, ids=list(PROMPTS))
def test_decode_masks_equals_the_mask_decoder(standin_backend, prompt, multimask):
    model = standin_backend.model
    torch.manual_seed(1)
    embedding = torch.randn(1, 256, 64, 64)
    points, boxes = _prompt_tensors(PROMPTS[prompt])
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe()
        expected = model.mask_decoder(embedding, image_pe, sparse, dense, multimask)
        state = image_state(model.mask_decoder, embedding, image_pe, dense)
        actual = decode_masks(model.mask_decoder, state, sparse, multimask)
    assert actual[0].shape == (1, 3 if multimask else 1, 256, 256) and actual[1].shape == (1, 3 if multimask else 1)
    assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])


def test_the_state_is_reused_across_prompts_and_images(standin_backend, photo):
    """Clicks on two cached images, in turn, give SamPredictor's own answers; each image's state is made once."""
    predictor = standin_backend.predictor
    images = [photo, photo[::-1].copy()]
    coords, labels = torch.tensor([[[100.0, 80.0]]]), torch.tensor([[1]])
    states = []
    with torch.inference_mode():
        for image in images + images:
            predictor.set_image(image)
            masks, scores, low_res = predictor.predict_torch(coords, labels)
            expected = SamPredictor.predict_torch(predictor, coords, labels)
            assert torch.equal(masks, expected[0]) and torch.equal(scores, expected[1])
            assert torch.equal(low_res, expected[2])
            states.append(predictor.current.decoder_state)
    assert states[0] is states[2] and states[1] is states[3] and states[0] is not states[1]
    assert masks.shape == (1, 3, *photo.shape[:2])
