"""C4-equivariant canonicalization networks: the escnn wide-ResNet of the paper and its plain-torch serving form.

The architecture is the equivariant wide-ResNet of Mondal et al. (NeurIPS 2023), as configured for SAM in equiadapt
0.1.2 (``ESCNNWRNEquivariantNetwork`` with kernel 5, 64 output channels, 12 layers, 4 rotations): a lifting
convolution from the 3 RGB channels to regular fields of C4, residual blocks, no stride and no pooling, and a final
convolution whose output fields are averaged over space and fields to give one activation per rotation.

Two implementations share one layer plan (:func:`layer_plan`):

* :class:`EscnnWRN` builds the network with escnn. Its state dict has the paper's layout, so the published
  ``equivariant_wrn_c4.pt`` loads into it strictly. It is what training uses.
* :class:`ServingWRN` holds the same free parameters (escnn's steerable-basis coefficients, biases and batch-norm
  statistics) plus the four sampled bases; its state dict is what ``canon/weights/*/model.safetensors`` stores
  (:class:`huggingface_hub.PyTorchModelHubMixin` layout). It imports nothing from escnn and builds no basis at
  start-up. :meth:`ServingWRN.compiled` turns it into a :class:`CompiledWRN` (the idea of escnn's ``export()``):
  ordinary convolution filters expanded with one ``einsum`` each, batch norm folded in, kept channels last, in one
  :class:`Arithmetic` (float32, bfloat16, or 8 bits for oneDNN's integer convolution, guarded by a self-test).

Both return group activations of shape ``B x 4`` for an input ``B x 3 x S x S`` (floats in [0, 1]). Rotating the
input by ``k`` quarter turns counter-clockwise rolls the activations by ``k``: ``act(rot90(x, k)) = roll(act(x), k)``.

The sizes (kernel, channels, layers) are :class:`canon.canonicalizer.NetworkSpec`'s, whose defaults are the paper's.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import bfloat16_is_native, int8_is_native

BATCH_NORM_EPS = 1e-5  # escnn's InnerBatchNorm default, as in the paper's training


@dataclass(frozen=True)
class ConvSpec:
    """One equivariant convolution: its key prefix in the paper's state dict, fields in and out, kernel, padding."""

    key: str
    in_fields: int  # 0 means the 3 trivial (RGB) input channels
    out_fields: int
    kernel_size: int
    padding: int


@dataclass(frozen=True)
class BlockSpec:
    """A residual block: ``bottleneck`` (1x1, kxk padded, 1x1; identity shortcut) or ``basic`` (kxk, kxk; a
    (2k-1)x(2k-1) convolution as shortcut). ``norms`` are the batch norms between its convolutions, ``out_norm`` the
    one after the residual sum (followed by a ReLU)."""

    kind: str
    convs: tuple[ConvSpec, ...]
    norms: tuple[str, ...]
    shortcut: ConvSpec | None
    out_norm: str

    @property
    def out_fields(self) -> int:
        """Regular fields of the block's output (its last convolution's, which the residual sum keeps)."""
        return self.convs[-1].out_fields


@dataclass(frozen=True)
class LayerPlan:
    stem: ConvSpec
    stem_norm: str
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec


