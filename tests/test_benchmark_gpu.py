"""``benchmarks/gpu.py --dry-run``: every row of the GPU table is measured on the CPU with tiny sizes."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

EXPECTED_ROWS = [
    ("simclr", "ours", "JPEG folder"),
    ("simclr", "ours", "tensors"),
    ("simclr", "lightly", "JPEG folder"),
    ("simclr", "lightly", "tensors"),
    ("rotation", "ours", "JPEG folder"),
    ("rotation", "ours", "tensors"),
    ("features", "ours", "JPEG folder"),
    ("features", "ours", "tensors"),
]


@pytest.mark.slow
def test_gpu_benchmark_dry_run_prints_every_row(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--dry-run"], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| workload")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    assert [tuple(c[:3]) for c in cells] == EXPECTED_ROWS
    for c in cells:
        rate, mfu = float(c[3]), float(c[4])
        assert rate > 0 and math.isfinite(rate), c
        assert 0 < mfu < 2, c  # against a measured CPU GEMM rate; > 1 would mean a FLOP-count or timing error
        assert c[5] == "-", c  # no GPU memory on the CPU
    assert "simclr, JPEG folder: ours / lightly = " in done.stdout
    assert not list(tmp_path.glob("ssl-gpu-bench-*")), "the temporary folder is removed"
