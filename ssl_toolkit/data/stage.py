"""The worker-stage contract: what a pretext task asks of the data workers.

When images stream from files, DataLoader workers decode each photo once and hand the
device fixed-size ``uint8`` tensors. A task says what those are with a
:class:`WorkerStage` (:meth:`ssl_toolkit.pretext.base.PretextTask.worker_stage`): how many
crops per image and how each is cut from the original photo, the smallest image side it
can use, and whether it needs colour. The data layer fills it the same way for every task;
everything after the crop (jitter, rotations, tiles, Lab, masks) stays on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Crop:
    """How one view is cut from the original photo.

    Attributes:
        kind: ``center``: the largest centred square (what in-memory sources hold);
            ``random_resized``: a random-resized crop anywhere in the photo (Szegedy et al., 2015).
        scale: Range of the crop's area as a share of the photo (``random_resized``).
        ratio: Range of the crop's aspect ratio, width / height (``random_resized``).
    """

    kind: Literal["center", "random_resized"] = "center"
    scale: tuple[float, float] = (1.0, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class WorkerStage:
    """What the workers hand over per image.

    Attributes:
        crops: One :class:`Crop` per view. One view gives ``(B, C, S, S)`` batches; ``V > 1``
            views give ``(B, V, C, S, S)``, already cropped (the task then skips its own crop).
        min_size: Smallest square side the task can use (``None`` = any).
        colour: The task needs colour images.
    """

    crops: tuple[Crop, ...] = field(default_factory=lambda: (Crop(),))
    min_size: int | None = None
    colour: bool = False

    @property
    def views(self) -> int:
        return len(self.crops)


CENTER = WorkerStage()
