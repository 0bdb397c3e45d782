"""Relative position: the labels match the geometry of the eight neighbours."""

import torch

from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.relative_position import NEIGHBOURS, drop_channels, layout, project_gray, sample_pairs


def _coordinate_image(b: int, s: int) -> torch.Tensor:
    """Channel 0 holds each pixel's row, channel 1 its column."""
    r = torch.arange(s, dtype=torch.float32)
    return torch.stack([r.view(s, 1).expand(s, s), r.view(1, s).expand(s, s)]).expand(b, 2, s, s).contiguous()


def test_labels_match_the_geometry_of_the_eight_neighbours():
    patch, step, jit = layout(64, 0.5, 0.075)
    assert (patch, step, jit) == (15, 23, 1)
    x = _coordinate_image(512, 64)
    centre, neigh, labels, pos = sample_pairs(x, patch, step, jit, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == set(range(8))
    # the patches are the crops at the reported positions
    assert torch.equal(centre[:, :, 0, 0].long(), pos[:, 0]) and torch.equal(neigh[:, :, 0, 0].long(), pos[:, 1])
    assert torch.equal(centre[:, :, -1, -1].long(), pos[:, 0] + patch - 1)
    delta = pos[:, 1] - pos[:, 0]  # (B, 2) row/column offset of the neighbour
    expected = NEIGHBOURS[labels]  # (B, 2)
    assert torch.equal(torch.round(delta / step).long(), expected)  # label 0 = up-left, 1 = up, ..., 7 = down-right
    off = delta.abs()
    assert ((off[expected != 0] >= step - 2 * jit) & (off[expected != 0] <= step + 2 * jit)).all()
    assert (off[expected == 0] <= 2 * jit).all()
    assert ((off[expected != 0]) > patch).all()  # a gap always separates the two patches
    assert pos.min() >= 0 and (pos + patch).max() <= 64


def test_chromatic_aberration_guards():
    x = torch.rand(6, 3, 8, 8)
    dropped = drop_channels(x, torch.Generator().manual_seed(0))
    kept = (dropped == x).flatten(2).all(-1)  # (N, 3) channels left untouched
    assert torch.equal(kept.sum(1), torch.ones(6, dtype=torch.long))
    other = dropped[~kept].view(6, 2, 8, 8)
    assert (other.std(dim=(-1, -2)) < x.std() / 10).all()  # the dropped channels are faint noise
    g = project_gray(x)
    axis = torch.tensor([-1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    assert (g * axis).sum(1).abs().max() < 1e-5  # no green-magenta component is left
    assert torch.allclose(project_gray(g), g, atol=1e-6)


def test_task_forward_on_colour_patches():
    facts = DataFacts(channels=3, image_size=34, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    task = build_task("relative-position", 8, {"hidden_dim": 16}, facts)
    seen = []

    def backbone(x):
        seen.append(x.shape)
        return x.mean(dim=(2, 3)).repeat(1, 3)[:, :8]

    loss, logs = task(backbone, torch.rand(4, 3, 34, 34))
    assert seen == [(8, 3, 8, 8)] and loss.ndim == 0 and 0 <= float(logs["pretext_acc"]) <= 1
