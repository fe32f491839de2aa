"""Structural checks of encoded PNG and JPEG files, mostly without decoding.

A build must not die at the last of 463,437 files because one is truncated,
and must not spend a full decode on each of them either. The checks here read
the header (format, size, colour mode) and confirm that the file ends where
the format says it should; that catches empty, truncated and non-image files.
`inspect_image(..., decode=True)` adds a full pixel decode with Pillow for
small datasets where that is cheap.
"""

from __future__ import annotations

import dataclasses
import io
import struct

from etils import epath
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"

# PNG (colour type, bit depth) -> the mode Pillow reports when opening it; the
# paper kept exactly the images whose Pillow mode is 'RGB'.
_PNG_GREY_MODES = {1: "1", 2: "L", 4: "L", 8: "L", 16: "I;16"}
_PNG_COLOUR_MODES = {2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...).
# C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_COMPONENT_MODES = {1: "L", 3: "RGB", 4: "CMYK"}
# Markers with no length field: TEM, RST0-7, SOI, EOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])

# Reasons a file is rejected; they are the keys the build reports count.
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated_image"
CORRUPT = "corrupt_image"


class BadImageError(ValueError):
  """The bytes are not a usable PNG or JPEG image.

  Attributes:
    reason: one of EMPTY, NOT_AN_IMAGE, TRUNCATED, CORRUPT.
    detail: what exactly is wrong, for people.
  """

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class ImageHeader:
  """What the header of an encoded image says.

  Attributes:
    format: 'png' or 'jpeg'.
    width: width in pixels.
    height: height in pixels.
    mode: the colour mode Pillow would report ('RGB', 'L', 'RGBA', 'P', ...).
  """

  format: str
  width: int
  height: int
  mode: str


def inspect_image(data: bytes, *, decode: bool = False) -> ImageHeader:
  """Checks that `data` is a complete PNG or JPEG file and reads its header.

  Args:
    data: the encoded file contents.
    decode: also decode every pixel with Pillow (catches damage inside the
      compressed data, at the cost of a full decode).

  Returns:
    The image's format, size and colour mode.

  Raises:
    BadImageError: the file is empty, not a PNG/JPEG, truncated or corrupt.
  """
  if not data:
    raise BadImageError(EMPTY, "the file has 0 bytes")
  if data.startswith(PNG_SIGNATURE):
    header = _inspect_png(data)
  elif data.startswith(JPEG_SOI):
    header = _inspect_jpeg(data)
  else:
    raise BadImageError(NOT_AN_IMAGE, f"starts with {data[:8]!r}, neither PNG nor JPEG")
  if decode:
    _decode_fully(data)
  return header


def _inspect_png(data: bytes) -> ImageHeader:
  # Signature, then the IHDR chunk: length, b'IHDR', width, height, depth, type.
  if len(data) < 33:
    raise BadImageError(TRUNCATED, f"PNG of only {len(data)} bytes")
  length, chunk_type = struct.unpack(">I4s", data[8:16])
  if chunk_type != b"IHDR" or length != 13:
    raise BadImageError(CORRUPT, "PNG does not start with an IHDR chunk")
  width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
  if colour_type == 0:
    mode = _PNG_GREY_MODES.get(depth)
  else:
    mode = _PNG_COLOUR_MODES.get(colour_type)
  if mode is None or width == 0 or height == 0:
    raise BadImageError(
      CORRUPT, f"PNG header has size {width}x{height}, bit depth {depth}, colour type {colour_type}"
    )
  # A complete PNG ends with the chunk: length 0, b'IEND', 4-byte CRC.
  iend = data.rfind(b"IEND")
  if iend < 33 or data[iend - 4 : iend] != b"\0\0\0\0" or iend + 8 > len(data):
    raise BadImageError(TRUNCATED, "PNG has no IEND chunk at its end")
  return ImageHeader("png", width, height, mode)


