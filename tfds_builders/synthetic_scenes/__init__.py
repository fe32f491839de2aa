"""Synthetic scenes: characters pasted on illustrated backgrounds, with head boxes and names."""

from .synthetic_scenes_dataset_builder import Builder

# Descriptive alias for code that prefers not to import a class named Builder.
SyntheticScenes = Builder

__all__ = ["Builder", "SyntheticScenes"]
