"""ViT-B/16 with the paper's settings of Tables 1 (DAF:re) and 2 (moeImouto).

  python -m animesion_jax.main --config=configs/vit_b16.py:dafre --workdir=runs/b16_dafre
The argument after ':' picks the dataset (default moeimouto).
"""

from animesion_jax import config_schema


def get_config(dataset: str = "moeimouto"):
  return config_schema.vit_config("vit_b16", dataset)
