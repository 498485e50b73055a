import numpy as np
import pytest
import torch
import torch.nn.functional as F

import warnings

from canon import networks
from canon.networks import (FLOAT32, Arithmetic, CompiledWRN, EscnnWRN, QuantizedConv, ServingWRN, all_convs,
                            int8_works, layer_plan, stage_ends)
from canon.runtime import int8_is_native

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
        reduced = serving(x, Arithmetic(torch.bfloat16))
        compiled = serving.compiled(Arithmetic(torch.bfloat16))
        assert isinstance(compiled, CompiledWRN) and isinstance(compiled, torch.nn.Module)
        assert compiled.layers["stem"][0].dtype == torch.bfloat16
        assert compiled.layers["stem"][0].is_contiguous(memory_format=torch.channels_last)
        assert compiled.head[0].dtype == torch.float32  # the pooled head sums in float32
        assert torch.equal(serving(x), exact)  # the float32 filters are kept beside the bfloat16 ones
        assert torch.equal(compiled(x), reduced)  # the compiled form is the network, on its own
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
    conv = QuantizedConv.from_float(weight, bias, padding)
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
        reduced = serving(x, Arithmetic(dtype, int8=True))
        assert isinstance(serving.compiled(Arithmetic(dtype, int8=True)).layers["stem"], QuantizedConv)
        assert torch.equal(serving(x), exact)  # the float32 filters are kept beside the 8-bit ones
        assert not torch.equal(reduced, serving(x, Arithmetic(dtype)))
        with pytest.raises(ValueError, match="non-negative inputs"):
            serving(x - 0.5, Arithmetic(dtype, int8=True))  # a normalised image would wrap around in uint8
    assert reduced.dtype == torch.float32
    assert not torch.equal(reduced, exact)
    assert torch.allclose(reduced, exact, atol=0.05 * exact.abs().max().item()), (reduced - exact).abs().max()


def test_the_compiled_form_is_made_once_per_arithmetic_and_again_after_a_load():
    serving = ServingWRN.from_escnn_state(randomised_escnn().state_dict(), **SMALL)
    x = torch.rand(1, 3, 33, 33)
    with torch.no_grad():
        first = serving.compiled(FLOAT32)
        assert serving.compiled(Arithmetic()) is first  # one value names the arithmetic: equal values, one form
        before = serving(x)
        serving.load_state_dict(ServingWRN.from_escnn_state(randomised_escnn(seed=1).state_dict(),
                                                            **SMALL).state_dict())
        assert serving.compiled(FLOAT32) is not first and not torch.equal(serving(x), before)


def test_arithmetic_names_what_serves_and_falls_back_where_the_device_lacks_it(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(networks, "bfloat16_is_native", lambda device: False)
    monkeypatch.setattr(networks, "int8_is_native", lambda device: False)
    assert [Arithmetic.served(p, cpu).name for p in ("float32", "bfloat16", "int8")] == ["float32"] * 3
    monkeypatch.setattr(networks, "bfloat16_is_native", lambda device: True)
    assert [Arithmetic.served(p, cpu).name for p in ("float32", "bfloat16", "int8")] == ["float32", "bfloat16",
                                                                                        "bfloat16"]
    monkeypatch.setattr(networks, "int8_is_native", lambda device: True)
    monkeypatch.setattr(networks, "int8_works", lambda: True)
    assert Arithmetic.served("int8", cpu) == Arithmetic(torch.bfloat16, int8=True)


@pytest.mark.parametrize("failure", ["raises", "disagrees"])
def test_the_int8_self_test_turns_8_bit_convolutions_off_when_the_private_operators_misbehave(failure,
                                                                                             monkeypatch):
    def misbehaving(self, x, relu, dtype):
        if failure == "raises":
            raise RuntimeError("onednn::qconv2d_pointwise is not available on this build")
        return torch.zeros(1, 8, 10, 10)

    monkeypatch.setattr(QuantizedConv, "from_float", classmethod(lambda cls, w, b, p: cls(None, w, b, p)))
    monkeypatch.setattr(QuantizedConv, "__call__", misbehaving)
    int8_works.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="8-bit convolutions are turned off"):
            assert int8_works() is False
        monkeypatch.setattr(networks, "int8_is_native", lambda device: True)
        assert not Arithmetic.served("int8", torch.device("cpu")).int8  # bfloat16 or float32 serves instead
    finally:
        int8_works.cache_clear()


@needs_int8
def test_the_int8_self_test_passes_where_8_bit_convolutions_are_native():
    int8_works.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert int8_works()
