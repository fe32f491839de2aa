"""moeImouto (nagadomi's anime face character dataset) as a TFDS dataset."""

from .moeimouto_dataset_builder import Builder

__all__ = ["Builder"]
