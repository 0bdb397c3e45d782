"""SimCLR's multi-crop small views (``task_config.local_crops``)."""

import pytest
import timm
import torch
from lightly.loss import NTXentLoss

from ssl_toolkit.data.stage import Crop
from ssl_toolkit.errors import UserError
from ssl_toolkit.pretext import DataFacts, build_task
from ssl_toolkit.pretext.contrastive import SimCLRTask

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = DataFacts(channels=3, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3, name="t")


class Recording(torch.nn.Module):
    """A tiny timm backbone that records the shape of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=3)
        self.num_features = self.net.num_features
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


def test_small_views_are_extra_backbone_batches_at_their_own_side():
    torch.manual_seed(0)
    backbone = Recording()
    task = build_task("simclr", backbone.num_features, {"local_crops": 3, "hidden_dim": 32}, FACTS)
    loss, logs = task(backbone, torch.rand(5, 3, 32, 32))
    assert backbone.shapes == [(10, 3, 32, 32), (15, 3, 16, 16)]  # 2B full-size views, then L*B at half the side
    assert torch.isfinite(loss) and logs["features"].shape == (5, backbone.num_features)
    loss.backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)
    small = build_task("simclr", 8, {"local_crops": 1, "local_size": 0.1}, FACTS)
    assert small.local_views.size == 8  # never below 8 px


def test_the_loss_is_the_mean_nt_xent_over_pairs_with_a_full_size_view():
    backbone = Recording()
    task = build_task("simclr", backbone.num_features, {"local_crops": 2, "hidden_dim": 32}, FACTS)
    images = torch.rand(6, 3, 32, 32)
    task.seed_views(7, images.device)
    loss, _ = task(backbone, images)
    task.seed_views(7, images.device)
    with torch.no_grad():
        z = task.head(backbone(task.two_views(images)))
        l0, l1 = task.head(backbone(task.small_views(images))).split(6)
    nt = NTXentLoss(temperature=task.config.temperature)
    g0, g1 = z[:6], z[6:]
    pairs = [nt(g0, g1), nt(g0, l0), nt(g0, l1), nt(g1, l0), nt(g1, l1)]
    assert loss.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-5)


def test_without_small_views_simclr_is_unchanged():
    backbone = Recording()
    task = build_task("simclr", backbone.num_features, {"hidden_dim": 32}, FACTS)
    assert task.local_views is None
    assert not any(k.startswith("local_views") for k in task.state_dict())
    images = torch.rand(4, 3, 32, 32)
    task.seed_views(3, images.device)
    loss, _ = task(backbone, images)
    assert backbone.shapes == [(8, 3, 32, 32)]
    task.seed_views(3, images.device)
    with torch.no_grad():
        z = task.head(backbone(task.two_views(images)))
    assert loss.item() == pytest.approx(NTXentLoss(temperature=0.2)(z[:4], z[4:]).item(), rel=1e-6)


def test_streamed_files_get_the_small_crops_from_the_workers_and_shrink_them_on_the_device():
    cfg = SimCLRTask.Config.model_validate({"local_crops": 2, "local_views": {"crop_scale": [0.05, 0.3]}})
    stage = SimCLRTask.worker_stage(cfg, FACTS)
    assert stage.crops[2:] == (Crop("random_resized", (0.05, 0.3), (3 / 4, 4 / 3)),) * 2 and stage.views == 4
    backbone = Recording()
    task = build_task("simclr", backbone.num_features, {"local_crops": 2, "hidden_dim": 32}, FACTS)
    task(backbone, torch.rand(3, 4, 3, 32, 32))  # (B, 2 + L, C, S, S), as the workers hand them over
    assert backbone.shapes == [(6, 3, 32, 32), (6, 3, 16, 16)]


@pytest.mark.parametrize(
    ("key", "value"), [("local_crops", -1), ("local_crops", 17), ("local_size", 0), ("local_size", 1.0), ("local_size", float("nan"))]
)
def test_bad_small_view_settings_are_one_line_errors(key, value):
    with pytest.raises(UserError, match=rf"task_config \(simclr\).*{key}"):
        build_task("simclr", 8, {key: value}, FACTS)


def test_pretraining_with_small_views_trains_and_records_them(tmp_path):
    from conftest import tiny_config

    import ssl_toolkit as st

    meta = st.pretrain(tiny_config("simclr", epochs=1, task_config={"local_crops": 2}), out=tmp_path / "run")
    assert meta["steps"] == 4 and meta["task_config"]["local_crops"] == 2
    assert meta["task_config"]["local_views"]["crop_scale"] == [0.1, 0.5]


def test_small_views_follow_the_views_augmentation_except_their_crop():
    cfg = SimCLRTask.Config.model_validate({"views": {"flip_p": 0, "crop_scale": [0.3, 1.0]}})  # e.g. digits: no mirroring
    assert cfg.local_views.flip_p == 0 and cfg.local_views.crop_scale == (0.1, 0.5)
    cfg = SimCLRTask.Config.model_validate({"views": {"flip_p": 0}, "local_views": {"crop_scale": [0.05, 0.2], "jitter_p": 0}})
    assert (cfg.local_views.flip_p, cfg.local_views.jitter_p, cfg.local_views.crop_scale) == (0, 0, (0.05, 0.2))
    assert SimCLRTask.Config.model_validate(cfg.model_dump(mode="json")) == cfg  # config.yaml reads back the same
    cfg = SimCLRTask.Config.model_validate({"local_views": {"flip_p": 0}})  # small views set, views left alone
    assert cfg.local_views.flip_p == 0 and cfg.local_views.crop_scale == (0.1, 0.5)
    with pytest.raises(UserError, match=r"local_views"):
        build_task("simclr", 8, {"local_views": {"flip_p": 2}}, FACTS)


def test_small_view_settings_without_small_views_are_named():
    note = "task_config.{} no effect while task_config.local_crops is 0 (no small views)"
    validate = SimCLRTask.Config.model_validate
    assert validate({}).unused_settings() == []
    assert validate({"views": {"flip_p": 0}}).unused_settings() == []  # the small views follow: nothing was set for them
    assert validate({"local_views": {"flip_p": 0}, "local_crops": 2}).unused_settings() == []
    assert validate({"local_views": {"flip_p": 0}}).unused_settings() == [note.format("local_views takes")]
    both = validate({"local_size": 0.3, "local_views": {"crop_scale": [0.05, 0.2]}})
    assert both.unused_settings() == [note.format("local_views and task_config.local_size take")]
    assert validate(both.model_dump(mode="json")).unused_settings() == both.unused_settings()  # as config.yaml reads back
    saved = validate(validate({"views": {"flip_p": 0}}).model_dump(mode="json"))  # a resumed run's config: every key present
    assert saved.unused_settings() == []


def test_small_views_sized_otherwise_than_local_size_asks_are_noted():
    validate = SimCLRTask.Config.model_validate
    at = {size: DataFacts(channels=3, image_size=size, mean=(0.5,) * 3, std=(0.25,) * 3) for size in (6, 28, 32)}
    assert SimCLRTask.notes(validate({"local_crops": 2}), at[32], 256) == []  # 16 px, as asked
    assert SimCLRTask.notes(validate({"local_size": 0.2}), at[28], 256) == []  # no small views: unused_settings says so
    assert SimCLRTask.notes(validate({"local_crops": 2, "local_size": 0.2}), at[28], 256) == [
        "task_config.local_size=0.2 of 28 px is 6 px; the small views are 8 px (the smallest the views are made)"
    ]
    assert SimCLRTask.notes(validate({"local_crops": 1, "local_size": 0.5}), at[6], 256) == [
        "task_config.local_size=0.5 of 6 px is 3 px; the small views are 6 px (the image side)"
    ]
