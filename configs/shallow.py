"""The paper's ShallowNet baseline (5 layers, LeNet-like) with the paper's settings (Tables 3 and 4).

The paper trained it only at image 224, batch 1024, for 200 epochs with the learning rate x1/3
every 50 (on DAF:re and moeImouto alike); those are the defaults here.

  python -m animesion_jax.main --config=configs/shallow.py:moeimouto --workdir=runs/sn_moe
"""

from animesion_jax import config_schema


def get_config(dataset: str = "moeimouto"):
  config = config_schema.get_base_config(dataset)
  # The 5-layer ShallowNet.
  config.model.name = "shallow"
  # Tables 3 and 4: 224 x 224 inputs.
  config.image_size = 224
  # Tables 3 and 4: batch 1024.
  config.batch_size = 1024
  # Tables 3 and 4: 200 epochs.
  config.num_epochs = 200
  # Learning rate x1/3 every 50 epochs (the paper's 200-epoch runs).
  config.decay_every_epochs = 50
  # Output channels of the two conv stages (the original).
  config.model.channels = (16, 32)
  # Width of the hidden fully connected layer (the original).
  config.model.hidden = 512
  # Dropout before the last fully connected layer (the original).
  config.model.dropout_rate = 0.2
  # Mean/std 0.5, as the original (only its ResNets used ImageNet's).
  config.normalization = "half"
  return config
