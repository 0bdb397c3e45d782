"""Settings of ``ssl inspect`` / :func:`ssl_toolkit.inspection.inspect_data`."""

from __future__ import annotations

from pydantic import Field

from ssl_toolkit.config import DataConfig, StrictModel


class InspectConfig(StrictModel):
    """What to inspect and how strict the checks are.

    Attributes:
        data: The data source (``data.image_size`` sets the size the normalisation is measured at).
        near_hamming: Largest Hamming distance between two 64-bit difference hashes for a near-duplicate candidate.
        near_tolerance: Largest mean absolute difference of the two 16x16 grayscale thumbnails (0-1 scale)
            for a candidate to count as a near duplicate.
        embed_threshold: Smallest cosine similarity of two backbone embeddings for ``--embed`` neighbours.
        max_imbalance: Warn when a split's largest class is more than this many times its smallest.
        thumbnails_per_class: Thumbnails per class in the HTML page.
        max_groups_shown: Duplicate groups of each kind drawn in the HTML page (all are in the JSON).
        workers: Threads that read files (``None``: twice the CPU count, at most 8).
        batch_size: Images per batch for embeddings.
    """

    data: DataConfig = Field(default_factory=DataConfig)
    near_hamming: int = Field(default=4, ge=0, le=64)
    near_tolerance: float = Field(default=0.01, ge=0.0, le=1.0)
    embed_threshold: float = Field(default=0.95, ge=-1.0, le=1.0)
    max_imbalance: float = Field(default=10.0, ge=1.0)
    thumbnails_per_class: int = Field(default=12, ge=0, le=200)
    max_groups_shown: int = Field(default=40, ge=0)
    workers: int | None = Field(default=None, ge=1, le=64)
    batch_size: int = Field(default=256, ge=1)
