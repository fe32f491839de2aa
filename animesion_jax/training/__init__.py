"""Internal: the training loop's library (set-up, steps, optimiser, losses, metrics, checkpoints,
preemption, summaries, config validation).

It imports no inference, open-set or command line code: `python -m animesion_jax.main` runs the
loop (`loop.train_and_evaluate`) and then, as a separate step, the end-of-training calibration.
"""
