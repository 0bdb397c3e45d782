"""Jigsaw puzzles (context-free network).

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016. Each image is cut into a grid of tiles with a random gap between
them (so matching edges give no shortcut), each tile is normalised on its own (so
matching brightness or colour gives none either), and the tiles are shuffled by one of
``N`` permutations chosen to be far apart in Hamming distance. Every tile goes through
the shared backbone; the tile features, concatenated in the shuffled order, feed an MLP
that names the permutation.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ssl_toolkit.pretext.base import DataFacts, PretextTask, TaskConfig, TaskInfo, building_inputs, register_task
from ssl_toolkit.pretext.patches import MIN_PATCH, crop_patches

CANDIDATE_POOL = 100_000  # candidates drawn (seeded) when the grid has too many permutations to list (3x3, 4x4)


class JigsawConfig(TaskConfig):
    """Attributes:
    grid: Tiles per side (2 to 4; the paper uses 3).
    num_permutations: Size of the permutation set (the paper's best is 100 to 1000; unset on a
        2x2 grid: all 24).
    gap: Share of each grid cell's side left out around its tile (the paper: 64 px tiles in 75 px cells).
    permutation_seed: Seed of the greedy permutation-set construction.
    tile_dim: Width of the per-tile projection of backbone features (the paper's fc6).
    hidden_dim: Hidden width of the permutation classifier (the paper's fc7).
    """

    grid: int = Field(default=3, ge=2, le=4)
    num_permutations: int = Field(default=100, ge=2, le=1000)
    gap: float = Field(default=0.15, ge=0.0, lt=0.5)
    permutation_seed: int = Field(default=0, ge=0, le=2**32 - 1)
    tile_dim: int = Field(default=256, ge=1)
    hidden_dim: int = Field(default=1024, ge=1)

    @model_validator(mode="after")
    def _enough_permutations(self) -> JigsawConfig:
        available = math.factorial(self.grid**2)
        if self.num_permutations > available:
            if "num_permutations" in self.model_fields_set:
                raise ValueError(f"num_permutations: a {self.grid}x{self.grid} grid has only {available} permutations")
            self.num_permutations = available  # the default set on a 2x2 grid: all 24
        return self


def tile_geometry(image_size: int, grid: int, gap: float) -> tuple[int, int]:
    """``(cell, tile)`` sides in pixels: the image's grid cells and the tile cut from each."""
    cell = image_size // grid
    return cell, int(cell * (1 - gap))


def min_image_size(grid: int, gap: float) -> int:
    """Smallest image side whose tiles are at least ``MIN_PATCH`` px."""
    size = grid * MIN_PATCH
    while tile_geometry(size, grid, gap)[1] < MIN_PATCH:
        size += 1
    return size


def hamming_permutation_set(num_tiles: int, n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Greedy maximal-minimum-Hamming-distance permutation set.

    Starts from a random permutation (seeded) and repeatedly adds the candidate whose
    minimum Hamming distance to the chosen set is largest (ties: largest total distance,
    then lowest index), as in Noroozi & Favaro's Algorithm 1 with the minimum in place of
    the sum. Candidates are all ``num_tiles!`` permutations (a seeded sample of
    ``CANDIDATE_POOL`` when that is too many).

    Returns:
        ``(n, num_tiles)`` long permutations and the distance at which each was picked
        (``picked[k]`` is the minimum distance of permutation ``k`` to the ones before it;
        the list is non-increasing after the first entry, and its last entry is the set's
        minimum pairwise Hamming distance).
    """
    perms, picked = _hamming_set(num_tiles, n, seed)
    return torch.from_numpy(perms.copy()), list(picked)


@lru_cache(maxsize=8)
def _hamming_set(num_tiles: int, n: int, seed: int) -> tuple[np.ndarray, tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    if math.factorial(num_tiles) <= 2 * CANDIDATE_POOL:
        cand = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)  # (M, T)
    else:
        cand = np.argsort(rng.random((CANDIDATE_POOL, num_tiles)), axis=1).astype(np.int8)
        cand = np.unique(cand, axis=0)
    m = len(cand)
    first = int(rng.integers(m))
    chosen = [first]
    picked = [num_tiles]
    min_d = (cand != cand[first]).sum(axis=1).astype(np.int64)  # (M,) distance to the chosen set
    sum_d = min_d.copy()
    min_d[first] = -1
    for _ in range(n - 1):
        score = min_d * (num_tiles * n + 1) + sum_d  # lexicographic: min distance, then total
        j = int(np.argmax(score))
        picked.append(int(min_d[j]))
        chosen.append(j)
        d = (cand != cand[j]).sum(axis=1)
        np.minimum(min_d, d, out=min_d, where=min_d >= 0)
        sum_d += d
        min_d[j] = -1
    return cand[chosen].astype(np.int64), tuple(picked)


def cut_tiles(images: torch.Tensor, grid: int, tile: int, offsets: torch.Tensor) -> torch.Tensor:
    """Cut one tile from every grid cell.

    Args:
        images: ``(B, C, S, S)`` images.
        grid: Cells per side; cells are ``S // grid`` px.
        tile: Tile side in pixels.
        offsets: ``(B, T, 2)`` long (row, column) offset of each tile inside its cell, ``T = grid**2``, row-major.

    Returns:
        ``(B, T, C, tile, tile)`` tiles in row-major grid order.
    """
    cell = images.shape[-1] // grid
    g = torch.arange(grid, device=images.device)
    cell_top = (g.view(grid, 1) * cell).expand(grid, grid).reshape(-1)  # (T,)
    cell_left = (g.view(1, grid) * cell).expand(grid, grid).reshape(-1)
    return crop_patches(images, cell_top + offsets[..., 0], cell_left + offsets[..., 1], tile)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Place tile ``perms[b, i]`` at position ``i``: ``(B, T, ...)`` tiles, ``(B, T)`` permutations -> ``(B, T, ...)``."""
    idx = perms.view(*perms.shape, *([1] * (tiles.ndim - 2))).expand_as(tiles)
    return tiles.gather(1, idx)


def unshuffle_tiles(shuffled: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Undo :func:`shuffle_tiles` with the inverse permutations."""
    return shuffle_tiles(shuffled, perms.argsort(dim=1))


def assemble_tiles(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, T, C, t, t)`` tiles in row-major order -> ``(B, C, grid * t, grid * t)`` image."""
    b, _, c, t, _ = tiles.shape
    x = tiles.view(b, grid, grid, c, t, t).permute(0, 3, 1, 4, 2, 5)  # (B, C, gy, t, gx, t)
    return x.reshape(b, c, grid * t, grid * t)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """Zero mean, unit std per tile and channel: ``(B, T, C, t, t)`` -> same shape."""
    mean = tiles.mean(dim=(-1, -2), keepdim=True)
    std = tiles.std(dim=(-1, -2), keepdim=True)
    return (tiles - mean) / (std + eps)


@register_task("jigsaw")
class JigsawTask(PretextTask):
    """Solve jigsaw puzzles of shuffled tiles (Noroozi & Favaro, ECCV 2016)."""

    Config = JigsawConfig
    info = TaskInfo(
        description="name the permutation that shuffled a grid of image tiles",
        paper="Noroozi & Favaro, Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles, ECCV 2016",
        min_image_size=min_image_size(3, 0.15),
    )
    default_lr = 1e-3
    geometry_fallbacks = {"gap": (0.1, 0.05, 0.0)}  # narrower gaps on small images (Fashion-MNIST's 28 px)
    config: JigsawConfig
    perms: torch.Tensor  # (N, T) buffer

    @classmethod
    def size_requirement(cls, config: TaskConfig) -> tuple[int, str, str]:
        assert isinstance(config, JigsawConfig)  # always this task's validated Config
        return min_image_size(config.grid, config.gap), f"jigsaw with a {config.grid}x{config.grid} grid", f" ({MIN_PATCH} px tiles)"

    def __init__(self, feature_dim: int, config: JigsawConfig, data: DataFacts) -> None:
        super().__init__(feature_dim, config, data)
        t = config.grid**2
        self.num_tiles = t
        self.cell, self.tile = tile_geometry(data.image_size, config.grid, config.gap)
        perms, picked = hamming_permutation_set(t, config.num_permutations, config.permutation_seed)
        self.register_buffer("perms", perms)  # (N, T), saved in checkpoints
        self.min_hamming = picked[-1]
        self.tile_head = nn.Sequential(nn.Linear(feature_dim, config.tile_dim), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(t * config.tile_dim, config.hidden_dim),
            nn.BatchNorm1d(config.hidden_dim),
            nn.ReLU(),
            nn.Linear(config.hidden_dim, config.num_permutations),
        )

    def make_puzzles(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S)`` images in [0, 1] -> ``(B, T, C, t, t)`` shuffled, normalised tiles and ``(B,)`` labels."""
        b, t, dev = images.shape[0], self.num_tiles, images.device
        room = self.cell - self.tile + 1
        offsets = torch.randint(0, room, (b, t, 2), device=dev)  # (B, T, 2) random jitter inside each cell
        tiles = normalize_tiles(cut_tiles(images, self.config.grid, self.tile, offsets))  # (B, T, C, t, t)
        labels = torch.randint(0, self.perms.shape[0], (b,), device=dev)  # (B,)
        return shuffle_tiles(tiles, self.perms[labels]), labels

    def backbone_input_size(self) -> int:
        """A tile, not the image, goes through the backbone."""
        return self.tile

    def forward(self, backbone, images):
        b, t = images.shape[0], self.num_tiles
        with building_inputs():
            tiles, labels = self.make_puzzles(images)  # (B, T, C, t, t), (B,)
        feats = backbone(tiles.flatten(0, 1))  # (B*T, D)
        z = self.tile_head(feats).view(b, t * self.config.tile_dim)  # (B, T*tile_dim), shuffled order
        logits = self.head(z)  # (B, N)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"pretext_acc": acc}

    def extra_state(self) -> dict[str, Any]:
        return {
            "permutations": self.perms.tolist(),
            "permutation_seed": self.config.permutation_seed,
            "min_hamming_distance": self.min_hamming,
            "tile_px": self.tile,
        }
