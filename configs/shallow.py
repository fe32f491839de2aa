"""The paper's ShallowNet baseline (5 layers, LeNet-like; Tables 3 and 4).

  python -m animesion_jax.main --config=configs/shallow.py:moeimouto --workdir=runs/sn_moe
"""

from configs import base


def get_config(dataset: str = "moeimouto"):
  config = base.get_base_config(dataset)
  config.model.name = "shallow"  # The 5-layer ShallowNet.
  config.model.channels = (16, 32)  # Output channels of the two conv stages (the original).
  config.model.hidden = 512  # Width of the hidden fully connected layer (the original).
  config.model.dropout_rate = 0.2  # Dropout before the last fully connected layer (the original).
  config.normalization = "half"  # Mean/std 0.5, as the original (only its ResNets used ImageNet's).
  return config
