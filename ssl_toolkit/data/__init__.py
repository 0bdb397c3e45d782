"""Data sources and batched augmentation."""

from ssl_toolkit.data.sources import SOURCES, DataSource, Split, load_source

__all__ = ["SOURCES", "DataSource", "Split", "load_source"]
