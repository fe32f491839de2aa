"""Long tail: a small ViT on the DAF:re-shaped synthetic benchmark (synthetic_characters/longtail).

  python -m animesion_jax.main --config=configs/longtail.py --workdir=runs/lt_softmax
  python -m animesion_jax.main --config=configs/longtail.py --workdir=runs/lt_balanced \
      --config.loss=balanced_softmax
Builds `synthetic_characters/longtail` first if it is missing (no download needed): 300 characters,
training images per class on a power law from 200 down to 4, 10/20 validation/test images each.
docs/longtail.md has the methods (losses, classifier re-training, tau-normalisation) and results.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()  # The quick start's small ViT at 32 px, SGD, warm-up + cosine.
  # The long-tailed builder config of the synthetic characters.
  config.dataset_config = "longtail"
  # Epochs over the 6,198 training images (5.2 CPU-minutes a run; docs/longtail.md).
  config.num_epochs = 8
  # Validation and test accuracy at half-time and at the end.
  config.eval_every_epochs = 4
  # Latest checkpoint every 200 steps.
  config.checkpoint_every_steps = 200
  # Shot groups for this benchmark's counts (4..200): 37 many, 109 medium, 154 few-shot classes.
  config.many_shot_above = 40
  # Few-shot: fewer than 10 training images.
  config.few_shot_below = 10
  return config
