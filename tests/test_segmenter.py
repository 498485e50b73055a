import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from canon import geometry
from canon.images import load_image
from canon.registry import ModelUnavailableError
from canon.render import mask_iou
from canon.prompts import Prompts
from conftest import STANDIN_ARCHITECTURE
from canon.runtime import encoder_dtype
from canon.segmenter import (SAM_ARCHITECTURES, EquivariantSegmenter, SamBackend, build_sam, infer_architecture,
                             load_sam)


@pytest.mark.parametrize("name", sorted(SAM_ARCHITECTURES))
def test_architecture_is_read_off_the_checkpoint(name):
    with torch.device("meta"):  # shapes only: no memory for ViT-H's 636 M parameters
        state = build_sam(SAM_ARCHITECTURES[name]).state_dict()
    assert infer_architecture(state) == SAM_ARCHITECTURES[name]


def test_standin_loads_through_the_real_path(standin_sam_path):
    sam = load_sam(standin_sam_path)
    assert sam.image_encoder.patch_embed.proj.out_channels == 32


def test_load_refuses_a_checkpoint_that_is_not_sam(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ModelUnavailableError, match="not a usable SAM checkpoint"):
        load_sam(path)


def test_load_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"payload": object()}, path)  # weights_only=True must not unpickle objects
    with pytest.raises(ModelUnavailableError):
        load_sam(path)


PROMPTS = Prompts.make([[320.5, 240.5], [100.5, 60.5]], [1, 0], box=[200, 120, 460, 400])


@pytest.fixture(scope="module")
def segmenter(paper_canonicalizer, standin_backend):
    return EquivariantSegmenter(paper_canonicalizer, standin_backend)


def test_canonicalized_masks_are_exactly_equivariant(segmenter, upright_files, capsys):
    """For shared photos and every k, canonicalized masks for rot90(x, k) (prompts rotated) equal rot90(masks(x), k)
    bit for bit; SAM alone may differ, and the drift is reported."""
    drifts = []
    for path in upright_files[::54]:
        image = load_image(path)
        height, width = image.shape[:2]
        prompts = Prompts.make([[width / 2, height / 2], [width / 5, height / 6]], [1, 0],
                               box=[width / 4, height / 4, 3 * width / 4, 3 * height / 4])
        base = segmenter.segment(image, prompts)
        for k in range(1, 4):
            result = segmenter.segment(geometry.rotate_image(image, k), prompts.rotated(k, image.shape[:2]))
            assert np.array_equal(result.canonicalized.masks, geometry.rotate_masks(base.canonicalized.masks, k))
            assert np.array_equal(result.canonicalized.scores, base.canonicalized.scores)
            drifts.append(mask_iou(geometry.unrotate_masks(result.sam.masks, k)[0], base.sam.masks[0]))
    with capsys.disabled():
        print(f"\nSAM alone (stand-in) best-mask IoU against its upright result: median {np.median(drifts):.3f}, "
              f"min {np.min(drifts):.3f} over {len(drifts)} rotated inputs")
    assert len(drifts) == 12


def test_four_rotations_cost_one_canonical_encoder_pass(segmenter, photo):
    image = np.ascontiguousarray(photo[:, ::-1])  # not seen by the session's caches yet
    results = [segmenter.segment(geometry.rotate_image(image, k), PROMPTS.rotated(k, image.shape[:2]))
               for k in range(4)]
    assert [r.sam.cached for r in results] == [False] * 4
    # The canonical image is encoded once at most (not at all when it is the k = 0 input SAM alone just encoded).
    assert [r.canonicalized.cached for r in results][1:] == [True, True, True]
    assert results[0].canonicalized.cached == (results[0].canonicalization.k == 0)
    again = segmenter.segment(image, Prompts.make([[10.5, 10.5]]))
    assert again.sam.cached and again.canonicalized.cached  # a new click only runs the decoder


def test_embeddings_computed_ahead_serve_the_next_request(segmenter, photo):
    image = 255 - photo  # no turn or mirror image of it is in the session's caches yet
    turned = geometry.rotate_image(image, 1)
    needed = segmenter.images_needed(turned)
    decision = segmenter.canonicalizer.canonicalize(turned)
    assert needed[0][0] == "canonical" and np.array_equal(needed[0][1], decision.canonical_image)
    assert [name for name, _ in needed] == (["canonical", "turned"] if decision.k else ["canonical"])
    assert not any(segmenter.sam.has_embedding(shown) for _, shown in needed)
    assert all(segmenter.sam.embed(shown) > 0 for _, shown in needed)
    assert segmenter.sam.encoder_ms > 0 and segmenter.sam.embed(turned) == 0.0  # cached now
    result = segmenter.segment(turned, PROMPTS.rotated(1, image.shape[:2]))
    assert result.sam.cached and result.canonicalized.cached


