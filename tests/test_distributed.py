"""Scale-out on CPU: a real 2-process DDP run, SimCLR's gathered loss equal to one process, sharded data."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from ssl_toolkit.data.loaders import EpochShuffleSampler
from ssl_toolkit.pretext.base import DataFacts, build_task


def simclr_loss(name: str = "ntxent"):
    """The loss of our SimCLR task (NT-Xent, DCL or DCLW, gathered across processes), temperature 0.3."""
    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    return build_task("simclr", 16, {"temperature": 0.3, "loss": name}, facts).loss_fn


@pytest.mark.slow
# trainer.backbone_chunk: each parameter's gradient reaches DDP once; local_crops: the
# backbone runs twice per step (full-size and small views); both at once in one run
@pytest.mark.parametrize(("chunk", "local_crops"), [(None, 0), (16, 2)])
def test_two_process_ddp_pretraining_through_the_cli(tmp_path, run_ssl, chunk, local_crops):
    run = tmp_path / "ddp"
    done = run_ssl(
        "pretrain",
        *(["--set", f"trainer.backbone_chunk={chunk}"] if chunk else []),
        *(["--set", f"task_config.local_crops={local_crops}"] if local_crops else []),
        "--task",
        "simclr",
        "--data",
        "synthetic",
        "--backbone",
        "test_resnet",
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--set",
        "data.synthetic_train=128",
        "--set",
        "data.synthetic_test=64",
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--out",
        run,
        "-q",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((run / "meta.json").read_text())
    assert meta["world_size"] == 2
    # 128 images sharded over 2 processes with 32 per process: 2 steps per epoch, not 4
    assert meta["steps"] == 4 and meta["epochs"] == 2
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [
        "backbone.safetensors",
        "config.yaml",
        "last.ckpt",
        "meta.json",
        "metrics.csv",
    ]


LOSSES = ("ntxent", "dcl", "dclw")  # dclw: its weights' softmax spans both processes too


def _gathered_loss_worker(rank: int, world: int, init_file: str, z0: torch.Tensor, z1: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    n = z0.shape[0] // world
    results = {}
    for name in LOSSES:  # one pair of processes for all the losses: starting them is what takes time
        a = z0[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = simclr_loss(name)(a, b)
        loss.backward()
        results |= {f"{name}.loss": loss.detach(), f"{name}.ga": a.grad, f"{name}.gb": b.grad}
    torch.save(results, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_simclr_gathered_loss_equals_single_process_loss_and_gradients(tmp_path):
    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 16), torch.randn(8, 16)
    init_file = tempfile.mktemp(dir=tmp_path)
    out = str(tmp_path / "res")
    mp.start_processes(_gathered_loss_worker, args=(2, init_file, z0, z1, out), nprocs=2, start_method="spawn")
    res = [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]
    for name in LOSSES:
        ref_a, ref_b = z0.clone().requires_grad_(True), z1.clone().requires_grad_(True)
        ref = simclr_loss(name)(ref_a, ref_b)  # one process: nothing to gather
        ref.backward()
        # DDP averages the per-process losses and gradients
        assert abs(float((res[0][f"{name}.loss"] + res[1][f"{name}.loss"]) / 2) - float(ref)) < 1e-5, name
        grad_a = torch.cat([r[f"{name}.ga"] for r in res]) / 2
        grad_b = torch.cat([r[f"{name}.gb"] for r in res]) / 2
        assert torch.allclose(grad_a, ref_a.grad, atol=1e-6) and torch.allclose(grad_b, ref_b.grad, atol=1e-6), name


@pytest.mark.parametrize("n", [12, 13])
def test_epoch_sampler_shards_without_duplicates_and_reshuffles_by_epoch(n):
    base = EpochShuffleSampler(n, seed=3)
    shards = []
    for rank in range(2):
        s = DistributedSamplerWrapper(base, num_replicas=2, rank=rank, shuffle=False)
        s.set_epoch(1)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    if n % 2 == 0:
        assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    base.set_epoch(0)
    e0 = list(base)
    base.set_epoch(1)
    assert list(base) != e0 and sorted(list(base)) == list(range(n))
    base.set_epoch(0)
    assert list(base) == e0  # the order depends on (seed, epoch) only: a resumed run sees the same


def test_views_are_seeded_per_rank():
    from ssl_toolkit.pretext import DataFacts, build_task

    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.2,) * 3)
    x = torch.rand(4, 3, 16, 16)
    views = []
    for rank in (0, 1, 0):
        task = build_task("simclr", 8, {}, facts)
        task.seed_views(1000 + rank, torch.device("cpu"))
        views.append(task.two_views(x))
    assert torch.equal(views[0], views[2]) and not torch.equal(views[0], views[1])
    assert os.environ.get("WORLD_SIZE") is None


def test_a_resume_gives_each_rank_its_own_views_again():
    """last.ckpt holds rank 0's random state: the other ranks must not all continue rank 0's streams."""
    from types import SimpleNamespace

    from ssl_toolkit.callbacks import RngState
    from ssl_toolkit.pretext import DataFacts, build_task

    facts = DataFacts(channels=3, image_size=16, mean=(0.5,) * 3, std=(0.2,) * 3)
    x = torch.rand(4, 3, 16, 16)
    saver = build_task("simclr", 8, {}, facts)
    saver.seed_views(1000, torch.device("cpu"))
    saver.two_views(x)  # rank 0 drew some views before the save
    checkpoint: dict = {}
    torch.manual_seed(7)
    RngState().on_save_checkpoint(None, SimpleNamespace(task=saver), checkpoint)
    expected = saver.two_views(x)  # what rank 0 draws next

    def resumed(rank: int) -> torch.Tensor:
        task = build_task("simclr", 8, {}, facts)
        task.seed_views(1000 + rank, torch.device("cpu"))  # as every fit starts, then the checkpoint's state
        callback = RngState()
        callback.on_load_checkpoint(None, None, checkpoint)
        callback.on_train_start(SimpleNamespace(global_rank=rank), SimpleNamespace(task=task))
        return task.two_views(x)

    assert torch.equal(resumed(0), expected)  # rank 0 goes on with its own streams
    assert not torch.equal(resumed(1), expected) and not torch.equal(resumed(1), resumed(2))  # the others: one each
    assert torch.equal(resumed(1), resumed(1))  # and the same on every resume


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_a_strategy_that_spawns_its_processes_and_nodes_without_a_launcher_are_refused(strategy, monkeypatch):
    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.trainer import check_lightning_options

    with pytest.raises(UserError, match="a strategy that spawns its processes is not supported .*; use strategy=ddp$"):
        check_lightning_options(TrainerConfig(accelerator="cpu", devices=2, strategy=strategy))
    for k in ("MASTER_ADDR", "SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "GROUP_RANK"):
        monkeypatch.delenv(k, raising=False)
    nodes = TrainerConfig(accelerator="cpu", devices=2, strategy="ddp", num_nodes=2)
    with pytest.raises(UserError, match="2 nodes need every node started by torchrun or SLURM"):
        check_lightning_options(nodes)  # it used to wait 30 minutes for nodes that never come
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    check_lightning_options(nodes)


SLURM_STEP = {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "train", "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_srun_tasks_other_than_the_first_are_not_primary_and_a_task_count_unlike_the_run_is_refused(monkeypatch):
    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.ranks import is_primary_process
    from ssl_toolkit.trainer import check_lightning_options

    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "TORCHELASTIC_RUN_ID", "MASTER_ADDR"):
        monkeypatch.delenv(k, raising=False)
    for k, v in {**SLURM_STEP, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(k, v)
    assert not is_primary_process()  # srun's second task (it sets no RANK)
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # an interactive allocation: not a job step of tasks
    assert is_primary_process()
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun inside the job numbers the processes itself
    assert is_primary_process()
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    for k, v in {"SLURM_PROCID": "0", "SLURM_LOCALID": "0"}.items():
        monkeypatch.setenv(k, v)
    assert is_primary_process()
    check_lightning_options(TrainerConfig(accelerator="cpu", devices=2, strategy="ddp"))  # two tasks, two processes
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(
        UserError, match=r"SLURM started 2 tasks \(SLURM_NTASKS\) and the run takes 1 process \(devices x num_nodes\): match them "
    ):
        check_lightning_options(TrainerConfig(accelerator="cpu", devices=1, strategy="ddp"))  # Lightning would wait for ever for a rank 1


def test_an_unknown_or_absent_accelerator_is_one_line_naming_what_the_command_takes(cli, tmp_path):
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.trainer import check_accelerator, check_lightning_options

    with pytest.raises(
        UserError, match=r"^accelerator=gpuu is not one Lightning knows \(auto, cpu, cuda, gpu, .*\) \(did you mean 'gpu'\?\)$"
    ):
        check_accelerator("gpuu")
    for name in ("auto", "cpu"):
        check_accelerator(name)
    if not (CUDAAccelerator.is_available() or MPSAccelerator.is_available()):  # what Lightning said: "No supported gpu backend found!"
        with pytest.raises(UserError, match=r"^accelerator=gpu: this machine has no GPU \(CUDA or Apple MPS\); use cpu or auto$"):
            check_lightning_options(TrainerConfig(accelerator="gpu"))
    if not CUDAAccelerator.is_available():
        code, _, err = cli("probe", "--random-init", "-b", "test_resnet", "--data", "digits", "--mode", "knn", "--accelerator", "cuda")
        assert (code, err) == (2, "error: accelerator=cuda: this machine has no CUDA device torch can use; use cpu or auto\n")
    with pytest.raises(UserError, match=r"^trainer options \(accelerator=cpu, precision=bf17\): "):  # a probe has no devices or strategy
        check_lightning_options(TrainerConfig.model_construct(accelerator="cpu", precision="bf17"), ("accelerator", "precision"))


def test_sync_batchnorm_reaches_lightnings_ddp_and_is_refused_on_a_cpu(tmp_path):
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.trainer import build_trainer, check_lightning_options

    cfg = TrainerConfig(accelerator="cpu", devices=2, strategy="ddp", sync_batchnorm=True)
    with pytest.raises(UserError, match=r"sync_batchnorm needs GPUs \(torch's SyncBatchNorm does not run on a CPU\)$"):
        check_lightning_options(cfg)
    check_lightning_options(cfg.model_copy(update={"sync_batchnorm": False}))
    trainer = build_trainer(cfg, tmp_path, validate=False)  # building starts no process
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)  # Lightning converts the model at setup
    plain = build_trainer(cfg.model_copy(update={"sync_batchnorm": False}), tmp_path, validate=False)
    assert plain.strategy._layer_sync is None


def test_more_cpu_processes_than_cores_say_so_in_one_line_and_far_more_are_refused(capsys, monkeypatch):
    from ssl_toolkit.config import TrainerConfig
    from ssl_toolkit.errors import UserError
    from ssl_toolkit.trainer import check_lightning_options

    cores = len(os.sched_getaffinity(0))
    check_lightning_options(TrainerConfig(accelerator="cpu", devices=cores, strategy="ddp"))
    assert capsys.readouterr().err == ""
    check_lightning_options(TrainerConfig(accelerator="cpu", devices=cores + 2, strategy="ddp"))
    assert capsys.readouterr().err == (
        f"trainer: {cores + 2} CPU processes on {cores} cores share them (on CPU, devices counts processes, each a full copy of the model)\n"
    )
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process the launcher started runs the check too, and says nothing
    check_lightning_options(TrainerConfig(accelerator="cpu", devices=cores + 2, strategy="ddp"))
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("LOCAL_RANK")
    check_lightning_options(TrainerConfig(accelerator="cpu", devices=4 * cores, strategy="ddp"))
    with pytest.raises(UserError, match=f"{4 * cores + 1} CPU processes on {cores} cores; at most {4 * cores} \\(4 per core\\)"):
        check_lightning_options(TrainerConfig(accelerator="cpu", devices=4 * cores + 1, strategy="ddp"))


# Runs `ssl` with two hooks: the first process sends signal $SIG to the whole process group (as
# a terminal's Ctrl-C or a scheduler's SIGTERM does) at the start of step $CUT, and every process
# appends the images of each step it completes (epoch, then one checksum per image) to $REC.<rank>.
def run_as_terminal_job(args: list[str], cwd, env: dict[str, str], timeout: int):
    """Run ``args`` in its own process group, as a terminal's foreground job, with Python's own Ctrl-C
    (even under a background runner, which starts its jobs with SIGINT ignored)."""
    import signal
    import subprocess

    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


SIGNAL_SCRIPT = """
import os, zlib
from ssl_toolkit import engine
from ssl_toolkit.cli import run

