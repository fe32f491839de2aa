"""ResNet-152 with the paper's settings of Tables 1 (DAF:re) and 2 (moeImouto).

  python -m animesion_jax.main --config=configs/resnet152.py:dafre --workdir=runs/r152_dafre
Pretrained row: add --config.init_from.source=torchvision_resnet --config.init_from.path=FILE
--config.freeze_backbone=True (the paper trains only the classifier of pretrained ResNets).
"""

from animesion_jax import config_schema


def get_config(dataset: str = "moeimouto"):
  return config_schema.resnet_config("resnet152", dataset)
