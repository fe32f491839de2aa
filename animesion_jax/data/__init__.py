"""Input pipeline: TFDS records -> grain -> uint8 batches; normalisation on the device."""
