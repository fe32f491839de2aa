"""Internal: the input pipeline: TFDS records -> grain -> uint8 batches; normalisation on the device."""
