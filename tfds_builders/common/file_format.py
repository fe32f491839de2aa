"""ArrayRecord as the default file format of this project's builders."""

import tensorflow_datasets as tfds

# ArrayRecord gives random access (tfds.data_source / grain); TFDS itself defaults to TFRecord.
DEFAULT_FILE_FORMAT = "array_record"


def default_to_array_record(builder: tfds.core.DatasetBuilder, file_format: str | None) -> None:
  """Makes fresh builds without an explicit format write ArrayRecord.

  A prepared dataset keeps the format recorded in its dataset_info.json.
  """
  if file_format is None and not builder.info.initialized:
    builder.info.set_file_format(DEFAULT_FILE_FORMAT, override=True)
