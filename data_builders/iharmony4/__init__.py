"""iHarmony4 TFDS builder (manual download)."""

from data_builders.iharmony4.iharmony4_dataset_builder import Builder

__all__ = ["Builder"]
