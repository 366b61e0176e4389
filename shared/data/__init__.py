"""Dataset readers: FashionIQ layout, folder-per-category trees, CSV manifests."""

from shared.data.readers import (
    FASHIONIQ_CATEGORIES,
    DatasetScan,
    Sample,
    read_dataset,
    read_fashioniq,
    read_folder,
    read_manifest,
)

__all__ = [
    "FASHIONIQ_CATEGORIES",
    "DatasetScan",
    "Sample",
    "read_dataset",
    "read_fashioniq",
    "read_folder",
    "read_manifest",
]
