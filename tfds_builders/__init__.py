"""TFDS dataset builders for animesion_jax (one package per dataset)."""