def test_an_embedding_made_elsewhere_serves_clicks_bit_for_bit(standin_sam_path, photo):
    # ZeroGPU's way: encode in the GPU worker (a pickled result), store in the serving process, decode there.
    encoding, serving = (SamBackend(load_sam(standin_sam_path), name="standin") for _ in range(2))
    embedding = pickle.loads(pickle.dumps(encoding.encode(photo)))
    assert not encoding.has_embedding(photo)  # encode keeps nothing
    serving.store(photo, embedding)
    assert serving.has_embedding(photo) and serving.embed(photo) == 0.0
    stored = serving.predict(photo, PROMPTS)
    computed = encoding.predict(photo, PROMPTS)
    assert stored.cached and not computed.cached
    assert np.array_equal(stored.masks, computed.masks) and np.array_equal(stored.scores, computed.scores)


def test_encoder_precision_resolves_to_native_arithmetic_only(monkeypatch):
    cpu = torch.device("cpu")
    assert encoder_dtype("float32", cpu) is torch.float32 and encoder_dtype("bfloat16", cpu) is torch.bfloat16
    monkeypatch.setattr("canon.runtime.bfloat16_is_native", lambda device: False)
    assert encoder_dtype("auto", cpu) is torch.float32
    monkeypatch.setattr("canon.runtime.bfloat16_is_native", lambda device: True)
    assert encoder_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown SAM precision"):
        SamBackend(build_sam(STANDIN_ARCHITECTURE), precision="half")


def test_a_bfloat16_encoder_moves_the_embedding_a_little_and_keeps_float32_features(standin_sam_path, photo):
    full, half = (SamBackend(load_sam(standin_sam_path), precision=p) for p in ("float32", "bfloat16"))
    assert half.encoder_dtype is torch.bfloat16
    reference, reduced = full.encode(photo).features, half.encode(photo).features
    assert reduced.dtype is torch.float32  # the decoder and the cache stay in float32
    relative_error = float((reduced - reference).norm() / reference.norm())
    assert 0 < relative_error < 0.05


def test_an_input_that_is_already_canonical_runs_the_decoder_once(segmenter, photo):
    k = segmenter.canonicalizer.canonicalize(photo).k
    turned, prompts = geometry.rotate_image(photo, -k), PROMPTS.rotated(-k, photo.shape[:2])  # its canonical image
    result = segmenter.segment(turned, prompts)
    assert result.canonicalization.k == 0
    assert result.canonicalized.decoder_ms == 0.0 and result.canonicalized.cached
    again = segmenter.sam.predict(turned, prompts)  # what running SAM on the canonical image gives
    assert np.array_equal(result.canonicalized.masks, again.masks)
    assert np.array_equal(result.canonicalized.scores, again.scores)


def test_multimask_and_single_mask(segmenter, photo):
    multi = segmenter.segment(photo, Prompts.make([[320.5, 240.5]]))
    single = segmenter.segment(photo, Prompts.make(box=[100, 100, 300, 300]), multimask=False)
    assert multi.sam.masks.shape == (3, 480, 640) and multi.sam.masks.dtype == bool
    assert list(multi.sam.scores) == sorted(multi.sam.scores, reverse=True)
    assert single.canonicalized.masks.shape == (1, 480, 640)


def test_segment_everything_is_exactly_equivariant(segmenter, photo):
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    base = segmenter.segment_everything(photo, **options)
    rotated = segmenter.segment_everything(geometry.rotate_image(photo, 1), **options)
    assert len(base.canonicalized.masks) > 0
    assert np.array_equal(rotated.canonicalized.masks, geometry.rotate_masks(base.canonicalized.masks, 1))
    for result in (base.sam, base.canonicalized):  # best first, as the legend and the mask files say
        assert list(result.scores) == sorted(result.scores, reverse=True)


