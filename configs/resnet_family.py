"""Shared ResNet fields; resnet18.py and resnet152.py pick the depth."""

import ml_collections

from configs import base


def get_resnet_config(model_name: str, dataset: str) -> ml_collections.ConfigDict:
  """Paper recipe for a torchvision-layout ResNet on `dataset`."""
  config = base.get_base_config(dataset)
  config.model.name = model_name  # ResNet depth (block type and stage sizes come from the name).
  config.model.base_width = 64  # Channels of the stem and first stage (torchvision: 64).
  config.model.init_scheme = "animesion"  # From scratch: xavier-uniform convs, as the original code.
  config.normalization = "imagenet"  # The original code normalised ResNet inputs with ImageNet mean/std.
  return config
