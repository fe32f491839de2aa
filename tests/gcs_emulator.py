"""gcp-storage-emulator plus the two parts of Cloud Storage's JSON API that tensorstore relies on.

The emulator (PyPI `gcp-storage-emulator`) ignores request preconditions (`ifGenerationMatch`,
`ifGenerationNotMatch`) and sends no `x-goog-generation` header with a download. Real Cloud Storage
does both, and tensorstore (Orbax's storage layer) uses them for every update of an OCDBT manifest;
without them each checkpoint write fails with "Malformed StorageGeneration". This module adds
exactly those, as Cloud Storage documents them, and serves like
`gcp-storage-emulator start --in-memory`:

  python -m tests.gcs_emulator PORT BUCKET
"""

from http import HTTPStatus
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket: str, name: str) -> int:
  """The object's generation; 0 when it does not exist (Cloud Storage's convention)."""
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0


def _query(request, key: str) -> int | None:
  values = request.query.get(key)
  return int(values[0]) if values else None


def _precondition_failed(response, generation: int) -> None:
  response.status = HTTPStatus.PRECONDITION_FAILED
  response.json(
    {"error": {"code": 412, "message": f"Precondition failed (generation {generation})"}}
  )


def _download(request, response, storage, *args, **kwargs):
  bucket, name = request.params["bucket_name"], request.params["object_id"]
  generation = _generation(storage, bucket, name)
  if generation:
    match, not_match = _query(request, "ifGenerationMatch"), _query(request, "ifGenerationNotMatch")
    if match is not None and match != generation:
      return _precondition_failed(response, generation)
    if not_match is not None and not_match == generation:
      response.status = HTTPStatus.NOT_MODIFIED
      return None
    response["x-goog-generation"] = str(generation)
    response["x-goog-metageneration"] = storage.get_file_obj(bucket, name)["metageneration"]
  return _ORIGINAL["download"](request, response, storage, *args, **kwargs)


def _insert(request, response, storage, *args, **kwargs):
  match = _query(request, "ifGenerationMatch")
  if match is not None and request.query.get("name"):  # Media uploads (tensorstore's kind).
    generation = _generation(storage, request.params["bucket_name"], request.query["name"][0])
    if match != generation:
      return _precondition_failed(response, generation)
  return _ORIGINAL["insert"](request, response, storage, *args, **kwargs)


def _delete(request, response, storage, *args, **kwargs):
  match = _query(request, "ifGenerationMatch")
  if match is not None:
    generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
    if match != generation:
      return _precondition_failed(response, generation)
  return _ORIGINAL["delete"](request, response, storage, *args, **kwargs)


_ORIGINAL = {"download": objects.download, "insert": objects.insert, "delete": objects.delete}
_REPLACEMENT = {objects.download: _download, objects.insert: _insert, objects.delete: _delete}


def _install() -> None:
  """Routes the server's download, upload and delete requests through the functions above."""
  for _, handlers in server.HANDLERS:
    for method, handler in handlers.items():
      handlers[method] = _REPLACEMENT.get(handler, handler)
  # objects.get (alt=media) and the router's upload path call these by module attribute.
  objects.download, objects.insert, objects.delete = _download, _insert, _delete


def main(port: int, bucket: str) -> None:
  _install()
  server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket).run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
