"""MoCo and BYOL: momentum encoders follow the online weights and stay out of the saved backbone."""

import pytest
import timm
import torch

from ssl_toolkit.pretext import DataFacts, build_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_backbone():
    return timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=3)


def test_momentum_encoder_is_a_frozen_copy_that_follows_the_online_one():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    for name, cfg in (("moco", {"queue_size": 16, "hidden_dim": 32}), ("byol", {"hidden_dim": 32})):
        backbone = _tiny_backbone()
        task = build_task(name, int(backbone.num_features), cfg, facts)
        task.attach(backbone)
        assert not any(p.requires_grad for p in task.backbone_momentum.parameters())
        assert not any(p.requires_grad for p in task.head_momentum.parameters())
        assert task.backbone_momentum is not backbone
        loss, logs = task(backbone, torch.rand(8, 3, 16, 16))
        loss.backward()
        assert all(p.grad is None for p in task.backbone_momentum.parameters())
        w_online = next(backbone.parameters())
        w_target = next(task.backbone_momentum.parameters())
        with torch.no_grad():
            w_online.add_(1.0)
        before = w_target.detach().clone()
        task.on_train_batch_end(backbone, 0, 10)  # momentum = config.momentum at step 0
        m = task.config.momentum
        assert torch.allclose(w_target, m * before + (1 - m) * w_online)
        task.on_train_batch_end(backbone, 10, 10)  # momentum 1 at the end: no change
        after = w_target.detach().clone()
        task.on_train_batch_end(backbone, 10, 10)
        assert torch.equal(after, w_target)
        assert logs["features"].shape == (8, backbone.num_features)


def test_byol_views_are_asymmetric():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    task = build_task("byol", 8, {}, facts)
    assert task.views.cfg.blur_p == 1.0 and task.views.cfg.solarize_p == 0.0
    assert task.second_views.cfg.blur_p == 0.1 and task.second_views.cfg.solarize_p == 0.2
    assert build_task("simclr", 8, {}, facts).second_views is None  # SimCLR: one augmentation for both views


def test_a_view_key_set_alone_keeps_the_tasks_other_view_defaults():
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")
    byol = build_task("byol", 8, {"views": {"flip_p": 0.3}, "second_view": {"flip_p": 0.1}}, facts)
    assert byol.views.cfg.flip_p == 0.3 and byol.views.cfg.blur_p == 1.0 and byol.views.cfg.saturation == 0.2
    assert byol.second_views.cfg.flip_p == 0.1 and byol.second_views.cfg.solarize_p == 0.2 and byol.second_views.cfg.saturation == 0.2
    moco = build_task("moco", 8, {"views": {"flip_p": 0.3}}, facts)
    assert moco.views.cfg.blur_p == 0.5  # MoCo v2's blur stays


def test_a_moco_queue_shorter_than_a_batch_is_noted():
    from ssl_toolkit.pretext.moco import MoCoTask

    facts = DataFacts(channels=1, image_size=16, mean=(0.5,), std=(0.25,))
    assert MoCoTask.notes(MoCoTask.Config(queue_size=256), facts, 256) == []
    assert MoCoTask.notes(MoCoTask.Config(queue_size=100), facts, 128) == [
        "task_config.queue_size=100 is smaller than a batch (128 keys per step): "
        "the queue keeps 100 of each step's keys, so each query meets 100 negatives"
    ]
