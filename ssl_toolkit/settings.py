"""Where the toolkit keeps its files: ``$SSL_TOOLKIT_HOME`` (default ``~/.cache/ssl-toolkit``).

Under it: ``checkpoints/`` (the library), ``cache/features/`` (extracted features) and
``cache/index/`` (image-folder indexes). Nothing else in the package reads the variable.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SSL_TOOLKIT_HOME"


def toolkit_home() -> Path:
    """``$SSL_TOOLKIT_HOME`` (default ``~/.cache/ssl-toolkit``)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "ssl-toolkit").expanduser()


def cache_dir(kind: str) -> Path:
    """``<home>/cache/<kind>`` (not created)."""
    return toolkit_home() / "cache" / kind
