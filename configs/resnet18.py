"""ResNet-18 with the paper's settings of Tables 1 (DAF:re) and 2 (moeImouto).

Tables 3 and 4 (image 224, batch 1024, 200 epochs) are rows of configs/paper.py.

  python -m animesion_jax.main --config=configs/resnet18.py:dafre --workdir=runs/r18_dafre
Pretrained row: add --config.init_from.source=torchvision_resnet --config.init_from.path=FILE
--config.freeze_backbone=True (the paper trains only the classifier of pretrained ResNets).
"""

from animesion_jax import config_schema


def get_config(dataset: str = "moeimouto"):
  return config_schema.resnet_config("resnet18", dataset)