def _inspect_jpeg(data: bytes) -> ImageHeader:
  pos = 2
  size = None
  while True:
    if pos >= len(data):
      raise BadImageError(TRUNCATED, "JPEG ends before its image data")
    if data[pos] != 0xFF:
      raise BadImageError(CORRUPT, f"JPEG marker expected at byte {pos}")
    # Markers may be preceded by any number of 0xFF fill bytes.
    while pos < len(data) and data[pos] == 0xFF:
      pos += 1
    if pos >= len(data):
      raise BadImageError(TRUNCATED, "JPEG ends before its image data")
    marker = data[pos]
    pos += 1
    if marker in _JPEG_STANDALONE:
      continue
    if pos + 2 > len(data):
      raise BadImageError(TRUNCATED, "JPEG ends inside a segment header")
    (length,) = struct.unpack(">H", data[pos : pos + 2])
    if length < 2 or pos + length > len(data):
      raise BadImageError(TRUNCATED, "JPEG ends inside a segment")
    if marker in _JPEG_SOF_MARKERS:
      if length < 8:
        raise BadImageError(CORRUPT, "JPEG frame header too short")
      height, width, components = struct.unpack(">HHB", data[pos + 3 : pos + 8])
      size = (width, height, components)
    elif marker == 0xDA:  # Start of scan: entropy-coded data follows.
      break
    pos += length
  if size is None:
    raise BadImageError(CORRUPT, "JPEG has no frame header before its scan")
  width, height, components = size
  mode = _JPEG_COMPONENT_MODES.get(components)
  if mode is None or width == 0 or height == 0:
    raise BadImageError(CORRUPT, f"JPEG frame is {width}x{height} with {components} components")
  # Byte stuffing keeps FF D9 out of the entropy-coded data, so an EOI after
  # the first scan marks the end of a complete file (an EOI before it may be
  # an embedded EXIF thumbnail's). Bytes after the EOI are tolerated.
  if data.rfind(_JPEG_EOI) < pos:
    raise BadImageError(TRUNCATED, "JPEG has no end-of-image marker")
  return ImageHeader("jpeg", width, height, mode)


def _decode_fully(data: bytes) -> None:
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
  except Exception as e:  # pylint: disable=broad-except
    # Pillow raises OSError, SyntaxError, ValueError, zlib.error... depending
    # on where the data is damaged; all of them mean the same thing here.
    raise BadImageError(CORRUPT, f"Pillow cannot decode it ({e})") from e


def to_rgb_png(data: bytes) -> bytes:
  """Re-encodes an image of any Pillow mode as an 8-bit RGB PNG."""
  with Image.open(io.BytesIO(data)) as image:
    rgb = image.convert("RGB")
  buffer = io.BytesIO()
  rgb.save(buffer, format="PNG")
  return buffer.getvalue()


# Reasons a listed file cannot be used before its contents are even looked at.
MISSING_FILE = "missing_file"
UNREADABLE_FILE = "unreadable_file"


@dataclasses.dataclass(frozen=True)
class CheckedFile:
  """A file read from disk and checked.

  Attributes:
    data: the file's bytes, None if it could not be read.
    header: the image header, None if the file is not a usable image.
    problem: None if usable, else the reason (MISSING_FILE, TRUNCATED, ...).
    detail: a human-readable explanation of the problem.
  """

  data: bytes | None
  header: ImageHeader | None
  problem: str | None = None
  detail: str = ""


def read_and_check(path: epath.Path, *, decode: bool = False) -> CheckedFile:
  """Reads `path` and checks it with `inspect_image`; never raises on bad files.

  Args:
    path: the file to read.
    decode: passed to `inspect_image`.
  """
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    return CheckedFile(None, None, MISSING_FILE, "no such file")
  except OSError as e:  # Permissions, a directory where a file should be...
    return CheckedFile(None, None, UNREADABLE_FILE, str(e))
  try:
    header = inspect_image(data, decode=decode)
  except BadImageError as e:
    return CheckedFile(data, None, e.reason, e.detail)
  return CheckedFile(data, header)
