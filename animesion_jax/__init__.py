"""animesion_jax: anime character recognition in JAX/Flax (a reimplementation of Animesion)."""
