import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from canon import geometry
import dataclasses

from canon import networks
from canon.canonicalizer import Canonicalizer, DecisionPolicy, Preprocessing, orbit_representative, prior_loss
from canon.networks import FLOAT32, Arithmetic
from canon.images import load_image
from canon.tilt import TiltEstimator
from conftest import REPO, float32_logits


@st.composite
def small_images(draw):
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    # Few distinct values, so that symmetric images (tied rotations) are common.
    return draw(arrays(np.uint8, (height, width, 3), elements=st.integers(0, 2)))


@given(small_images(), st.integers(0, 3))
def test_orbit_representative_is_equivariant(image, k):
    j = orbit_representative(image)
    j_rotated = orbit_representative(geometry.rotate_image(image, k))
    # Whatever the tie-breaking, both pick the identical array.
    assert np.array_equal(geometry.rotate_image(image, -j),
                          geometry.rotate_image(geometry.rotate_image(image, k), -j_rotated))
    assert geometry.rotate_image(image, -j).shape[0] <= geometry.rotate_image(image, -j).shape[1]


@pytest.mark.parametrize("size", [(480, 640), (481, 640), (300, 301), (1, 5000), (1024, 1024), (50, 70)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_preprocessing_commutes_with_rotation(size, k):
    rng = np.random.default_rng(sum(size) + k)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    base = Preprocessing()(image)
    rotated = Preprocessing()(geometry.rotate_image(image, k))
    assert base.shape == (1, 3, 128, 128)
    assert torch.allclose(rotated, torch.rot90(base, k, dims=(2, 3)), atol=1e-5)


def test_canonicalize_is_exactly_equivariant(paper_canonicalizer, upright_files):
    for path in upright_files[:3]:
        image = load_image(path)
        base = paper_canonicalizer.canonicalize(image)
        for k in range(4):
            decision = paper_canonicalizer.canonicalize(geometry.rotate_image(image, k))
            assert decision.k == (base.k + k) % 4
            assert np.array_equal(decision.canonical_image, base.canonical_image)
            assert np.array_equal(decision.probabilities, np.roll(base.probabilities, k))
            assert np.array_equal(decision.canonical_image, geometry.rotate_image(geometry.rotate_image(image, k),
                                                                                  -decision.k))


def test_rotations_of_one_photo_cost_one_network_pass(paper_canonicalizer, photo):
    image = photo // 2 + 7  # a picture no test of this session has canonicalized (nor any turn or mirror of it)
    cached = [paper_canonicalizer.canonicalize(geometry.rotate_image(image, k)).cached for k in range(4)]
    assert cached == [False, True, True, True]


def test_probabilities_and_decision(paper_canonicalizer, photo):
    decision = paper_canonicalizer.canonicalize(photo)
    assert decision.probabilities.shape == (4,)
    assert decision.probabilities.sum() == pytest.approx(1.0)
    assert decision.k == int(np.argmax(decision.probabilities))
    assert decision.angle_deg == 90 * decision.k
    assert decision.canonical_image.dtype == np.uint8


def test_prior_loss_is_minus_log_probability_of_identity():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    expected = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    assert torch.allclose(prior_loss(logits), expected)


def test_save_and_from_pretrained_round_trip(paper_canonicalizer, photo, tmp_path):
    paper_canonicalizer.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "config.json").exists() and (tmp_path / "copy" / "model.safetensors").exists()
    copy = Canonicalizer.load(str(tmp_path / "copy"))
    assert np.array_equal(copy.logits(photo), paper_canonicalizer.logits(photo))


def test_from_pretrained_refuses_an_incomplete_file(paper_canonicalizer, tmp_path):
    from safetensors.torch import load_file, save_file

    paper_canonicalizer.save_pretrained(tmp_path / "broken")
    state = load_file(tmp_path / "broken" / "model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "broken" / "model.safetensors")
    with pytest.raises(RuntimeError, match="Missing key"):
        Canonicalizer.load(str(tmp_path / "broken"))


def test_the_paper_model_is_served_in_8_bits_with_float32_decisions(paper_canonicalizer, photo):
    assert paper_canonicalizer.policy == DecisionPolicy(precision="int8", recheck_margin=1.0, mirror_average=True,
                                                        mirror_margin=1.0)  # near-ties get the mirror's look too
    image = photo[:, ::-1].copy()
    base = paper_canonicalizer.canonicalize(image)
    assert base.k == int(np.argmax(float32_logits(paper_canonicalizer, image)))
    for k in range(1, 4):  # exactly equivariant in 8 bits too: one network pass on the orbit's representative
        decision = paper_canonicalizer.canonicalize(geometry.rotate_image(image, k))
        assert decision.k == (base.k + k) % 4
        assert np.array_equal(decision.canonical_image, base.canonical_image)


def test_settings_are_immutable_and_a_new_policy_starts_with_an_empty_cache(paper_canonicalizer, photo):
    with pytest.raises(AttributeError):
        paper_canonicalizer.policy = DecisionPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper_canonicalizer.policy.mirror_margin = 0.0
    image = photo[::-1, ::-1].copy()
    mirrored = paper_canonicalizer.with_policy(precision="float32", mirror_margin=float("inf"))
    first = mirrored.canonicalize(image)
    plain = mirrored.with_policy(mirror_average=False)
    assert (plain.policy.mirror_average, plain.policy.mirror_margin) == (False, float("inf"))
    assert plain.network is mirrored.network and paper_canonicalizer.policy.precision == "int8"  # shared, untouched
    # Before, a setting changed after a first call kept serving the decision cached under the old one.
    again = plain.canonicalize(image)
    assert not again.cached and mirrored.canonicalize(image).cached
    np.testing.assert_allclose(again.logits, float32_logits(paper_canonicalizer, image), atol=1e-4)
    assert np.abs(again.logits - first.logits).max() > 1e-3  # first: the mirror's average (every photo a near-tie)
    smaller = paper_canonicalizer.with_preprocessing(input_size=64)
    assert smaller.preprocess(image).shape == (1, 3, 64, 64) and smaller.policy == paper_canonicalizer.policy


def test_settings_come_from_config_json_sections_and_unknown_ones_are_refused(paper_canonicalizer, tmp_path):
    paper_canonicalizer.with_policy(precision="bfloat16").save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"precision": "bfloat16"' in config and '"input_size": 128' in config
    assert Canonicalizer.load(str(tmp_path)).policy == dataclasses.replace(paper_canonicalizer.policy,
                                                                           precision="bfloat16")
    with pytest.raises(ValueError, match="DecisionPolicy has no setting precison"):
        Canonicalizer(policy={"precison": "int8"})
    assert '"tilt"' not in config and Canonicalizer.load(str(tmp_path)).tilt is None  # no tilt stage by default
    paper_canonicalizer.with_tilt(TiltEstimator(gate=1.3)).save_pretrained(tmp_path / "tilting")
    assert Canonicalizer.load(str(tmp_path / "tilting")).tilt == TiltEstimator(gate=1.3)
    with pytest.raises(ValueError, match="TiltEstimator has no setting gates"):
        Canonicalizer(tilt={"gates": 2})
    with pytest.raises(ValueError, match="recheck_margin takes a number from 0 to inf"):
        DecisionPolicy(recheck_margin=float("nan"))
    with pytest.raises(ValueError, match="the input size takes 32 to 512 pixels"):
        Preprocessing(input_size=16)


def reduced_arithmetic(precision: str) -> Arithmetic:
    arithmetic = Arithmetic.served(precision, torch.device("cpu"))
    if arithmetic.name != precision:
        pytest.skip(f"this CPU has no native {precision}")
    return arithmetic


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_reduced_precision_near_ties_are_decided_in_float32(paper_canonicalizer, photo, precision):
    arithmetic = reduced_arithmetic(precision)
    reduced = paper_canonicalizer.with_policy(precision=precision, recheck_margin=0.0, mirror_average=False)
    exact = float32_logits(paper_canonicalizer, photo)
    with torch.inference_mode():
        x = reduced.preprocess(photo)
        first_pass, without_int8 = (reduced.network(x, a)[0].double().numpy()
                                    for a in (arithmetic, Arithmetic(arithmetic.dtype)))
    assert reduced.arithmetic == arithmetic
    assert np.array_equal(reduced.logits(photo), first_pass)  # never rechecked: the first pass's own activations
    assert not np.array_equal(first_pass, exact)
    assert arithmetic.int8 == (precision == "int8") and arithmetic.int8 != np.array_equal(first_pass, without_int8)
    np.testing.assert_allclose(reduced.logits(photo), exact, atol=0.5)
    always = reduced.with_policy(recheck_margin=float("inf"))  # every photo is a near-tie: float32 decides
    assert np.array_equal(always.logits(photo), exact)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_near_ties_are_float32_ones_whatever_the_first_pass_says(paper_canonicalizer, photo, precision):
    arithmetic = reduced_arithmetic(precision)
    with torch.inference_mode():
        x = paper_canonicalizer.preprocess(photo)
        margins = [float(a[0] - a[1]) for a in (torch.topk(paper_canonicalizer.network(x, each)[0], 2).values
                                                for each in (arithmetic, FLOAT32))]
    first_pass, exact = margins
    mirror = photo[:, ::-1].copy()
    averaged = (float32_logits(paper_canonicalizer, photo)
                + float32_logits(paper_canonicalizer, mirror)[[0, 3, 2, 1]]) / 2
    # A near-tie threshold between the two margins: the first pass and float32 disagree on whether this photo is one.
    for threshold in (exact + (first_pass - exact) / 2, exact - (first_pass - exact) / 2):
        reduced = paper_canonicalizer.with_policy(precision=precision, recheck_margin=1.0, mirror_average=True,
                                                  mirror_margin=threshold)
        expected = averaged if exact < threshold else float32_logits(paper_canonicalizer, photo)
        np.testing.assert_allclose(reduced.logits(photo), expected, atol=1e-5)


def test_bfloat16_falls_back_to_float32_where_it_would_be_emulated(paper_canonicalizer, photo, monkeypatch):
    reduced = paper_canonicalizer.with_policy(precision="bfloat16", recheck_margin=0.0, mirror_average=False)
    monkeypatch.setattr(networks, "bfloat16_is_native", lambda device: False)
    assert reduced.arithmetic == FLOAT32 and reduced.arithmetic.name == "float32"
    assert np.array_equal(reduced.logits(photo), float32_logits(paper_canonicalizer, photo))


def test_int8_falls_back_to_the_next_precision_where_it_is_not_native(paper_canonicalizer, photo, monkeypatch):
    quantized, bfloat16 = (paper_canonicalizer.with_policy(precision=p, recheck_margin=0.0, mirror_average=False)
                           for p in ("int8", "bfloat16"))
    monkeypatch.setattr(networks, "int8_is_native", lambda device: False)
    assert not quantized.arithmetic.int8 and quantized.arithmetic == bfloat16.arithmetic
    assert np.array_equal(quantized.logits(photo), bfloat16.logits(photo))


def test_near_ties_are_decided_with_the_mirror(paper_canonicalizer, photo):
    averaged = paper_canonicalizer.with_policy(precision="float32", mirror_average=True,
                                               mirror_margin=float("inf"))  # every photo is a near-tie
    mirror = photo[:, ::-1].copy()
    turned_back = [0, 3, 2, 1]  # the mirror of the photo turned by j is the mirror turned by -j
    expected = (float32_logits(paper_canonicalizer, photo)
                + float32_logits(paper_canonicalizer, mirror)[turned_back]) / 2
    np.testing.assert_allclose(averaged.logits(photo), expected, atol=1e-4)
    base = averaged.canonicalize(photo)
    for k in range(1, 4):  # still exactly equivariant
        decision = averaged.canonicalize(geometry.rotate_image(photo, k))
        assert decision.k == (base.k + k) % 4
        assert np.array_equal(decision.canonical_image, base.canonical_image)
    assert averaged.canonicalize(mirror).k == (-base.k) % 4  # and the mirrored photo gets the mirrored decision
    for k in range(4):
        assert averaged.canonicalize(geometry.rotate_image(mirror, k)).k == (k - base.k) % 4
    alone = averaged.with_policy(mirror_margin=0.0)  # no near-tie: the first pass decides alone
    assert np.array_equal(alone.logits(photo), float32_logits(paper_canonicalizer, photo))


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision takes one of float32, bfloat16, int8; got 'float16'"):
        Canonicalizer(policy=DecisionPolicy(precision="float16"))


def test_the_demos_library_canonicalizes_without_gradio_or_escnn():
    """The boundary the README promises: the library never imports gradio, and serving needs no escnn."""
    script = (
        "import sys; import canon.demo; from canon.canonicalizer import Canonicalizer; "
        "from canon.images import load_image; "
        f"decision = Canonicalizer.load({str(REPO / 'canon' / 'weights' / 'wrn-c4-paper')!r}).canonicalize("
        f"load_image({str(REPO / 'examples' / 'animals_cat.jpg')!r})); "
        "print(decision.k, sorted(m for m in ('gradio', 'escnn') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "[]"], result.stdout
