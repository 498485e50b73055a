"""The conversion of the paper's published checkpoint (needs the equiadapt wheel that `make setup` fetches)."""

from dataclasses import asdict

import pytest
import torch
from safetensors.torch import load_file

from canon.canonicalizer import NetworkSpec
from canon.convert import convert_paper_checkpoint, read_paper_checkpoint
from canon.networks import EscnnWRN, ServingWRN
from conftest import PAPER_WEIGHTS, REPO

WHEEL = REPO / ".cache" / "equiadapt-0.1.2-py3-none-any.whl"


@pytest.fixture(scope="module")
def paper_state():
    assert WHEEL.exists(), f"{WHEEL.name} is missing: run `make setup` (it fetches it from PyPI)"
    return read_paper_checkpoint(WHEEL)


def test_convert_reproduces_the_shipped_weights(paper_state, tmp_path):
    convert_paper_checkpoint(WHEEL, tmp_path)
    converted, shipped = load_file(tmp_path / "model.safetensors"), load_file(PAPER_WEIGHTS / "model.safetensors")
    assert converted.keys() == shipped.keys()
    assert all(torch.equal(converted[k], shipped[k]) for k in shipped)
    assert (tmp_path / "config.json").read_text() == (PAPER_WEIGHTS / "config.json").read_text()
    assert (PAPER_WEIGHTS / "model.safetensors").stat().st_size < 10 * 2**20


def test_serving_module_equals_the_escnn_network_on_the_paper_weights(paper_state):
    escnn_model = EscnnWRN(**asdict(NetworkSpec()), initialize=False)
    escnn_model.load_state_dict(paper_state, strict=True)
    serving = ServingWRN.from_escnn_state(paper_state, **asdict(NetworkSpec()))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected, actual = escnn_model.eval()(x), serving(x)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


def test_a_different_file_is_refused(tmp_path):
    bogus = tmp_path / "equivariant_wrn_c4.pt"
    torch.save({"x": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="not the paper's"):
        read_paper_checkpoint(bogus)
