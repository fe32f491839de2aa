"""The paper's ShallowNet baseline (5 layers, LeNet-like; Tables 3 and 4).

  python -m animesion_jax.main --config=configs/shallow.py:moeimouto --workdir=runs/sn_moe
"""

from configs import base


def get_config(dataset: str = "moeimouto"):
  config = base.get_base_config(dataset)
  config.model.name = "shallow"  # The 5-layer ShallowNet.
  config.model.dropout_rate = 0.5  # Dropout before the last fully connected layer.
  config.normalization = "imagenet"  # Same input normalisation as the CNN baselines of the original code.
  return config
