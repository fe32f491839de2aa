"""DAF:re (Danbooru Animation Faces, revamped) as a TFDS dataset."""

from .dafre_dataset_builder import Builder

__all__ = ["Builder"]