def layer_plan(kernel_size: int, out_channels: int, num_layers: int) -> LayerPlan:
    """The wide-ResNet's layers, named by their keys in the paper's escnn state dict (``eqv_network.N...``).

    Widths follow equiadapt's ``ESCNNWRNEquivariantNetwork`` (widen factor 2): regular fields
    ``[c/4, c/2, c, 2c]`` for ``c = out_channels``, ``num_layers // 3`` blocks per stage.
    """
    if num_layers % 3 or num_layers < 3:
        raise ValueError(f"num_layers must be a positive multiple of 3, got {num_layers}")
    widths = [out_channels // 4, out_channels // 2, out_channels, out_channels * 2]
    per_stage = num_layers // 3
    stage_fields = [widths[0]] * per_stage + [widths[1]] * per_stage + [widths[2]] * per_stage
    k = kernel_size
    stem = ConvSpec("eqv_network.0", 0, widths[0], k, 0)
    blocks = []
    index = 3  # 0: stem conv, 1: its batch norm, 2: its ReLU
    for i in range(num_layers - 1):
        fin, fout = stage_fields[i], stage_fields[i + 1]
        prefix = f"eqv_network.{index}"
        if i % per_stage == per_stage - 1:
            block = BlockSpec(
                kind="basic",
                convs=(ConvSpec(f"{prefix}.conv_network.0", fin, fout, k, 0),
                       ConvSpec(f"{prefix}.conv_network.3", fout, fout, k, 0)),
                norms=(f"{prefix}.conv_network.1",),
                shortcut=ConvSpec(f"{prefix}.shortcut.0", fin, fout, 2 * k - 1, 0),
                out_norm=f"eqv_network.{index + 1}",
            )
        else:
            block = BlockSpec(
                kind="bottleneck",
                convs=(ConvSpec(f"{prefix}.conv_network.0", fin, fout, 1, 0),
                       ConvSpec(f"{prefix}.conv_network.3", fout, fout, k, k // 2),
                       ConvSpec(f"{prefix}.conv_network.6", fout, fin, 1, 0)),
                norms=(f"{prefix}.conv_network.1", f"{prefix}.conv_network.4"),
                shortcut=None,
                out_norm=f"eqv_network.{index + 1}",
            )
        blocks.append(block)
        index += 3  # block, batch norm, ReLU
    head = ConvSpec(f"eqv_network.{index}", widths[2], widths[3], k, 0)
    return LayerPlan(stem, "eqv_network.1", tuple(blocks), head)


def stage_ends(plan: LayerPlan) -> tuple[int, ...]:
    """Indices of the blocks that end a stage (the ``basic`` blocks, which change the width, and the last block):
    for the paper's plan ``(3, 7, 10)``."""
    return tuple(i for i, block in enumerate(plan.blocks) if block.kind == "basic" or i == len(plan.blocks) - 1)


def all_convs(plan: LayerPlan) -> list[ConvSpec]:
    convs = [plan.stem]
    for block in plan.blocks:
        convs.extend(block.convs)
        if block.shortcut is not None:
            convs.append(block.shortcut)
    convs.append(plan.head)
    return convs


def all_norms(plan: LayerPlan) -> list[str]:
    norms = [plan.stem_norm]
    for block in plan.blocks:
        norms.extend(block.norms)
        norms.append(block.out_norm)
    return norms


def basis_name(spec: ConvSpec) -> str:
    """Name of the sampled basis a convolution uses; convolutions between the same representations share it."""
    source = "trivial" if spec.in_fields == 0 else "regular"
    return f"{source}_regular_{spec.kernel_size}"


def group_pool(features: torch.Tensor, group_order: int) -> torch.Tensor:
    """Mean of ``B x (F * n) x H x W`` regular-field features over space and fields: ``B x n`` group activations."""
    b, c, h, w = features.shape
    return features.reshape(b, c // group_order, group_order, h, w).mean(dim=(1, 3, 4))


# ----------------------------------------------------------------------------------------------- escnn network


class EscnnWRN(nn.Module):
    """The paper's C4 wide-ResNet built with escnn; its state dict loads ``equivariant_wrn_c4.pt`` strictly.

    ``forward(x)`` takes ``B x 3 x S x S`` floats and returns ``B x 4`` group activations.
    """

    def __init__(self, kernel_size: int, out_channels: int, num_layers: int, group_order: int = 4,
                 initialize: bool = True):
        super().__init__()
        gspaces, enn = _escnn()
        self.group_order = group_order
        self.plan = layer_plan(kernel_size, out_channels, num_layers)
        gspace = gspaces.rot2dOnR2(N=group_order)
        rgb = enn.FieldType(gspace, [gspace.trivial_repr] * 3)

        def field_type(fields: int):
            return rgb if fields == 0 else enn.FieldType(gspace, [gspace.regular_repr] * fields)

        def conv(spec: ConvSpec):
            return enn.R2Conv(field_type(spec.in_fields), field_type(spec.out_fields), spec.kernel_size,
                              padding=spec.padding, initialize=initialize)

        def norm_relu(fields: int):
            return [enn.InnerBatchNorm(field_type(fields), momentum=0.9),
                    enn.ReLU(field_type(fields), inplace=True)]

        modules = [conv(self.plan.stem), *norm_relu(self.plan.stem.out_fields)]
        for block in self.plan.blocks:
            modules.append(_escnn_block_class()(block, conv, norm_relu))
            modules.extend(norm_relu(block.out_fields))
        modules.append(conv(self.plan.head))
        self.in_type = rgb
        self.eqv_network = enn.SequentialModule(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, enn = _escnn()
        out = self.eqv_network(enn.GeometricTensor(x, self.in_type)).tensor
        return group_pool(out, self.group_order)


@functools.lru_cache(maxsize=None)
def _escnn():
    """escnn's ``gspaces`` and ``nn``, imported on first use (serving never needs them)."""
    with warnings.catch_warnings():
        # py3nj only speeds up SO(3) Clebsch-Gordan coefficients, which C_n networks never use.
        warnings.filterwarnings("ignore", message="`py3nj` package not found")
        from escnn import gspaces
        from escnn import nn as enn
    return gspaces, enn


@functools.lru_cache(maxsize=None)
def _escnn_block_class():
    """The residual block of :class:`EscnnWRN`, defined on first use so that importing this module needs no escnn."""
    _, enn = _escnn()

    class EscnnBlock(enn.EquivariantModule):
        """A residual block; attribute names follow the paper's state dict."""

        def __init__(self, spec: BlockSpec, conv, norm_relu):
            super().__init__()
            layers = []
            for i, conv_spec in enumerate(spec.convs):
                layers.append(conv(conv_spec))
                if i < len(spec.norms):
                    layers.extend(norm_relu(conv_spec.out_fields))
            self.conv_network = enn.SequentialModule(*layers)
            self.shortcut = enn.SequentialModule(conv(spec.shortcut)) if spec.shortcut is not None else None
            self.in_type = self.conv_network.in_type
            self.out_type = self.conv_network.out_type

        def forward(self, x):
            out = self.conv_network(x)
            return out + (self.shortcut(x) if self.shortcut is not None else x)

        def evaluate_output_shape(self, input_shape):
            return self.conv_network.evaluate_output_shape(input_shape)

    return EscnnBlock


# ---------------------------------------------------------------------------------------------- serving network


def _norm_keys(prefix: str, group_order: int) -> dict[str, str]:
    """Paper state-dict keys of an escnn ``InnerBatchNorm`` over regular fields of C_n."""
    inner = f"{prefix}.batch_norm_[{group_order}]"
    return {name: f"{inner}.{name}" for name in ("weight", "bias", "running_mean", "running_var")}


def _basis_key(spec: ConvSpec) -> str:
    """Key of a convolution's sampled basis in the escnn state dict."""
    source = "irrep_0" if spec.in_fields == 0 else "regular"
    return f"{spec.key}._basisexpansion.block_expansion_('{source}', 'regular').sampled_basis"


def _safe(key: str) -> str:
    return key.replace(".", "_")


@dataclass(frozen=True)
class Arithmetic:
    """What a pass of :class:`CompiledWRN` computes in: floats of ``dtype`` (float32, or bfloat16: about half the
    time where the device has it natively, activations within a few tenths), with ``int8`` its convolutions as
    8-bit multiplications (:class:`QuantizedConv`, a CPU only) whose sums come out in ``dtype``."""

    dtype: torch.dtype = torch.float32
    int8: bool = False

    @property
    def name(self) -> str:
        """``float32``, ``bfloat16`` or ``int8``: the precision this arithmetic serves."""
        return "int8" if self.int8 else str(self.dtype).removeprefix("torch.")

    @classmethod
    def served(cls, precision: str, device: torch.device) -> "Arithmetic":
        """The arithmetic for ``precision`` (``float32``, ``bfloat16`` or ``int8``) on ``device``: what it names where
        the device has it natively (8 bits also only if :func:`int8_works` passes), else the next one down
        (int8 -> bfloat16 -> float32), which is faster there. int8's sums are in bfloat16 where that is native."""
        dtype = torch.bfloat16 if precision != "float32" and bfloat16_is_native(device) else torch.float32
        return cls(dtype, precision == "int8" and int8_is_native(device) and int8_works())


FLOAT32 = Arithmetic()


@functools.lru_cache(maxsize=None)
def int8_works() -> bool:
    """A one-time self-test of the 8-bit convolution, which calls private torch operators: on a random input its
    output must be the float convolution of its quantized operands. If those operators fail or disagree (another
    torch build, another CPU), 8-bit serving is turned off with a warning and bfloat16 or float32 serves instead."""
    try:
        generator = torch.Generator().manual_seed(0)
        weight, bias = torch.randn(8, 6, 3, 3, generator=generator), torch.randn(8, generator=generator)
        x = _channels_last(torch.rand(1, 6, 10, 10, generator=generator))
        out = QuantizedConv.from_float(weight, bias, 1)(x, False, torch.float32)
        x_scale = x.amax() / 255
        w_scales = weight.abs().amax(dim=(1, 2, 3)) / 127
        expected = F.conv2d(torch.round(x / x_scale) * x_scale,
                            torch.round(weight / w_scales[:, None, None, None]) * w_scales[:, None, None, None],
                            bias, padding=1)
        works = out.shape == expected.shape and bool((out - expected).abs().max() <= 1e-3 * expected.abs().max())
        reason = "its output differs from the float convolution of its quantized operands"
    except Exception as error:  # noqa: BLE001 -- private operators: any failure means "do not use them"
        works, reason = False, f"{type(error).__name__}: {str(error).strip()[:160]}"
    if not works:
        warnings.warn(f"8-bit convolutions are turned off ({reason}); bfloat16 or float32 serves instead",
                      RuntimeWarning, stacklevel=2)
    return works


class ServingWRN(nn.Module):
    """Plain-torch inference form of :class:`EscnnWRN` (same free parameters, same outputs within float rounding).

    The state dict holds, for every convolution of :func:`layer_plan`, escnn's basis coefficients (``*_weights``,
    one row per (out field, in field) pair) and per-field bias; for every batch norm its per-field statistics; and the
    sampled bases (``basis_*``, shape ``dim x n x n_in x k*k``). This is what ``model.safetensors`` stores.
    :meth:`compiled` turns it into a :class:`CompiledWRN` for one :class:`Arithmetic` (once, on first use), which is
    what runs. :class:`canon.canonicalizer.Canonicalizer` wraps it with the preprocessing and the Hub's layout.

    ``forward(x, arithmetic)``: ``B x 3 x S x S`` float tensor in [0, 1] -> ``B x group_order`` group activations
    (float32).
    """

    def __init__(self, kernel_size: int, out_channels: int, num_layers: int, group_order: int = 4):
        super().__init__()
        self.group_order = group_order
        self.plan = layer_plan(kernel_size, out_channels, num_layers)
        n = group_order
        for spec in all_convs(self.plan):
            self.register_buffer(f"{_safe(spec.key)}_weights", torch.zeros(0))  # sized on load
            self.register_buffer(f"{_safe(spec.key)}_bias", torch.zeros(spec.out_fields))
            name = f"basis_{basis_name(spec)}"
            if not hasattr(self, name):
                in_block = 1 if spec.in_fields == 0 else n
                self.register_buffer(name, torch.zeros(0, n, in_block, spec.kernel_size ** 2))
        for prefix in all_norms(self.plan):
            fields = self._norm_fields(prefix)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(f"{_safe(prefix)}_{stat}", torch.zeros(fields))
        self._compiled: dict[Arithmetic, CompiledWRN] = {}

    def _norm_fields(self, prefix: str) -> int:
        if prefix == self.plan.stem_norm:
            return self.plan.stem.out_fields
        for block in self.plan.blocks:
            for conv_spec, norm in zip(block.convs, block.norms):
                if norm == prefix:
                    return conv_spec.out_fields
            if block.out_norm == prefix:
                return block.out_fields
        raise KeyError(prefix)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        _resize_buffers(self, state_dict, prefix)
        self._compiled = {}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # ------------------------------------------------------------------ conversion from the escnn layout

    @classmethod
    def from_escnn_state(cls, state: dict[str, torch.Tensor], **config) -> "ServingWRN":
        """Build from a state dict in the paper's escnn layout (``EscnnWRN.state_dict()`` or the published file)."""
        model = cls(**config)
        model.load_state_dict(model.state_from_escnn(state), strict=True)
        return model.eval()

    def state_from_escnn(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for spec in all_convs(self.plan):
            out[f"{_safe(spec.key)}_weights"] = state[f"{spec.key}.weights"]
            out[f"{_safe(spec.key)}_bias"] = state[f"{spec.key}.bias"]
            out[f"basis_{basis_name(spec)}"] = state[_basis_key(spec)]
        for prefix in all_norms(self.plan):
            for stat, key in _norm_keys(prefix, self.group_order).items():
                out[f"{_safe(prefix)}_{stat}"] = state[key]
        return {k: v.detach().clone().float() for k, v in out.items()}

    def escnn_state(self) -> dict[str, torch.Tensor]:
        """The free parameters, sampled bases and batch-norm statistics in the paper's escnn layout (inverse of
        :meth:`state_from_escnn`). The bases are included because escnn's own differ from the shipped ones (sampled
        by e2cnn) by about 1e-6. Loads into :class:`EscnnWRN` with ``strict=False``; :func:`load_escnn_from_serving`
        checks that nothing but derived buffers is missing."""
        out = {}
        for spec in all_convs(self.plan):
            out[f"{spec.key}.weights"] = getattr(self, f"{_safe(spec.key)}_weights")
            out[f"{spec.key}.bias"] = getattr(self, f"{_safe(spec.key)}_bias")
            out[_basis_key(spec)] = getattr(self, f"basis_{basis_name(spec)}")
        for prefix in all_norms(self.plan):
            for stat, key in _norm_keys(prefix, self.group_order).items():
                out[key] = getattr(self, f"{_safe(prefix)}_{stat}")
        return {k: v.detach().clone() for k, v in out.items()}

    # ------------------------------------------------------------------ dense filters

    def _dense_conv(self, spec: ConvSpec) -> tuple[torch.Tensor, torch.Tensor]:
        basis = getattr(self, f"basis_{basis_name(spec)}")  # dim x n x n_in x k*k
        dim, n, n_in, _ = basis.shape
        in_fields = 3 if spec.in_fields == 0 else spec.in_fields
        coefficients = getattr(self, f"{_safe(spec.key)}_weights").reshape(spec.out_fields, in_fields, dim)
        # filter[a*n + x, b*n_in + y] = sum_d w[a, b, d] * basis[d, x, y]  (escnn's block expansion)
        weight = torch.einsum("abd,dxyp->axbyp", coefficients, basis)
        weight = weight.reshape(spec.out_fields * n, in_fields * n_in, spec.kernel_size, spec.kernel_size)
        # escnn puts a regular field's bias on its trivial component, the unit vector (1, ..., 1) / sqrt(n).
        bias = getattr(self, f"{_safe(spec.key)}_bias").repeat_interleave(n) / math.sqrt(n)
        return weight, bias

    def _affine(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``scale, shift`` of a batch norm in eval mode."""
        get = lambda stat: getattr(self, f"{_safe(prefix)}_{stat}").repeat_interleave(self.group_order)
        scale = get("weight") / torch.sqrt(get("running_var") + BATCH_NORM_EPS)
        return scale, get("bias") - get("running_mean") * scale

    def _folded(self, spec: ConvSpec, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self._dense_conv(spec)
        scale, shift = self._affine(norm)
        return weight * scale[:, None, None, None], bias * scale + shift

    def _pooled_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head convolution and the group pooling after it, as one linear map of window means.

        ``group_pool(conv(h))[g]`` averages ``conv(h)`` over output fields ``f`` and positions ``p``; the convolution
        is linear, so this is ``sum_{c, dy, dx} wbar[g, c, dy, dx] * mean_p h[c, p + (dy, dx)] + bbar[g]`` with
        ``wbar``, ``bbar`` the head's filters and bias averaged over ``f``. Returns ``wbar`` (``n x C x k x k``) and
        ``bbar`` (``n``): the same activations as the dense head, up to float rounding, for one ``n * F``-th of its
        arithmetic (1/512 for the paper's 128 output fields of C4).
        """
        weight, bias = self._dense_conv(self.plan.head)
        n = self.group_order
        return (weight.reshape(-1, n, *weight.shape[1:]).mean(dim=0), bias.reshape(-1, n).mean(dim=0))

    @torch.no_grad()
    def compiled(self, arithmetic: Arithmetic = FLOAT32) -> "CompiledWRN":
        """The network as plain convolutions in ``arithmetic``: bases expanded into dense filters, batch norms
        folded, the head folded into window means. Built once per arithmetic and kept until the next load, change of
        device or training step."""
        if self.training:
            self._compiled = {}
        compiled = self._compiled.get(arithmetic)
        if compiled is None:
            compiled = self._compiled[arithmetic] = CompiledWRN(self, arithmetic)
        return compiled  # not re-read from the cache: another thread may clear it (load, .to(), training)

    def forward(self, x: torch.Tensor, arithmetic: Arithmetic = FLOAT32) -> torch.Tensor:
        """``x``: ``B x 3 x S x S`` float in [0, 1] -> ``B x group_order`` float32 activations, computed in
        ``arithmetic`` (see :class:`CompiledWRN`)."""
        return self.compiled(arithmetic)(x)

    def trunk(self, x: torch.Tensor, arithmetic: Arithmetic = FLOAT32,
              taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Everything before the head; see :meth:`CompiledWRN.trunk`."""
        return self.compiled(arithmetic).trunk(x, taps)

    def _apply(self, fn, *args, **kwargs):
        self._compiled = {}  # dense filters are re-made after a change of device or dtype
        return super()._apply(fn, *args, **kwargs)


class CompiledWRN(nn.Module):
    """A :class:`ServingWRN` turned into plain convolutions for one :class:`Arithmetic` (the idea of escnn's
    ``export()``): dense filters kept channels last (in the arithmetic's dtype, or 8-bit, :class:`QuantizedConv`),
    batch norms folded into them or kept as per-channel affine maps after residual sums, and the head convolution
    with the group pooling folded into one float32 linear map of window means (:meth:`ServingWRN._pooled_head`).
    Inference only: it holds no parameters, and a new one is built when the serving network's weights change.

    ``forward(x)``: ``B x 3 x S x S`` float tensor in [0, 1] -> ``B x group_order`` float32 activations.
    """

    def __init__(self, serving: ServingWRN, arithmetic: Arithmetic = FLOAT32):
        super().__init__()
        self.plan, self.arithmetic = serving.plan, arithmetic
        dtype = arithmetic.dtype
        plan = serving.plan
        convs = {"stem": (plan.stem, *serving._folded(plan.stem, plan.stem_norm))}
        affines = {}
        for i, block in enumerate(plan.blocks):
            for j, spec in enumerate(block.convs):
                norm = block.norms[j] if j < len(block.norms) else None
                convs[f"{i}.{j}"] = (spec, *(serving._folded(spec, norm) if norm else serving._dense_conv(spec)))
            if block.shortcut is not None:
                convs[f"{i}.shortcut"] = (block.shortcut, *serving._dense_conv(block.shortcut))
            affines[f"{i}.out"] = tuple(t.to(dtype) for t in serving._affine(block.out_norm))
        if arithmetic.int8:
            layers = {key: QuantizedConv.from_float(w, b, spec.padding) for key, (spec, w, b) in convs.items()}
        else:
            # Filters are kept channels last, the layout oneDNN and cuDNN convolve fastest (the whole network:
            # 412 -> 343 ms in bfloat16 at 128 px on a 2-core EPYC).
            layers = {key: (_channels_last(w.to(dtype)), b.to(dtype)) for key, (_, w, b) in convs.items()}
        self.layers = {**layers, **affines}
        self.head = serving._pooled_head()  # float32: it sums thousands of positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.trunk(x)
        head = self.plan.head
        h = F.pad(h.float(), [head.padding] * 4)
        window = (h.shape[-2] - head.kernel_size + 1, h.shape[-1] - head.kernel_size + 1)
        weight, bias = self.head
        return torch.einsum("gcyx,bcyx->bg", weight, F.avg_pool2d(h, window, stride=1)) + bias

    def trunk(self, x: torch.Tensor, taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Everything before the head: ``B x 3 x S x S`` in [0, 1] -> the last block's output ``B x C x H x W``
        (in the arithmetic's dtype, channels last; channel ``f * n + j`` is component ``j`` of regular field ``f``)
        and the outputs of the blocks whose indices are in ``taps``, in that order."""
        dtype, int8 = self.arithmetic.dtype, self.arithmetic.int8
        if int8 and x.device.type != "cpu":
            raise ValueError(f"8-bit convolutions run on a CPU only, not on {x.device.type} (see int8_is_native)")
        if int8 and x.min() < 0:  # inside the trunk every convolution's input is a ReLU's output
            raise ValueError("8-bit convolutions take non-negative inputs: images in [0, 1], not normalised ones")
        layers = self.layers

        def conv(h, key, spec, relu=False):
            if int8:
                return layers[key](h, relu, dtype)
            weight, bias = layers[key]
            out = F.conv2d(h, weight, bias, padding=spec.padding)
            return F.relu(out) if relu else out

        h = conv(_channels_last(x.to(dtype)), "stem", self.plan.stem, relu=True)
        tapped = {}
        for i, block in enumerate(self.plan.blocks):
            out = h
            for j, spec in enumerate(block.convs):
                out = conv(out, f"{i}.{j}", spec, relu=j < len(block.norms))
            out = out + (conv(h, f"{i}.shortcut", block.shortcut) if block.shortcut is not None else h)
            scale, shift = layers[f"{i}.out"]
            h = F.relu(out * scale[None, :, None, None] + shift[None, :, None, None])
            if i in taps:
                tapped[i] = h
        return h, [tapped[i] for i in taps]


def _resize_buffers(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str) -> None:
    """Buffers whose size depends on the checkpoint (registered empty) take the checkpoint's size before loading."""
    for name, buffer in module._buffers.items():
        key = prefix + name
        if key in state_dict and buffer is not None and buffer.shape != state_dict[key].shape:
            module._buffers[name] = torch.empty_like(state_dict[key])


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """Channels-last copy of a 4-d tensor (filters, feature maps); other tensors as they are. Same values."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


class QuantizedConv:
    """A convolution whose multiplications are 8-bit: filters quantized once per output channel (symmetric int8),
    the non-negative input quantized per tensor on each call (uint8, scale ``max / 255``; one scale for a whole
    batch), sums exact in int32, rescaled to floats with the bias added (and a ReLU, if asked) by oneDNN.

    No calibration data: the input's scale is its own maximum. On a 2-core EPYC with AVX512-VNNI the paper's large
    layers run about twice as fast as in bfloat16, its whole network at 128 px 1.7 times; the activations move by a
    few tenths, like bfloat16's (the near-tie recheck in float32 covers both).
    """

    def __init__(self, packed: torch.Tensor, weight_scales: torch.Tensor, bias: torch.Tensor, padding: int):
        self.packed, self.weight_scales, self.bias, self.padding = packed, weight_scales, bias, [padding, padding]
        self.weight_zero_points = torch.zeros(len(weight_scales), dtype=torch.int64)
        self.input_zero_point = torch.zeros((), dtype=torch.int64)  # uint8 inputs are non-negative: levels from 0

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> "QuantizedConv":
        """``weight``: ``C_out x C_in x k x k`` float filters, ``bias``: ``C_out``; zero padding on each side."""
        scales = (weight.abs().amax(dim=(1, 2, 3)) / 127).clamp_min(torch.finfo(torch.float32).tiny).float()
        quantized = torch.round(weight / scales[:, None, None, None]).to(torch.int8)
        # The input scale given here is a placeholder: each call passes its own.
        packed = torch.ops.onednn.qconv_prepack(_channels_last(quantized), scales, 1.0, 0, [1, 1],
                                                [padding, padding], [1, 1], 1, None)
        return cls(packed, scales, bias.float(), padding)

    def __call__(self, x: torch.Tensor, relu: bool, dtype: torch.dtype) -> torch.Tensor:
        """``x``: ``B x C_in x H x W`` non-negative floats (channels last; a negative value counts as 0) ->
        ``B x C_out x H' x W'`` in ``dtype``."""
        scale = (x.amax().float() / 255).clamp_min(torch.finfo(torch.float32).tiny)
        # Scaled in float32: in bfloat16 the quotient would be rounded twice, one level off for about 5 % of values.
        # Out of place: x is the block's input, which its shortcut reads again.
        quantized = (x.float() / scale).round_().clamp_(0, 255).to(torch.uint8)
        return torch.ops.onednn.qconv2d_pointwise.tensor(
            quantized, scale, self.input_zero_point, self.packed, self.weight_scales,
            self.weight_zero_points, self.bias, [1, 1], self.padding, [1, 1], 1, 1.0, 0, dtype,
            "relu" if relu else "none", [], "")


# Buffers escnn derives from the free parameters or the architecture; never part of what is trained or shipped.
_DERIVED_ESCNN_BUFFERS = (".filter", ".expanded_bias", ".bias_expansion", ".indices_",
                          ".num_batches_tracked")


def load_escnn_from_serving(escnn_model: EscnnWRN, serving: ServingWRN) -> EscnnWRN:
    """Copy a serving network's parameters into an escnn network of the same configuration (for fine-tuning)."""
    missing, unexpected = escnn_model.load_state_dict(serving.escnn_state(), strict=False)
    missing = [k for k in missing if not any(part in k for part in _DERIVED_ESCNN_BUFFERS)]
    if missing or unexpected:
        raise ValueError(f"the escnn and serving networks differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return escnn_model
