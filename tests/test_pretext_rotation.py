"""Rotation prediction: the labels name the quarter turns applied."""

import torch

from ssl_toolkit.pretext.rotation import rotate_batch


def test_rotation_labels_name_the_quarter_turns():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)  # no rotational symmetry
    rotated, labels = rotate_batch(x)
    assert rotated.shape == (8, 1, 3, 3)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):
        k = int(labels[i])
        assert torch.equal(rotated[i], torch.rot90(x[i % 2], k, dims=(1, 2)))
        assert torch.equal(torch.rot90(rotated[i], -k, dims=(1, 2)), x[i % 2])  # undoing k turns gives the original
    # one counter-clockwise quarter turn moves the top-right corner to the top-left
    assert rotated[2, 0, 0, 0] == x[0, 0, 0, 2]
