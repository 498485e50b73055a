import numpy as np
import pytest
import torch
import torch.nn.functional as F

from canon.networks import EscnnWRN, ServingWRN, _QuantizedConv, all_convs, int8_is_native, layer_plan, stage_ends

SMALL = dict(kernel_size=3, out_channels=16, num_layers=3, group_order=4)


def randomised_escnn(seed: int = 0) -> EscnnWRN:
    """A small escnn WRN with random weights and non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = EscnnWRN(**SMALL)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.5, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for name, parameter in model.named_parameters():
            if "batch_norm" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                parameter.uniform_(-0.5, 0.5)  # escnn initialises biases to zero, which would hide their mapping
    return model.eval()


def test_layer_plan_matches_the_paper_network():
    plan = layer_plan(5, 64, 12)
    assert [b.kind for b in plan.blocks] == ["bottleneck"] * 3 + ["basic"] + ["bottleneck"] * 3 + ["basic"] + [
        "bottleneck"] * 3
    assert plan.head.key == "eqv_network.36" and (plan.head.in_fields, plan.head.out_fields) == (64, 128)
    assert len(all_convs(plan)) == 1 + 9 * 3 + 2 * 3 + 1
    assert stage_ends(plan) == (3, 7, 10) and stage_ends(layer_plan(3, 16, 3)) == (0, 1)


def test_layer_plan_refuses_a_depth_it_cannot_split():
    with pytest.raises(ValueError):
        layer_plan(5, 64, 10)


def test_serving_export_equals_escnn():
    """Dense filters, folded batch norm, and the head folded into window means give escnn's activations."""
    escnn_model = randomised_escnn()
    serving = ServingWRN.from_escnn_state(escnn_model.state_dict(), **SMALL)
    x = torch.rand(3, 3, 40, 40)
    with torch.no_grad():
        expected, actual = escnn_model(x), serving(x)
    assert actual.shape == (3, 4)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


def test_serving_state_round_trips_through_state_dict():
    serving = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)
    clone = ServingWRN(**SMALL)
    clone.load_state_dict(serving.state_dict(), strict=True)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone.eval()(x), serving(x))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_activations_roll_with_rotation(paper_canonicalizer, k):
    """act(rot90(x, k)) == roll(act(x), k) for the paper network, on a photo and on noise."""
    torch.manual_seed(k)
    network = paper_canonicalizer.network
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        base, rotated = network(x), network(torch.rot90(x, k, dims=(2, 3)))
    assert torch.allclose(rotated, torch.roll(base, k, dims=1), atol=1e-4), (rotated - torch.roll(base, k, 1)).abs().max()


def test_the_shipped_weights_are_small_and_complete(paper_canonicalizer):
    state = paper_canonicalizer.state_dict()
    n_parameters = sum(v.numel() for k, v in state.items() if "basis" not in k and "running" not in k)
    assert 1.8e6 < n_parameters < 1.9e6  # the paper's 1.86 M free parameters
    assert np.isfinite(np.concatenate([v.flatten().numpy() for v in state.values()])).all()


def test_bfloat16_trunk_stays_close_to_float32():
    serving = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        exact = serving(x)
        reduced = serving(x, torch.bfloat16)
        assert serving.prepare(torch.bfloat16)["stem"][0].dtype == torch.bfloat16
        assert serving.prepare(torch.bfloat16)["stem"][0].is_contiguous(memory_format=torch.channels_last)
        assert serving.prepare(torch.bfloat16)["head"][0].dtype == torch.float32  # the pooled head sums in float32
        assert torch.equal(serving(x), exact)  # the float32 filters are kept beside the bfloat16 ones
    assert reduced.dtype == torch.float32
    assert not torch.equal(reduced, exact)
    assert torch.allclose(reduced, exact, atol=0.05 * exact.abs().max().item()), (reduced - exact).abs().max()


needs_int8 = pytest.mark.skipif(not int8_is_native(torch.device("cpu")), reason="this CPU has no 8-bit dot products")


@needs_int8
@pytest.mark.parametrize("padding, relu, dtype", [(0, False, torch.float32), (2, True, torch.bfloat16)])
def test_int8_convolution_is_the_float_convolution_of_its_quantized_operands(padding, relu, dtype):
    torch.manual_seed(0)
    weight, bias = torch.randn(8, 6, 5, 5), torch.randn(8)
    weight[3] = 0  # a channel of zero filters must not divide by zero
    x = torch.rand(2, 6, 12, 12).contiguous(memory_format=torch.channels_last) * 3
    conv = _QuantizedConv.from_float(weight, bias, padding)
    x_before = x.clone()
    out = conv(x.to(dtype), relu, dtype)  # the same tensor in float32
    assert out.dtype == dtype and out.shape == (2, 8, 12 - 4 + 2 * padding, 12 - 4 + 2 * padding)
    # Quantized operands by hand: the integer sums are exact, so only the final rescaling differs by float rounding.
    x_scale = x.to(dtype).amax().float() / 255
    x_levels = torch.round(x.to(dtype).float() / x_scale)
    w_scales = weight.abs().amax(dim=(1, 2, 3)).clamp_min(torch.finfo(torch.float32).tiny) / 127
    w_levels = torch.round(weight / w_scales[:, None, None, None])
    assert x_levels.max() == 255 and w_levels.abs().amax(dim=(1, 2, 3))[[0, 1, 2, 4]].eq(127).all()
    expected = F.conv2d(x_levels * x_scale, w_levels * w_scales[:, None, None, None], bias, padding=padding)
    expected = F.relu(expected) if relu else expected
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=0)
    zero_filters = (F.relu(bias[3]) if relu else bias[3]).to(dtype).float()  # their bias alone, exactly
    assert torch.equal(out[:, 3].float(), zero_filters.expand(2, *out.shape[2:]))
    if dtype == torch.float32:  # with float32 sums, the quantized operands explain the output far better
        unquantized = F.conv2d(x, weight, bias, padding=padding)
        assert (out - unquantized).abs().max() > 100 * (out - expected).abs().max()
    assert torch.equal(x, x_before)  # the input is quantized out of place (a block's shortcut reads it again)


