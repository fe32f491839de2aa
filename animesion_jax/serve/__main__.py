r"""A web page that names the characters in pictures, and its JSON API.

  pip install -e '.[demo]'
  python -m animesion_jax.serve --workdir=runs/quickstart [--port=8000] [--host=127.0.0.1]
  python -m animesion_jax.serve --checkpoint=b16_dafre.pth --source=pytorch_vit \
      --class_names=classid_classname.csv

Prints the URL once the model is loaded and compiled. The page takes pictures by drag and drop,
paste or file picker; `curl -F image=@picture.png http://127.0.0.1:8000/api/predict` answers
JSON. --port=0 picks a free port.
"""

import socket

from absl import app as absl_app
from absl import flags
from absl import logging
import uvicorn

from animesion_jax.cli import common
from animesion_jax.serve import app
from animesion_jax.serve import model
from animesion_jax.serve import pictures


def define_flags() -> None:
  """The command line flags (defined only when run as a program)."""
  common.define_model_flags("With --source: classid_classname.csv or a JSON list of names.")
  common.define_runtime_flags(distributed=False)
  flags.adopt_module_key_flags(common)  # --help lists them with this program's own.
  flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "Port to listen on (0: any free port).")
  common.define_face_flags(None, "; none found: whole pictures are classified")
  flags.DEFINE_integer("max_batch", 32, "Most crops per device call.")
  flags.DEFINE_float("max_wait_ms", 5.0, "Longest a request waits to share a device call.")
  flags.DEFINE_integer("queue_size", 64, "Pictures that may wait; more are answered 503.")
  flags.DEFINE_float("max_upload_mb", 16.0, "Largest upload.")
  flags.DEFINE_float("max_megapixels", 40.0, "Largest picture decoded.")
  flags.DEFINE_integer("max_faces", 16, "Most faces classified per picture.")
  flags.DEFINE_bool(
    "allow_enroll",
    False,
    "Let visitors add characters (POST /api/enroll and the page's 'add this character' form); "
    "they are stored in the model's gallery.",
  )


def _listen(host: str, port: int) -> socket.socket:
  """A listening socket: connections made before the server starts wait in its backlog."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as error:
    sock.close()
    raise absl_app.UsageError(
      f"Cannot listen on {host}:{port} ({error.strerror}): pick "
      "another --port (0 picks a free one) or --host."
    ) from None
  sock.listen(128)
  return sock


def main(argv):
  if len(argv) > 1:
    raise absl_app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  flag = flags.FLAGS
  if not 0 <= flag.port <= 65535:
    raise absl_app.UsageError(f"--port={flag.port} must be between 0 and 65535.")
  if flag.max_batch < flag.max_faces:
    raise absl_app.UsageError(
      f"--max_batch={flag.max_batch} must be at least --max_faces={flag.max_faces}."
    )
  common.check_model_flags(flag)
  if flag.allow_enroll and flag.source is not None and not flag.gallery:
    raise absl_app.UsageError(
      "--allow_enroll with --source needs --gallery=DIR (where added characters are kept)."
    )
  if not flag["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  sock = _listen(flag.host, flag.port)  # Before loading: a taken port fails at once.
  common.start_jax(flag)
  try:
    if flag.detector:  # A head detector run: every head found is answered.
      detector, face_note = common.face_detector(flag), ""
    else:
      detector, face_note = model.face_detector(flag.cascade, flag.face_margin, flag.min_face)
    run = common.load_from_flags(flag)  # With its calibration and gallery.
  except common.USER_ERRORS as error:  # The message says what is wrong; no usage dump.
    sock.close()
    common.exit_with_user_error("serve", error)
  limits = pictures.Limits(
    max_upload_bytes=int(flag.max_upload_mb * 2**20),
    max_pixels=int(flag.max_megapixels * 1e6),
    max_faces=flag.max_faces,
  )
  service = model.build_service(
    run,
    detector=detector,
    face_note=face_note,
    limits=limits,
    max_batch=flag.max_batch,
    max_wait_s=flag.max_wait_ms / 1000,
    queue_size=flag.queue_size,
    allow_enroll=flag.allow_enroll,
  )
  if face_note:
    print(face_note)
  if run.answerer.note:
    print(f"Note: {run.answerer.note}.")
  host, port = sock.getsockname()[:2]
  shown = f"[{host}]" if ":" in host else host
  print(f"Serving {service.model} at http://{shown}:{port}/ (Ctrl+C stops)", flush=True)
  server = uvicorn.Server(
    uvicorn.Config(app.create_app(service), log_level="warning", timeout_graceful_shutdown=5)
  )
  try:
    server.run(sockets=[sock])  # Returns after Ctrl+C or SIGTERM, then re-raises the signal.
  except KeyboardInterrupt:
    pass
  finally:
    service.batcher.close()
  print("Stopped.")


if __name__ == "__main__":
  define_flags()
  absl_app.run(main)
