"""Compositing triplets TFDS builder: foreground photo, mask, background, target composite."""

from data_builders.compositing_triplets.compositing_triplets_dataset_builder import Builder

__all__ = ["Builder"]
