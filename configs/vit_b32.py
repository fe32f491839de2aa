"""ViT-B/32 with the paper's settings of Tables 1 (DAF:re) and 2 (moeImouto).

Tables 3 and 4 (image 224, batch 1024, 200 epochs) are rows of configs/paper.py.

  python -m animesion_jax.main --config=configs/vit_b32.py:dafre --workdir=runs/b32_dafre
The argument after ':' picks the dataset (default moeimouto).
"""

from animesion_jax import config_schema


def get_config(dataset: str = "moeimouto"):
  return config_schema.vit_config("vit_b32", dataset)