def test_segment_everything_one_point_at_a_time_matches_sams_batches(standin_backend, photo):
    """On a CPU the points go one by one through the cached decoder state; SAM's batches of 64 give the same masks
    up to float rounding (a few pixels at the threshold) and the same scores to 1e-5."""
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    alone = standin_backend.everything(photo, **options)
    batched = standin_backend.everything(photo, points_per_batch=64, **options)
    assert len(alone.masks) == len(batched.masks) == 48  # 16 points x 3 masks, none suppressed
    np.testing.assert_allclose(alone.scores, batched.scores, atol=1e-5)
    assert min(mask_iou(a, b) for a, b in zip(alone.masks, batched.masks)) > 0.999


@pytest.mark.parametrize("prompts, message", [
    (Prompts.make([[700, 10]]), "outside"),
    (Prompts.make([[float("nan"), 10]]), "finite"),
    (Prompts.make(box=[10, 10, 10, 50]), "zero-area"),
    (Prompts.make([[1, 1]] * 65), "too many"),
    (Prompts.make([[1, 1]], [2]), "labels"),
])
def test_bad_prompts_are_refused_with_a_sentence(segmenter, photo, prompts, message):
    with pytest.raises(ValueError, match=message):
        segmenter.segment(photo, prompts)


def test_no_prompt_is_refused(standin_backend, photo):
    with pytest.raises(ValueError, match="add a point or a box"):
        standin_backend.predict(photo, Prompts.make())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.floats(), st.floats()), max_size=70), st.lists(st.integers(-2, 3), max_size=70),
       st.none() | st.tuples(st.floats(), st.floats(), st.floats(), st.floats()))
def test_fuzz_prompt_validation_accepts_or_refuses_with_a_sentence(points, labels, box):
    prompts = Prompts(np.array(points, dtype=np.float64).reshape(-1, 2), np.array(labels, dtype=np.int64),
                      None if box is None else np.array(box))
    try:
        prompts.validate((480, 640))
    except ValueError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert len(prompts.points) == len(prompts.labels) <= 64
        assert np.all((prompts.points >= 0) & (prompts.points <= [640, 480]))


def test_the_tilt_stage_keeps_both_paths_exact_for_quarter_turns(paper_canonicalizer, standin_backend):
    """A photo tilted 20 degrees: SAM + canonicalizer sees it untilted (the tilt found), its masks come back on the
    photo's own canvas, and its sweep over quarter turns agrees to the bit."""
    from conftest import REPO

    tilted = geometry.rotate_image_free(load_image(REPO / "examples" / "france_eiffelTower.jpg"), 20)
    segmenter = EquivariantSegmenter(paper_canonicalizer.with_tilt(), standin_backend)
    height, width = tilted.shape[:2]
    entries = segmenter.sweep(tilted, Prompts.make([[width / 2, height / 2]]))
    decision = entries[0].result.canonicalization
    assert abs(decision.tilt_deg - 20) < 3 and decision.canonical_image.shape[0] > height
    assert [name for name, _ in segmenter.images_needed(tilted)] == ["canonical", "turned"]
    assert entries[0].result.canonicalized.masks.shape[1:] == (height, width)
    assert all(entry.canonicalized_iou == 1.0 for entry in entries)


def test_a_sweep_over_tilts_brings_every_mask_back_to_the_upright_photo(paper_canonicalizer, standin_backend):
    """The prompts follow the photo to each tilt, and each path's masks come back onto the upright photo's pixels
    (SAM alone's: its answer on the tilted photo, brought back by nearest neighbour)."""
    from conftest import REPO

    photo = load_image(REPO / "examples" / "france_eiffelTower.jpg")
    height, width = photo.shape[:2]
    prompts = Prompts.make([[width / 2, height / 2]])
    segmenter = EquivariantSegmenter(paper_canonicalizer.with_tilt(), standin_backend)
    entries = segmenter.sweep(photo, prompts, degrees=(0, 15, 30, 45))
    assert [entry.degrees for entry in entries] == [0, 15, 30, 45]
    assert entries[0].sam_iou == entries[0].canonicalized_iou == 1.0
    for entry in entries:
        assert entry.result.sam.masks.shape[1:] == entry.result.canonicalized.masks.shape[1:] == (height, width)
        turned = geometry.rotate_image_free(photo, entry.degrees)
        direct = segmenter.sam.predict(turned, prompts.turned(entry.degrees, (height, width)))
        back = geometry.unrotate_masks_free(direct.masks, entry.degrees, (height, width))
        assert np.array_equal(back, entry.result.sam.masks)
