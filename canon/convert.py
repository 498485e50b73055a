"""Turn the paper's published canonicalizer checkpoint into this project's weights layout.

Source: equiadapt 0.1.2 (MIT, https://pypi.org/project/equiadapt/0.1.2/) ships the SAM canonicalizer of Mondal et al.
(NeurIPS 2023) as ``tutorials/images/utils/equivariant_wrn_c4.pt``: an e2cnn state dict of 76 MB, mostly cached
dense filters. The conversion keeps the 1.86 M free parameters, the batch-norm statistics and the four small sampled
bases (about 8 MB of safetensors), after checking that the file loads strictly into :class:`EscnnWRN`.

Get the source with ``pip download --no-deps equiadapt==0.1.2`` (``make paper-weights`` does it); pass the wheel or
the extracted ``.pt``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

from .canonicalizer import Canonicalizer, DecisionPolicy
from .networks import EscnnWRN

WHEEL_MEMBER = "tutorials/images/utils/equivariant_wrn_c4.pt"
WHEEL_SHA256 = "bd0fae2d8e755721995bc89cf7cbec72a4f20f981c45ddcb1137dc6a61a56d12"  # equiadapt-0.1.2-py3-none-any.whl
CHECKPOINT_SHA256 = "7205a7f21b39cdf7a7cd18a6be58687e63476495de87f94a9c161ff1ed28c083"  # equivariant_wrn_c4.pt
# 8-bit convolutions (or bfloat16) where the hardware has them; a first pass within 1.0 (plus the mirror's margin) of
# a tie is run again in float32, whose near-ties (within 1.0) are decided with the photo's mirror. On the 215 shared
# photos the largest deviation of the first pass is 0.46 with int8 convolutions (0.34 in bfloat16), under half the
# recheck margin, and the mirror's look at near-ties recovers 181 of them instead of 174.
SERVING_POLICY = DecisionPolicy(precision="int8", recheck_margin=1.0, mirror_average=True, mirror_margin=1.0)

EQUIADAPT_LICENSE = """MIT License

Copyright (c) 2023 Arnab Mondal

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

MODEL_CARD = """---
license: mit
library_name: canon
tags:
- equivariance
- canonicalization
- segment-anything
---

# wrn-c4-paper: the C4 canonicalizer for Segment Anything of Mondal et al. (NeurIPS 2023)

A C4-equivariant wide-ResNet (escnn regular fields, kernel 5, 12 layers, 1.86 M free parameters) that looks at a
photo and scores its four 90-degree rotations. Put in front of SAM it makes SAM's masks follow the rotation of the
input exactly ("Equivariant Adaptation of Large Pretrained Models", Mondal, Panigrahi, Kaba, Rajeswar, Ravanbakhsh,
NeurIPS 2023, https://arxiv.org/abs/2310.01647). Trained with the canonicalization prior (cross-entropy towards the
identity rotation on upright COCO photos), SAM frozen.

- Provenance: converted by `python -m canon convert` from `{member}` in the equiadapt 0.1.2 wheel
  (wheel sha256 `{wheel_sha}`, checkpoint sha256 `{checkpoint_sha}`). The conversion keeps the free parameters,
  batch-norm statistics and sampled bases; it checks that the source loads strictly into the escnn network.
- Licence: MIT, Copyright (c) 2023 Arnab Mondal (see LICENSE in this folder).
- Input recipe: longest side to 1024, centred zero padding to 1024 x 1024, centre crop 0.9, resize to 128, RGB in
  [0, 1], no normalisation.
- Arithmetic (the `policy` section of `config.json`): the trunk's convolutions in 8 bits where the device has 8-bit
  dot products (a CPU with VNNI: filters per output channel, activations per tensor, scaled by their own maximum),
  their sums and the rest in bfloat16 where the device has it natively (a CPU with AVX512-BF16 or AMX, a GPU),
  float32 elsewhere. When the first pass's two best rotations are within `recheck_margin` + `mirror_margin` (1.0 +
  1.0) of each other, the network runs again in float32; when float32's two best are within `mirror_margin` (a
  near-tie), it runs on the left-right mirror of the photo too (`mirror_average`; the mirror turned by `-j` pairs
  with the photo turned by `j`), and the mean of the two decides. On the 215 photos below the first pass's
  activations are within 0.46 of float32's (0.34 in bfloat16 alone), under half of `recheck_margin`, so every
  decision is the one float32 makes.
- Use: `Canonicalizer.from_pretrained(this_folder_or_repo_id).canonicalize(image)` from the `canon` library.

## Figures

Measured by `python -m canon evaluate orientation --images ../shared/data/upright --model wrn-c4-paper` on the 215
public-domain photos of the project's `shared/data/upright/` (2-core AMD EPYC CPU, no GPU): the upright orientation is
recovered for 181 of 215 photos (84.2 %; 174 without the mirror's second look at near-ties), the same for each of
the four rotations (the pipeline is exactly equivariant).
"""


def read_paper_checkpoint(source: str | Path) -> dict[str, torch.Tensor]:
    """Load ``equivariant_wrn_c4.pt`` from the equiadapt wheel (``.whl``) or the extracted file, checking its sha256."""
    source = Path(source)
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(WHEEL_MEMBER)
    else:
        data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise ValueError(f"{source.name} holds a checkpoint with sha256 {digest[:12]}..., not the paper's "
                         f"{CHECKPOINT_SHA256[:12]}...; pass equiadapt-0.1.2-py3-none-any.whl or its {WHEEL_MEMBER}")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def convert_paper_checkpoint(source: str | Path, out_dir: str | Path) -> Canonicalizer:
    """Write ``config.json``, ``model.safetensors``, ``README.md`` (model card) and ``LICENSE`` into ``out_dir``."""
    state = read_paper_checkpoint(source)
    canonicalizer = Canonicalizer(policy=SERVING_POLICY)  # the paper's network and preprocessing
    escnn_model = EscnnWRN(**asdict(canonicalizer.network_spec), initialize=False)
    escnn_model.load_state_dict(state, strict=True)  # the layout is the paper's
    canonicalizer.network.load_state_dict(canonicalizer.network.state_from_escnn(state), strict=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "README.md").write_text(MODEL_CARD.format(member=WHEEL_MEMBER, wheel_sha=WHEEL_SHA256,
                                                         checkpoint_sha=CHECKPOINT_SHA256))
    (out_dir / "LICENSE").write_text(EQUIADAPT_LICENSE)
    canonicalizer.save_pretrained(out_dir)
    return canonicalizer
