"""``--augment`` policies: shapes and dtypes kept, torchvision policies change images, albumentations files load and
apply, and bad values fail before anything runs."""

from __future__ import annotations

import albumentations as A
import pytest
import torch

from ssl_toolkit.data.policies import POLICIES, build_augment, check_augment
from ssl_toolkit.errors import UserError


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_policies_keep_shape_and_dtype(policy, channels):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (9, channels, 16, 16), dtype=torch.uint8)
    y = build_augment(policy, 16, channels)(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    if policy == "none":
        assert torch.equal(x, y)
    else:
        assert not torch.equal(x, y)


def test_albumentations_file_is_loaded_and_applied(tmp_path):
    path = tmp_path / "pipe.yaml"
    A.save(A.Compose([A.HorizontalFlip(p=1.0)]), str(path), data_format="yaml")
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    y = build_augment(str(path), 8, 3)(x)
    assert torch.equal(y, x.flip(-1))
    gray = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(build_augment(str(path), 8, 1)(gray), gray.flip(-1))


def test_albumentations_pipeline_that_resizes_is_refused(tmp_path):
    path = tmp_path / "crop.yaml"
    A.save(A.Compose([A.CenterCrop(4, 4)]), str(path), data_format="yaml")
    with pytest.raises(UserError, match="must keep 8x8"):
        build_augment(str(path), 8, 3)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("randaug", r"expected one of none, basic.*\(did you mean 'randaugment'\?\)$"),
        ("missing.yaml", "file does not exist"),
        ("BAD", "expected one of"),
    ],
)
def test_bad_augment_values(spec, message, tmp_path):
    with pytest.raises(UserError, match=message):
        check_augment(spec)
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: text\n")
    with pytest.raises(UserError, match="not an albumentations pipeline"):
        check_augment(str(bad))
