"""Loading holds the weights once: a module built on the meta device takes the file's tensors, copying only those
that are views into a larger storage or of another dtype."""

import pytest
import torch
from torch import nn

from hyperinverter.errors import CheckpointError
from hyperinverter.io.checkpoints import instantiate_strict


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3)
        self.linear = nn.Linear(8, 2)
        self.register_buffer("table", torch.zeros(3))


def state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(t.shape, generator=gen) for name, t in Net().state_dict().items()}


def test_the_module_takes_the_files_tensors_without_copies():
    tensors = state()
    net = instantiate_strict(Net, tensors, source="file")
    for name, t in net.state_dict().items():
        assert t.data_ptr() == tensors[name].data_ptr(), f"{name} was copied"
        assert torch.equal(t, tensors[name])
    assert all(p.requires_grad for p in net.parameters())  # the module's own flags, not the file's
    assert all(not t.is_meta for t in net.state_dict().values())


def test_views_into_a_larger_storage_and_other_dtypes_are_copied():
    tensors = state()
    whole = torch.randn(2 * tensors["linear.weight"].numel())
    tensors["linear.weight"] = whole[: tensors["linear.weight"].numel()].view_as(tensors["linear.weight"])
    tensors["conv.weight"] = tensors["conv.weight"].double()
    net = instantiate_strict(Net, tensors, source="file")
    assert net.linear.weight.data_ptr() != whole.data_ptr()  # does not keep `whole` alive
    assert net.linear.weight.untyped_storage().nbytes() == net.linear.weight.numel() * 4
    assert net.conv.weight.dtype == torch.float32
    torch.testing.assert_close(net.conv.weight, tensors["conv.weight"].float())
    torch.testing.assert_close(net.linear.weight, tensors["linear.weight"])


def test_a_mismatched_file_fails_before_anything_is_taken():
    tensors = state()
    tensors["linear.weight"] = torch.zeros(3, 8)
    with pytest.raises(CheckpointError, match="linear.weight"):
        instantiate_strict(Net, tensors, source="file")
