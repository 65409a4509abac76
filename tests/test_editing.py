"""Edit directions: InterFaceGAN shift, GANSpace set-coordinate rule, PCA basis, file formats."""

import numpy as np
import pytest
import torch

from hyperinverter.editing import (
    GANSpaceDirection,
    LinearDirection,
    compute_ganspace,
    load_direction,
    save_direction,
)
from hyperinverter.editing.ganspace import GANSpaceBasis


def test_linear_direction_shifts_every_layer():
    ws = torch.randn(2, 6, 4)
    d = LinearDirection(torch.tensor([[1.0, 0, 0, 0]]))
    out = d.apply(ws, 2.0)
    assert torch.allclose(out - ws, torch.tensor([2.0, 0, 0, 0]).expand_as(ws))
    per_layer = LinearDirection(torch.randn(6, 4))
    assert torch.allclose(per_layer.apply(ws, 1.0) - ws, per_layer.vector.expand_as(ws))
    with pytest.raises(ValueError, match="does not fit"):
        LinearDirection(torch.randn(5, 4)).apply(ws, 1.0)


def test_ganspace_sets_the_coordinate_on_its_layers_only():
    comp = torch.linalg.qr(torch.randn(4, 4))[0].T  # orthonormal rows
    basis = GANSpaceBasis(comp=comp, mean=torch.randn(4), std=torch.tensor([3.0, 2.0, 1.0, 0.5]))
    d = GANSpaceDirection(basis, index=1, start=2, end=4, default_strength=5.0)
    ws = torch.randn(3, 6, 4).repeat(1, 1, 1)
    ws[:] = ws[:, :1]  # a W code: all layers equal
    out = d.apply(ws)
    coord = ((out[:, 2] - basis.mean) @ comp[1]) / basis.std[1]
    assert torch.allclose(coord, torch.full((3,), 5.0), atol=1e-5)
    assert torch.equal(out[:, :2], ws[:, :2]) and torch.equal(out[:, 4:], ws[:, 4:])
    # other principal coordinates are untouched
    for j in (0, 2, 3):
        assert torch.allclose((out[:, 2] - ws[:, 2]) @ comp[j], torch.zeros(3), atol=1e-5)


def test_compute_ganspace_from_a_generator(tiny_generator):
    basis = compute_ganspace(tiny_generator, num_samples=4000, num_components=8)
    assert basis.comp.shape == (8, 16)
    assert torch.allclose(basis.comp @ basis.comp.T, torch.eye(8), atol=1e-4)
    assert torch.all(basis.std[:-1] >= basis.std[1:])
    with torch.no_grad():
        w = tiny_generator.mapping(torch.randn(4000, 16, generator=torch.Generator().manual_seed(9)))[:, 0]
    proj_std = ((w - basis.mean) @ basis.comp[0]).std()
    assert abs(float(proj_std) / float(basis.std[0]) - 1) < 0.1


def test_direction_files_round_trip_and_foreign_formats(tmp_path):
    vec = torch.randn(1, 8)
    vec = vec / vec.norm()
    torch.save(vec, tmp_path / "age.pt")
    d = load_direction(tmp_path / "age.pt")
    assert isinstance(d, LinearDirection) and d.name == "age" and torch.equal(d.vector, vec)
    torch.save(vec[:, None].repeat(1, 6, 1), tmp_path / "pose.pt")  # [1, 18, 512]-style, identical rows
    assert load_direction(tmp_path / "pose.pt").vector.shape == (1, 8)
    np.save(tmp_path / "smile.npy", vec.numpy())
    assert torch.allclose(load_direction(tmp_path / "smile.npy").vector, vec)

    comp = torch.linalg.qr(torch.randn(8, 8))[0].T[:5]
    torch.save({"comp": comp[:, None], "mean": torch.randn(1, 8), "std": torch.rand(5) + 1}, tmp_path / "pca.pt")
    with pytest.raises(ValueError, match="GANSpace basis"):
        load_direction(tmp_path / "pca.pt")
    g = load_direction(tmp_path / "pca.pt", index=2, start=0, end=3, strength=-4.0)
    assert isinstance(g, GANSpaceDirection) and g.basis.comp.shape == (5, 8)

    for direction in (d, g):
        path = save_direction(direction, tmp_path / f"{direction.name}.safetensors")
        again = load_direction(path)
        ws = torch.randn(2, 6, 8)
        assert torch.allclose(again.apply(ws), direction.apply(ws))

    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError):
        load_direction(tmp_path / "bad.pt")
