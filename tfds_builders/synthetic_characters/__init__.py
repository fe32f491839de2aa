"""Synthetic anime-style characters: a download-free TFDS dataset."""

from .synthetic_characters_dataset_builder import Builder

# Descriptive alias for code that prefers not to import a class named Builder.
SyntheticCharacters = Builder

__all__ = ["Builder", "SyntheticCharacters"]
