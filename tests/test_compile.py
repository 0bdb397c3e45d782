"""``trainer.compile``: when ``auto`` compiles, and a compiled backbone trains like the eager one."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from ssl_toolkit import compile as compile_mod
from ssl_toolkit.compile import should_compile
from ssl_toolkit.config import TrainerConfig, validate
from ssl_toolkit.data.loaders import make_loader
from ssl_toolkit.engine import PretrainModule
from ssl_toolkit.errors import UserError
from ssl_toolkit.pretext import DataFacts, build_task


def test_explicit_settings_win_and_auto_follows_the_measured_break_even(monkeypatch):
    assert should_compile(True, "cpu", "32-true", 1) is True
    assert should_compile(False, "cuda", "bf16-mixed", 10**9) is False
    monkeypatch.setattr(compile_mod, "BREAK_EVEN_STEPS", {("cuda", "bf16-mixed"): 500})
    assert should_compile("auto", "cuda", "bf16-mixed", 499) is False
    assert should_compile("auto", "cuda", "bf16-mixed", 500) is True
    assert should_compile("auto", "cuda", "32-true", 10**9) is False  # not measured: eager
    assert should_compile("auto", "cpu", "bf16-mixed", 10**9) is False


def test_auto_stays_eager_on_the_cpu_until_a_win_is_measured():
    assert not any(device == "cpu" for device, _ in compile_mod.BREAK_EVEN_STEPS)
    assert should_compile("auto", "cpu", "32-true", 10**6) is False


def test_the_setting_is_validated():
    assert validate(TrainerConfig, {"compile": "true"}).compile is True
    assert validate(TrainerConfig, {"compile": "auto"}).compile == "auto"
    with pytest.raises(UserError, match="trainer|compile"):
        validate(TrainerConfig, {"compile": "sometimes"})


class StepLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def train_rotation(compiled: bool, steps: int = 2) -> tuple[PretrainModule, list[float]]:
    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )  # (B, 8)
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    task = build_task("rotation", 8, {}, facts)
    cfg = TrainerConfig(precision="32-true", accelerator="cpu", online_probe=False, progress_bar=False, batch_size=8, compile=compiled)
    module = PretrainModule(backbone, task, cfg, lr=1e-2, weight_decay=0.0, optimizer="adamw")
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    losses = StepLosses()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
    )
    trainer.fit(module, make_loader(images, None, 8, shuffle=True, num_workers=0))
    return module, losses.losses


@pytest.mark.slow
def test_compiled_backbone_trains_with_the_eager_loss(one_thread):
    eager_module, eager = train_rotation(compiled=False)
    module, compiled = train_rotation(compiled=True)
    assert module.backbone._compiled_call_impl is not None  # compiled in place ...
    assert eager_module.backbone._compiled_call_impl is None
    assert set(module.backbone.state_dict()) == set(eager_module.backbone.state_dict())  # ... with the eager names
    assert len(compiled) == len(eager) == 2
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)  # step 1: same weights, same data
    assert compiled[1] == pytest.approx(eager[1], rel=1e-3)  # step 2: after one identical update
    conv = module.backbone[0].weight
    assert (conv - initial_conv_weight()).abs().max() > 1e-3  # it trained
    for p, q in zip(module.backbone.parameters(), eager_module.backbone.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def initial_conv_weight() -> torch.Tensor:
    torch.manual_seed(0)
    return nn.Conv2d(3, 8, 3, padding=1, bias=False).weight.detach()
