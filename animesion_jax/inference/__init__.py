"""Internal: what answering pictures needs around the model (reading images, face crops, the
long-tail report, plots, annotated pictures, attention maps). Use `animesion_jax.Recognizer`.
"""