@needs_int8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # the sums in float32 (VNNI alone) or bfloat16
def test_int8_trunk_stays_close_to_float32(dtype):
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    serving = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        exact = serving(x)
        reduced = serving(x, dtype, int8=True)
        assert isinstance(serving.prepare(dtype, int8=True)["stem"], _QuantizedConv)
        assert torch.equal(serving(x), exact)  # the float32 filters are kept beside the 8-bit ones
        assert not torch.equal(reduced, serving(x, dtype))
        with pytest.raises(ValueError, match="non-negative inputs"):
            serving(x - 0.5, dtype, int8=True)  # a normalised image would wrap around in uint8
    assert reduced.dtype == torch.float32
    assert not torch.equal(reduced, exact)
    assert torch.allclose(reduced, exact, atol=0.05 * exact.abs().max().item()), (reduced - exact).abs().max()


def probed_serving(levels=(0, 1), grid=3, seed=0) -> ServingWRN:
    """The small randomised network with an equivariant probe on ``levels`` and random probe weights."""
    serving = ServingWRN(**SMALL, probe_levels=levels, probe_grid=grid)
    state = ServingWRN.from_escnn_state(randomised_escnn(seed).state_dict(), **SMALL).state_dict()
    state["probe.weight"] = torch.randn(serving.probe.num_features, generator=torch.Generator().manual_seed(seed))
    serving.load_state_dict(state, strict=True)
    return serving.eval()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_probe_turn_gives_the_pooled_features_of_the_turned_input(k):
    serving = probed_serving()
    x = torch.rand(1, 3, 41, 41)
    with torch.no_grad():
        _, tapped = serving.trunk(x, taps=serving.probe.levels)
        _, tapped_turned = serving.trunk(torch.rot90(x, k, dims=(2, 3)), taps=serving.probe.levels)
        probe = serving.probe
        expected = torch.cat([p.flatten(1) for p in probe.pooled(tapped_turned)], dim=1)
        turned = probe.turn(probe.pooled(tapped), k)
    assert not torch.allclose(turned, probe.turn(probe.pooled(tapped), 0), atol=1e-3)  # turning changes them
    torch.testing.assert_close(turned, expected, atol=1e-5, rtol=1e-5)


def test_probe_turn_is_a_permutation_of_order_four():
    probe = probed_serving().probe
    pooled = [torch.randn(2, f, 4, 1 + 9) for f in probe.fields]
    flat = probe.turn(pooled, 0)
    assert torch.equal(flat, torch.cat([p.flatten(1) for p in pooled], dim=1))
    once = probe.turn(pooled, 1)
    assert torch.equal(once.sort(dim=1).values, flat.sort(dim=1).values) and not torch.equal(once, flat)
    back = [p.reshape(2, f, 4, 10) for p, f in zip(once.split([f * 40 for f in probe.fields], dim=1), probe.fields)]
    assert torch.equal(probe.turn(back, 3), flat)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_probe_scores_roll_with_rotation(k):
    serving = probed_serving()
    x = torch.rand(2, 3, 41, 41)
    with torch.no_grad():
        base, rotated = serving(x), serving(torch.rot90(x, k, dims=(2, 3)))
        head = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)(x)
    assert base.shape == (2, 4) and not torch.allclose(base, head)  # the probe, not the head, scores
    torch.testing.assert_close(rotated, torch.roll(base, k, dims=1), atol=1e-4, rtol=1e-4)


def test_probe_refuses_levels_it_cannot_tap_and_scoring_without_weights():
    with pytest.raises(ValueError, match="probe levels are block indices in 0..1"):
        ServingWRN(**SMALL, probe_levels=(2,))
    with pytest.raises(ValueError, match="probe grid"):
        ServingWRN(**SMALL, probe_levels=(1,), probe_grid=0)
    unfitted = ServingWRN(**SMALL, probe_levels=(1,))
    unfitted.load_state_dict({k: v for k, v in probed_serving(levels=(1,)).state_dict().items()
                              if k != "probe.weight"}, strict=False)
    with pytest.raises(ValueError, match="fit it"):
        unfitted.eval()(torch.rand(1, 3, 33, 33))
