"""Internal: the head detector's library: letterboxing, target encoding, the loss, decoding, the
scenes' input pipeline and COCO metrics. The model is models/centernet.py; the train command trains
it (config.task='detect') through training/loop.py. Nothing here imports training/, inference/ or
open_set/.
"""
