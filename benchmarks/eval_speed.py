"""Evaluation speed: the cached linear probe and FAISS kNN against the common ways of doing them.

Two measurements, side by side in one run, on this machine:

1. Linear probe. The toolkit extracts frozen features once (cached on disk), standardises
   them and fits an L2-regularised logistic regression full batch with L-BFGS, choosing
   the weight decay on a held-out 10% of train. The common loop (lightly's
   ``LinearClassifier`` benchmark, moco-v3 ``main_lincls.py``) runs every epoch through
   the frozen backbone and trains the head with SGD; here it gets the same features
   (a ``BatchNorm1d(affine=False)`` in front of the head standardises them, as in MAE's
   linear probe) and the weight decay the sweep chose, so both solve the same convex
   problem (its SGD learning rate, 1.0, is the one that reaches the L-BFGS accuracy in
   30 epochs; lightly's 0.1 needs about 90). Data: digits at 16 px, split in half, and a
   random-init ``test_resnet``. Reported: time of each, ratio, test top-1 of each.
2. kNN. FAISS exact inner-product search on L2-normalised vectors against scikit-learn's
   ``KNeighborsClassifier(algorithm="brute")`` with the same temperature-weighted vote
   (``weights = exp(cos / T)``, cosine recovered from the Euclidean distance of unit
   vectors), 60,000 x 10,000 vectors of 512 dims. Reported: time of each, ratio,
   number of differing predictions. Both use every CPU core.

Usage:
    python benchmarks/eval_speed.py [--epochs 30] [--lr 1.0] [--backbone test_resnet]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.arguments import int_range, positive_float, positive_int, toolkit_backbone  # noqa: E402


def linear_benchmark(backbone_name: str, epochs: int, lr: float, image_size: int) -> dict:
    from ssl_toolkit.backbones import create_backbone
    from ssl_toolkit.config import BackboneConfig, DataConfig
    from ssl_toolkit.data.sources import load_source
    from ssl_toolkit.eval.features import FeatureCache, Preprocess, model_fingerprint
    from ssl_toolkit.evaluators.linear import linear_probe

    data = DataConfig(name="digits", image_size=image_size, test_fraction=0.5)  # 899 train / 898 test
    source = load_source(data)
    n_train, n_test = len(source.train), len(source.test)
    torch.manual_seed(0)
    model, _ = create_backbone(BackboneConfig(name=backbone_name), source.channels, source.image_size)
    model.eval()
    pre = Preprocess(source.channels, source.mean, source.std)
    ytr, yte = source.train.labels, source.test.labels
    c = source.num_classes

    # ---- toolkit: extract once (cold), then from the on-disk cache (warm) ------------
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:  # the feature cache, removed afterwards
        cache = FeatureCache(root=Path(tmp) / "features")
        t0 = time.perf_counter()
        fp = model_fingerprint(model)
        xtr, xte = cache.get(model, source, "train", pre, fp), cache.get(model, source, "test", pre, fp)
        t_extract = time.perf_counter() - t0
        t0 = time.perf_counter()
        fresh = FeatureCache(root=cache.root)
        fp = model_fingerprint(model)
        xtr, xte = fresh.get(model, source, "train", pre, fp), fresh.get(model, source, "test", pre, fp)
        if fresh.forward_passes:
            raise RuntimeError("the second read of the features ran the backbone: the on-disk cache was not used")
        logits, facts = linear_probe(xtr, ytr, xte, c, seed=0)
        t_warm = time.perf_counter() - t0
    t_cold = t_extract + t_warm
    acc_cached = (logits.argmax(1) == yte).float().mean().item()

    # ---- common loop: every epoch through the frozen backbone, SGD on the head ---------
    torch.manual_seed(0)
    wd = facts["weight_decay"]
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(int(model.num_features), affine=False), torch.nn.Linear(int(model.num_features), c))
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = (n_train + 255) // 256
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    t0 = time.perf_counter()
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(n_train).split(256):
            with torch.no_grad():
                feats = model(pre(source.train.images[idx]))
            loss = F.cross_entropy(head(feats), ytr[idx]) + 0.5 * wd * head[1].weight.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        pred = torch.cat([head(model(pre(x))).argmax(1) for x in source.test.images.split(512)])
    t_loop = time.perf_counter() - t0
    acc_loop = (pred == yte).float().mean().item()
    return {
        "t_extract": t_extract,
        "t_warm": t_warm,
        "t_cold": t_cold,
        "t_loop": t_loop,
        "acc_cached": acc_cached,
        "acc_loop": acc_loop,
        "wd": wd,
        "dim": int(model.num_features),
        "n_train": n_train,
        "n_test": n_test,
    }


def knn_benchmark(n_train: int, n_test: int, dim: int, k: int, temperature: float, classes: int = 10) -> dict:
    import faiss
    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    from ssl_toolkit.evaluators.knn import knn_scores

    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    ytr, yte = rng.integers(0, classes, n_train), rng.integers(0, classes, n_test)
    xtr = (centres[ytr] + 2.0 * rng.normal(size=(n_train, dim))).astype(np.float32)
    xte = (centres[yte] + 2.0 * rng.normal(size=(n_test, dim))).astype(np.float32)

    t0 = time.perf_counter()
    pred_faiss = (
        knn_scores(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), k=k, T=temperature, num_classes=classes)
        .argmax(1)
        .numpy()
    )
    t_faiss = time.perf_counter() - t0

    unit_tr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    unit_te = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    times, differ = {}, {}
    for metric, data_tr, data_te, weight in (
        # Euclidean distance of unit vectors: cos = 1 - d^2 / 2 (the fastest scikit-learn path)
        ("euclidean", unit_tr, unit_te, lambda d: np.exp((1.0 - d**2 / 2.0) / temperature)),
        # cosine distance: cos = 1 - d (the metric the protocol names)
        ("cosine", xtr, xte, lambda d: np.exp((1.0 - d) / temperature)),
    ):
        t0 = time.perf_counter()
        with threadpool_limits(threads):
            clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric=metric, weights=weight, n_jobs=threads)
            pred_sk = clf.fit(data_tr, ytr).predict(data_te)
        times[metric] = time.perf_counter() - t0
        differ[metric] = int((pred_faiss != pred_sk).sum())
    return {
        "t_faiss": t_faiss,
        "t_sklearn": times,
        "differ": differ,
        "acc": float((pred_faiss == yte).mean()),
        "n_train": n_train,
        "n_test": n_test,
        "dim": dim,
        "k": k,
        "threads": threads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", type=toolkit_backbone, default="test_resnet", help="a timm model")
    ap.add_argument("--epochs", type=positive_int, default=30, help="epochs of the common linear-probe loop")
    ap.add_argument("--lr", type=positive_float, default=1.0, help="SGD learning rate of the common loop (on standardised features)")
    ap.add_argument("--image-size", type=int_range(8, 1024), default=16, help="image side in pixels (8-1024)")
    ap.add_argument("--knn-train", type=positive_int, default=60000, help="training vectors of the kNN part")
    ap.add_argument("--knn-test", type=positive_int, default=10000, help="test vectors of the kNN part")
    ap.add_argument("--knn-dim", type=positive_int, default=512, help="dimensions of the kNN vectors")
    ap.add_argument("--k", type=positive_int, default=200, help="neighbours of the kNN vote (at most --knn-train)")
    ap.add_argument("--temperature", type=positive_float, default=0.1, help="temperature of the kNN vote")
    args = ap.parse_args()
    if args.k > args.knn_train:
        ap.error(f"--k ({args.k}) must be at most --knn-train ({args.knn_train})")

    print(f"torch {torch.__version__}, {os.cpu_count()} CPU threads, torch uses {torch.get_num_threads()}")
    lin = linear_benchmark(args.backbone, args.epochs, args.lr, args.image_size)
    print(
        f"\nlinear probe: {args.backbone} (random init, {lin['dim']}-d features), digits {lin['n_train']} train / {lin['n_test']} test at {args.image_size} px"
    )
    print(f"  feature extraction (once, then cached)          {lin['t_extract']:8.2f} s")
    print(
        f"  cached features + L-BFGS sweep (5 wd + refit)   {lin['t_warm']:8.2f} s   top-1 {100 * lin['acc_cached']:.2f}%  (wd {lin['wd']:g})"
    )
    print(f"  epoch loop through frozen backbone, SGD {args.epochs} ep  {lin['t_loop']:8.2f} s   top-1 {100 * lin['acc_loop']:.2f}%")
    print(f"  speed-up, features cached:    {lin['t_loop'] / lin['t_warm']:6.1f}x")
    print(f"  speed-up, including extraction: {lin['t_loop'] / lin['t_cold']:6.1f}x")
    print(f"  top-1 difference: {100 * abs(lin['acc_cached'] - lin['acc_loop']):.2f} points")

    kn = knn_benchmark(args.knn_train, args.knn_test, args.knn_dim, args.k, args.temperature)
    print(
        f"\nkNN: {kn['n_train']} x {kn['n_test']} vectors of {kn['dim']} dims, k={kn['k']}, T={args.temperature}, {kn['threads']} threads"
    )
    print(f"  FAISS IndexFlatIP + weighted vote               {kn['t_faiss']:8.2f} s")
    for metric, t in kn["t_sklearn"].items():
        print(
            f"  scikit-learn KNeighborsClassifier brute {metric:<9} {t:8.2f} s   {t / kn['t_faiss']:5.1f}x slower; "
            f"predictions differing: {kn['differ'][metric]} of {kn['n_test']}"
        )
    print(f"  top-1 of the vote: {100 * kn['acc']:.2f}%")


if __name__ == "__main__":
    main()