rec, cut, sig = os.environ["REC"], int(os.environ.get("CUT", "-1")), int(os.environ.get("SIG", "2"))
alone = os.environ.get("ALONE") == "1"  # the signal goes to the started process only
step, end = engine.PretrainModule.training_step, engine.PretrainModule.on_train_batch_end

def training_step(self, batch, batch_idx):
    if self.trainer.global_rank == int(alone) and self.global_step == cut:
        os.kill(os.getpid(), sig) if alone else os.killpg(os.getpgid(0), sig)
    return step(self, batch, batch_idx)

def on_train_batch_end(self, outputs, batch, batch_idx):
    sums = [str(zlib.crc32(x.numpy().tobytes())) for x in batch[0]]
    with open(f"{rec}.{self.trainer.global_rank}", "a") as f:
        f.write(" ".join([str(self.current_epoch), *sums]) + "\\n")
    return end(self, outputs, batch, batch_idx)

engine.PretrainModule.training_step, engine.PretrainModule.on_train_batch_end = training_step, on_train_batch_end
run()
"""


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "what"), [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_signal_to_a_two_process_run_mid_epoch_saves_and_resumes_each_image_once_per_epoch(tmp_path, signum, code, what):
    """Ctrl-C or SIGTERM to every process stops each wherever it finds it, maybe a collective
    apart: the save must not wait on one (a hang before: Lightning's SIGTERM handler broadcasts)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ssl_with_hooks.py"
    script.write_text(SIGNAL_SCRIPT)
    run, rec = tmp_path / "ddp", tmp_path / "rec"
    args = ["pretrain", "--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16"]
    args += ["--batch-size", "16", "--set", "data.synthetic_train=256", "--set", "data.synthetic_test=64", "--accelerator", "cpu"]
    args += ["--devices", "2", "--strategy", "ddp", "-q", "--epochs", "2", "--out", str(run)]
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "SSL_TOOLKIT_HOME": str(tmp_path / "home"),
        "REC": f"{rec}.cut",
        "CUT": "11",
        "SIG": str(signum),
    }
    proc = run_as_terminal_job([sys.executable, str(script), *args], tmp_path, env, 300)
    assert proc.returncode == code, proc.stderr  # not 137: the launching process was not killed for its worker's exit
    assert proc.stderr.strip().splitlines()[-1] == f"{what} at step 11; checkpoint saved, continue with: ssl pretrain --resume {run}"
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 11  # 8 steps an epoch: 3 into the second
    if signum == signal.SIGTERM:
        return  # saved as on Ctrl-C (the same path from here): one resume, below, is checked
    done = subprocess.run(
        [sys.executable, str(script), "pretrain", "--resume", str(run), "-q"],
        cwd=tmp_path,
        env={**env, "REC": f"{rec}.resumed", "CUT": "-1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "meta.json").read_text())["steps"] == 16
    epochs: dict[str, list[str]] = {"0": [], "1": []}
    for rank in (0, 1):
        cut = Path(f"{rec}.cut.{rank}").read_text().splitlines()
        resumed = Path(f"{rec}.resumed.{rank}").read_text().splitlines()
        assert len(cut) == 11 and len(resumed) == 5, (rank, len(cut), len(resumed))  # neither finished step 11 before the stop
        for line in cut + resumed:
            epoch, *sums = line.split()
            epochs[epoch] += sums
    # 256 images over 2 processes, 8 steps of 16 each: every image once in each epoch, the
    # interrupted one included (its first 3 steps before the stop, the other 5 after it)
    assert len(set(epochs["0"])) == len(epochs["0"]) == 256 and sorted(epochs["1"]) == sorted(epochs["0"])


@pytest.mark.slow
def test_a_sigterm_to_the_started_process_alone_stops_the_whole_run_as_one_to_every_process(tmp_path):
    """The started process passes SIGTERM to the launching one, which saves and says so
    (before: the launching process failed in its next collective with gloo's traceback, exit 1)."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ssl_with_hooks.py"
    script.write_text(SIGNAL_SCRIPT)
    run = tmp_path / "ddp"
    args = ["pretrain", "--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16"]
    args += ["--batch-size", "16", "--set", "data.synthetic_train=256", "--set", "data.synthetic_test=64", "--accelerator", "cpu"]
    args += ["--devices", "2", "--strategy", "ddp", "-q", "--epochs", "2", "--out", str(run)]
    env = {**os.environ, "PYTHONPATH": str(repo), "SSL_TOOLKIT_HOME": str(tmp_path / "home"), "REC": str(tmp_path / "rec")}
    proc = run_as_terminal_job([sys.executable, str(script), *args], tmp_path, {**env, "CUT": "11", "SIG": "15", "ALONE": "1"}, 300)
    assert proc.returncode == 143, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    step = torch.load(run / "last.ckpt", weights_only=True)["global_step"]
    assert step in (11, 12) and last == f"terminated at step {step}; checkpoint saved, continue with: ssl pretrain --resume {run}"


def test_a_collective_that_lost_its_peer_is_told_apart_from_other_failures():
    from ssl_toolkit.errors import lost_peer

    gloo = "[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:41902. This is typically caused by"
    assert lost_peer(RuntimeError(gloo)) == "connection closed by peer"
    assert lost_peer(RuntimeError("[pair.cc:534] Read error [127.0.0.1]:1: Connection reset by peer")) == "connection reset by peer"
    assert lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert lost_peer(OSError("Connection reset by peer")) is None  # not a collective's error


STARTING_SCRIPT = """
import os, signal, sys, time
if os.environ.get("LOCAL_RANK") == "1":  # the started process, before it reaches DDP's rendezvous
    time.sleep(float(os.environ["WAIT"]))
    os.killpg(os.getpgid(0), int(os.environ["SIG"]))
    time.sleep(60)
from ssl_toolkit.cli import run
run()
"""


@pytest.mark.slow
def test_a_ctrl_c_to_a_two_process_run_before_training_exits_130_and_saves_nothing(tmp_path):
    """The launching process waits in DDP's rendezvous, where Python's handler cannot run; Lightning's
    watch of the started processes killed it with SIGKILL (exit 137) when they stopped."""
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ssl_stopped_early.py"
    script.write_text(STARTING_SCRIPT)
    args = "pretrain --task rotation --data synthetic --backbone test_resnet --image-size 16 -q --set data.synthetic_train=64".split()
    args += ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp")]
    env = {**os.environ, "PYTHONPATH": str(repo), "SSL_TOOLKIT_HOME": str(tmp_path / "home"), "SIG": "2", "WAIT": "1"}
    proc = run_as_terminal_job([sys.executable, str(script), *args], tmp_path, env, 120)
    assert proc.returncode == 130, proc.stderr  # not 137
    assert proc.stderr.strip().splitlines()[-1] in ("aborted", "interrupted"), proc.stderr
    assert not (tmp_path / "ddp" / "last.ckpt").exists() and not list((tmp_path / "home").rglob("*.safetensors"))


SAME_WEIGHTS_SCRIPT = """
import os, zlib
import torch
from ssl_toolkit import engine
from ssl_toolkit.cli import run

rec, end = os.environ["REC"], engine.PretrainModule.on_train_batch_end

def on_train_batch_end(self, outputs, batch, batch_idx):
    weights = torch.cat([p.detach().flatten() for p in self.backbone.parameters()])
    lr = self.trainer.optimizers[0].param_groups[0]["lr"]
    with open(f"{rec}.{self.trainer.global_rank}", "a") as f:
        f.write(f"{self.global_step} {lr!r} {zlib.crc32(weights.numpy().tobytes())}\\n")
    return end(self, outputs, batch, batch_idx)

engine.PretrainModule.on_train_batch_end = on_train_batch_end
run()
"""


@pytest.mark.slow
def test_two_processes_under_a_time_budget_step_with_one_learning_rate_and_keep_one_set_of_weights(tmp_path):
    """``max_minutes`` sets the cosine from the time spent: each process's own clock gave each its own learning rate.

    The batch (100) is less than the 128 images but more than each process's share (64): it is cut
    to that share, one step per epoch (it was kept whole, its last partial batch dropped: no step at all).
    """
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "ssl_with_hooks.py"
    script.write_text(SAME_WEIGHTS_SCRIPT)
    args = ["pretrain", "--task", "rotation", "--data", "synthetic", "--backbone", "test_resnet", "--image-size", "16"]
    args += ["--batch-size", "100", "--set", "data.synthetic_train=128", "--set", "data.synthetic_test=32", "--accelerator", "cpu"]
    args += ["--devices", "2", "--strategy", "ddp", "-q", "--epochs", "1000", "--set", "trainer.max_minutes=0.1"]
    args += ["--out", str(tmp_path / "ddp")]  # 1000 steps planned: the 6 s budget sets the cosine and ends the run
    env = {**os.environ, "PYTHONPATH": str(repo), "SSL_TOOLKIT_HOME": str(tmp_path / "home"), "REC": str(tmp_path / "rec")}
    proc = run_as_terminal_job([sys.executable, str(script), *args], tmp_path, env, 300)
    assert proc.returncode == 0, proc.stderr
    ranks = [(tmp_path / f"rec.{r}").read_text().splitlines() for r in (0, 1)]
    assert len(ranks[0]) >= 3 and ranks[0] == ranks[1]  # step, learning rate and weights' checksum, alike on both
    assert len({line.split()[1] for line in ranks[0]}) == len(ranks[0])  # the learning rate moved every step
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["steps"] == len(ranks[0]) and meta["epochs"] in (meta["steps"], meta["steps"] - 1)  # one step an epoch
