"""``trainer.backbone_chunk``: the whole batch's loss and gradients, one chunk's activations at a time."""

from __future__ import annotations

import json

import pytest
import torch
from test_recompute import saved_bytes, train_simclr

from ssl_toolkit.backbones import create_backbone
from ssl_toolkit.chunked import AUTO_MIN_CHUNK, ChunkedBackbone, auto_chunk, saved_bytes_per_input
from ssl_toolkit.config import BackboneConfig


def loss_of(feats: torch.Tensor) -> torch.Tensor:
    """A loss that couples every row of the batch (like NT-Xent): each row against the batch mean."""
    z = torch.nn.functional.normalize(feats.flatten(1), dim=1)  # (N, D)
    return ((z - z.mean(0, keepdim=True)) ** 2).sum() + z[0] @ z[-1]


def grads_of(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def reference(model: torch.nn.Module, fn, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """The function the chunked call computes, with plain autograd keeping every activation."""
    return torch.cat([fn(piece) for piece in x.split(chunk)])


@pytest.mark.parametrize("features", [False, True])
def test_a_layernorm_vit_gets_the_full_batch_gradients(features, one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name="test_vit"), 3, 32)
    x = torch.randn(10, 3, 32, 32)  # (N, C, H, W): chunks of 4, 4 and 2
    plain_fn = model.forward_features if features else model
    chunked = ChunkedBackbone(model, 4)
    chunked_fn = chunked.forward_features if features else chunked
    want = grads_of(model, loss_of(plain_fn(x)))  # the whole batch at once
    out = chunked_fn(x)
    assert out.shape == plain_fn(x).shape and out.requires_grad
    got = grads_of(model, loss_of(out))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


class Held:
    """What autograd keeps of one saved tensor; counts the bytes alive at once and their peak."""

    live = 0
    peak = 0

    def __init__(self, t: torch.Tensor) -> None:
        self.t, self.n = t, t.numel() * t.element_size()
        Held.live += self.n
        Held.peak = max(Held.peak, Held.live)

    def __del__(self) -> None:
        Held.live -= self.n


def peak_saved_bytes(fn, x: torch.Tensor) -> int:
    """Peak bytes of saved tensors alive at once over the forward and backward of ``loss_of(fn(x))``."""
    Held.live = Held.peak = 0
    with torch.autograd.graph.saved_tensors_hooks(Held, lambda h: h.t):
        loss_of(fn(x)).backward()
    return Held.peak


def test_only_one_chunk_of_activations_is_alive_at_a_time(one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name="test_resnet"), 3, 32)
    x = torch.randn(32, 3, 32, 32)  # (N, C, H, W)
    plain = peak_saved_bytes(model, x)
    chunked = peak_saved_bytes(ChunkedBackbone(model, 8), x)  # the second pass included
    one_chunk = peak_saved_bytes(model, x[:8])
    assert plain >= saved_bytes(model, x)  # without chunks every activation is alive when the backward pass starts
    assert chunked < 0.35 * plain
    assert chunked <= one_chunk + x.numel() * 4 + sum(p.numel() * 4 for p in model.parameters()) + 32 * 1024  # + input, weights, outputs


def test_batchnorm_sees_chunks_in_both_passes_and_updates_its_statistics_once(one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name="test_resnet"), 3, 32)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    x = torch.randn(12, 3, 32, 32)  # (N, C, H, W)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    want = grads_of(model, loss_of(reference(model, model, x, 4)))  # "ghost" batch norm over chunks of 4
    after_forward = bn.running_mean.clone()
    model.load_state_dict(start)
    got = grads_of(model, loss_of(ChunkedBackbone(model, 4)(x)))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_mean, after_forward)  # the recomputing pass moved no running statistic
    assert int(bn.num_batches_tracked) == 3  # one momentum step per chunk


