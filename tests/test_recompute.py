"""``trainer.grad_checkpointing``: fewer activations kept, the same training, refused where timm lacks it."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer
from lightning.pytorch.callbacks import Callback

from ssl_toolkit.backbones import create_backbone, feature_dim
from ssl_toolkit.config import BackboneConfig, TrainerConfig
from ssl_toolkit.data.loaders import make_loader
from ssl_toolkit.engine import PretrainModule
from ssl_toolkit.errors import UserError
from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.recompute import check_grad_checkpointing, set_grad_checkpointing


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of ``model(x).sum()``."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return total


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_checkpointing_keeps_a_fraction_of_the_activations_with_the_same_gradients(name, one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name=name), 3, 32)
    model.eval()  # BatchNorm with its running statistics: both passes compute the same function
    x = torch.randn(4, 3, 32, 32)  # (B, C, H, W)
    plain = saved_bytes(model, x)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    set_grad_checkpointing(model, True)
    kept = saved_bytes(model, x)
    assert kept < 0.6 * plain  # only block inputs (and what is outside the blocks) stay in the forward pass
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def train_simclr(checkpointing: bool, **trainer) -> tuple[PretrainModule, list[float]]:
    torch.manual_seed(0)
    backbone, _ = create_backbone(BackboneConfig(name="test_resnet"), 3, 16)
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    task = build_task("simclr", feature_dim(backbone), {}, facts)
    cfg = TrainerConfig(
        precision="32-true",
        accelerator="cpu",
        online_probe=False,
        progress_bar=False,
        batch_size=8,
        grad_checkpointing=checkpointing,
        **trainer,
    )
    module = PretrainModule(backbone, task, cfg, lr=1e-2, weight_decay=0.0, optimizer="adamw")
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)  # (N, C, H, W)
    losses = Losses()
    trainer = quiet_trainer(max_steps=3, callbacks=[losses], deterministic=True)
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    return module, losses.values


def test_a_checkpointed_run_trains_like_the_plain_one(one_thread):
    plain_module, plain = train_simclr(False)
    module, checkpointed = train_simclr(True)
    assert module.backbone.grad_checkpointing and not plain_module.backbone.grad_checkpointing
    assert len(checkpointed) == len(plain) == 3
    assert checkpointed == pytest.approx(plain, rel=1e-4)  # same augmentations, same losses, step after step
    assert set(module.backbone.state_dict()) == set(plain_module.backbone.state_dict())  # checkpoints unchanged
    for p, q in zip(module.backbone.parameters(), plain_module.backbone.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)


def test_a_backbone_without_it_is_refused_in_one_line(cli, tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match="backbone 'linear' has no gradient checkpointing"):
        check_grad_checkpointing(model, "linear")
    out = tmp_path / "run"
    code, _, err = cli(
        "pretrain",
        "--data",
        "digits",
        "--image-size",
        "80",
        "--backbone",
        "inception_v3",
        "--set",
        "trainer.grad_checkpointing=true",
        "--out",
        str(out),
    )  # fmt: skip  (80 px: inception_v3 takes 75 px and more)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "does not support gradient checkpointing" in err and "trainer.grad_checkpointing=false" in err
    assert not out.exists()  # refused before the run folder is written


def test_finetuning_with_checkpointing_trains_like_without(one_thread):
    import ssl_toolkit as st

    def finetune(checkpointing: bool) -> dict:
        cfg = {
            "mode": "finetune",
            "data": {"name": "digits", "image_size": 16},
            "epochs": 1,
            "batch_size": 64,
            "evaluator_config": {"grad_checkpointing": checkpointing, "augment": "none"},
        }
        return st.probe(None, cfg, random_init=True, backbone={"name": "test_resnet"})

    plain, checkpointed = finetune(False), finetune(True)
    assert checkpointed["grad_checkpointing"] is True and "grad_checkpointing" not in plain
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)  # same batches, same gradients
    assert abs(checkpointed["top1"] - plain["top1"]) <= 0.05  # only BatchNorm's running averages differ (updated twice)
