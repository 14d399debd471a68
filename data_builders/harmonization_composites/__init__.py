"""Synthetic harmonization composites TFDS builder (sample, COCO, or your folder)."""

from data_builders.harmonization_composites.harmonization_composites_dataset_builder import Builder

__all__ = ["Builder"]
