"""Internal: what the command line programs share (flags, user-error exits, JAX start-up, XLA flags).

Only commands (`python -m animesion_jax.X`, tools/) import this folder; no library module does.
"""