def test_drop_path_is_replayed_in_the_second_pass(one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name="test_vit", kwargs={"drop_path_rate": 0.5}), 3, 32)
    x = torch.randn(9, 3, 32, 32)  # (N, C, H, W)
    torch.manual_seed(1)
    want = grads_of(model, loss_of(reference(model, model, x, 3)))
    torch.manual_seed(1)
    got = grads_of(model, loss_of(ChunkedBackbone(model, 3)(x)))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_autocast_is_replayed_in_the_second_pass(one_thread):
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name="test_vit"), 3, 32)
    model.eval()
    x = torch.randn(8, 3, 32, 32)  # (N, C, H, W)
    fp32 = grads_of(model, loss_of(reference(model, model, x, 4)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = grads_of(model, loss_of(reference(model, model, x, 4).float()))
        got = grads_of(model, loss_of(ChunkedBackbone(model, 4)(x).float()))
    flat = [torch.cat([t.flatten() for t in ts]) for ts in (want, got, fp32)]  # (P,) each
    off_fp32 = ((flat[2] - flat[0]).norm() / flat[0].norm()).item()
    off_chunked = ((flat[1] - flat[0]).norm() / flat[0].norm()).item()
    assert off_fp32 > 1e-3  # bfloat16 shows in the gradients
    # the second pass ran in bfloat16 too: only the order of summing the chunks' bfloat16 gradients differs
    assert off_chunked < 0.25 * off_fp32


def test_without_gradients_or_within_one_chunk_it_is_the_plain_call(one_thread):
    model, _ = create_backbone(BackboneConfig(name="test_resnet"), 3, 32)
    chunked = ChunkedBackbone(model, 4)
    x = torch.randn(4, 3, 32, 32)  # (N, C, H, W)
    assert chunked(x).grad_fn is not None and "Chunked" not in type(chunked(x).grad_fn).__name__
    with torch.no_grad():
        assert chunked(torch.randn(9, 3, 32, 32)).grad_fn is None
    assert chunked.num_features == model.num_features  # other attributes are the backbone's


class PlainChunks(ChunkedBackbone):
    """The reference: the same chunks through plain autograd, every activation kept."""

    def _run(self, fn, x):
        return reference(self.backbone, fn, x, self.chunk)


def test_a_chunked_simclr_run_trains_like_plain_autograd_over_the_same_chunks(one_thread, monkeypatch):
    plain_module, plain = train_simclr(False)
    chunk_module, one_chunk = train_simclr(False, backbone_chunk=16)  # 2 x 8 views: one chunk, the plain call
    assert one_chunk == pytest.approx(plain, rel=1e-5)
    _, halves = train_simclr(False, backbone_chunk=8)  # two chunks: each BatchNorm sees 8 views
    assert halves[0] != pytest.approx(plain[0], rel=1e-3)  # batch statistics of a chunk, not of the batch
    monkeypatch.setattr("ssl_toolkit.engine.ChunkedBackbone", PlainChunks)
    _, reference_halves = train_simclr(False, backbone_chunk=8)
    assert len(halves) == 3 and halves == pytest.approx(reference_halves, rel=1e-4)  # same losses, step after step
    assert set(chunk_module.backbone.state_dict()) == set(plain_module.backbone.state_dict())  # checkpoints unchanged


def test_the_command_line_trains_with_it_and_records_it(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(
        "pretrain", "--task", "simclr", "--data", "digits", "--image-size", "16", "--backbone", "test_resnet",
        "--batch-size", "32", "--set", "trainer.max_steps=2", "--set", "trainer.backbone_chunk=16",
        "--set", "trainer.grad_checkpointing=true", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 2
    assert "backbone_chunk: 16" in (out / "config.yaml").read_text()
    code, _, err = cli("pretrain", "--data", "digits", "--set", "trainer.backbone_chunk=0", "--out", str(tmp_path / "bad"))
    assert code == 2 and err.strip().count("\n") == 0 and "backbone_chunk" in err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("task", "setting"),
    [("inpainting", {"backbone_chunk": 24}), ("moco", {"backbone_chunk": 24}), ("inpainting", {"activation_memory_mb": 0.01})],
)  # feature maps; a momentum encoder beside the chunks; auto measuring forward_features
def test_every_kind_of_task_trains_through_the_chunks(task, setting, monkeypatch, tmp_path):
    from conftest import tiny_config

    import ssl_toolkit as st
    from ssl_toolkit import chunked

    calls = []
    apply = chunked._ChunkedCall.apply
    monkeypatch.setattr(chunked._ChunkedCall, "apply", lambda *a: calls.append(a[3].shape[0]) or apply(*a))
    cfg = tiny_config(task, epochs=1)
    cfg["trainer"].update(max_steps=2, online_probe=False, **setting)
    cfg["data"].update(synthetic_train=128, synthetic_test=64)
    meta = st.pretrain(cfg, out=tmp_path / "run")
    chunk = setting.get("backbone_chunk", AUTO_MIN_CHUNK)  # a budget of 0.01 MiB: the least chunk
    assert meta["steps"] == 2 and meta["backbone_chunk"] == chunk
    assert len(calls) == 2 and all(n > chunk for n in calls)  # one chunked backbone call per step, over more than a chunk


MIB = 2**20


def test_auto_chunks_only_over_the_budget_in_chunks_of_an_eighth_of_it_and_at_least_eight():
    assert auto_chunk(11.34 * MIB, 128, 768 * MIB) == 8  # resnet18, 224 px, bf16: 1,452 MiB -> 16 chunks of 8 (91 MiB)
    assert auto_chunk(7.0 * MIB, 128, 768 * MIB) == 13  # 13 fit in 96 MiB: 10 chunks, ceil(128 / 10)
    assert auto_chunk(21.15 * MIB, 128, 768 * MIB) == AUTO_MIN_CHUNK == 8  # float32: 4 would fit, 8 is the least
    assert auto_chunk(0.643 * MIB, 1024, 768 * MIB) is None  # rotation, resnet10t, 28 px, float32, batch 256: 658 MiB, whole
    assert auto_chunk(1.0, 100, 100.0) is None  # exactly the budget: whole
    assert auto_chunk(1.0, 100, 99.0) == 12  # one byte over: 12 fit in an eighth, so 9 chunks, ceil(100 / 9)
    assert auto_chunk(10.0, 128, 1200.0) == 15  # 15 fit in an eighth: 9 chunks, ceil(128 / 9)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_measured_bytes_per_input_are_what_autograd_keeps(bf16, one_thread):
    # a convolution keeps its input, a ReLU its output: (3 + 5) x 6 x 6 values per input
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(6, 3, 6, 6)  # (N, C, H, W)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # the cast weights do not grow with the batch
        per_input = saved_bytes_per_input(model, model, x)
    assert per_input == (3 + 5) * 6 * 6 * (2 if bf16 else 4)


def test_measuring_moves_no_running_statistics_and_no_random_state(one_thread):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    saved_bytes_per_input(model, model, torch.randn(8, 3, 5, 5))
    after_measuring = torch.rand(4)
    torch.manual_seed(3)
    torch.randn(8, 3, 5, 5)
    assert torch.equal(after_measuring, torch.rand(4))  # the dropout masks drawn were given back
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_auto_trains_exactly_as_the_chunk_it_chose_or_as_the_whole_batch(one_thread):
    # batch 8 = 16 views of test_resnet at 16 px: far under the default budget, so the whole batch
    module, auto = train_simclr(False)
    assert module.backbone_chunk is None
    _, plain = train_simclr(False, backbone_chunk=None)
    assert auto == plain  # measuring the first step changed nothing
    tight, tight_losses = train_simclr(False, activation_memory_mb=0.01)
    _, eights = train_simclr(False, backbone_chunk=8)
    assert tight.backbone_chunk == 8 and tight_losses == eights


def test_auto_says_in_one_line_what_it_chose_and_records_it(cli, tmp_path):
    common = ("pretrain", "--task", "simclr", "--data", "digits", "--image-size", "16", "--backbone", "test_resnet",
              "--batch-size", "128", "--set", "trainer.max_steps=1")  # fmt: skip
    code, _, err = cli(*common, "--out", str(tmp_path / "whole"))
    assert code == 0, err
    assert "backbone_chunk" not in err and json.loads((tmp_path / "whole" / "meta.json").read_text())["backbone_chunk"] is None
    assert "backbone_chunk: auto" in (tmp_path / "whole" / "config.yaml").read_text()
    code, _, err = cli(*common, "--set", "trainer.activation_memory_mb=40", "--out", str(tmp_path / "tight"))
    assert code == 0, err  # about 0.2 MiB per input: 256 views keep about 50 MiB, a chunk at most 5
    said = [line for line in err.splitlines() if "backbone_chunk auto" in line]
    assert len(said) == 1 and "MiB of activations per input" in said[0] and "for the batch's 256 inputs" in said[0]
    chunk = int(said[0].split("it runs ")[1].split()[0])
    assert 8 < chunk < 64 and json.loads((tmp_path / "tight" / "meta.json").read_text())["backbone_chunk"] == chunk
    for bad in ("trainer.activation_memory_mb=0", "trainer.activation_memory_mb=nan", "trainer.backbone_chunk=some"):
        code, _, err = cli(*common, "--set", bad, "--out", str(tmp_path / "bad"))
        assert code == 2 and err.strip().count("\n") == 0 and bad.split("=")[0].split(".")[1] in err, (bad, err)
        assert not (tmp_path / "bad").exists()
