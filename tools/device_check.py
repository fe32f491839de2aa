r"""One accelerator check in a few minutes: quick start, train-step speed, device cache, eval speed.

  python tools/device_check.py --out=device_check.json            # the real sizes (an H200)
  python tools/device_check.py --scale=tiny --out=/tmp/check.json  # a CPU rehearsal, ~2 minutes

Run by tools/device_check.sh (which first installs the missing wheels). Every part runs in its own
subprocess with a time limit taken from one overall budget, so a slow or failing part is recorded
(with the end of its output) and the others still run. Writes one JSON and prints a table.

Parts (full scale; `--scale=tiny` shrinks every size so that a CPU gets through):
  quickstart     the README's quick start (configs/quickstart.py) on the accelerator: wall time,
                 test top-1 from results.json
  vit_b16_*      tools/benchmark.py, ViT-B/16 at 128 px, bfloat16, batch 256 and 1024: steps/s,
                 images/s and MFU against --peak_tflops (the H200's dense bf16 peak, 989)
  resnet18_*     tools/benchmark.py, ResNet-18 at 128 px, batch 512 and 1024, the batch resident
                 on the device (no input pipeline)
  device_cache   DAF:re's training set as the device cache holds it (463,437 x 128x128x3 uint8,
                 22.8 GB of random pixels): fill time and GB/s, then batches/s of the on-device
                 sampler (shuffle, crop, flip) at batch 1024
  eval           evaluation throughput of ViT-B/16 at 128 px bf16 (the jitted eval step of
                 animesion_jax.training.evaluation, batch 1024), and `animesion_jax.evaluate` on the
                 quick-start run (wall time)
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# (name, benchmark.py arguments) at full scale; tiny scale overrides the sizes.
BENCHMARKS = {
  "full": [
    (
      "vit_b16_bs256",
      [
        "--config=configs/vit_b16.py",
        "--config.image_size=128",
        "--config.dtype=bfloat16",
        "--config.batch_size=256",
      ],
    ),
    (
      "vit_b16_bs1024",
      [
        "--config=configs/vit_b16.py",
        "--config.image_size=128",
        "--config.dtype=bfloat16",
        "--config.batch_size=1024",
      ],
    ),
    (
      "resnet18_bs512",
      ["--config=configs/resnet18.py", "--config.image_size=128", "--config.batch_size=512"],
    ),
    (
      "resnet18_bs1024",
      ["--config=configs/resnet18.py", "--config.image_size=128", "--config.batch_size=1024"],
    ),
  ],
  "tiny": [  # The quick start's small ViT stands in for ViT-B/16.
    (
      "vit_b16_bs256",
      ["--config=configs/quickstart.py", "--config.dtype=bfloat16", "--config.batch_size=8"],
    ),
    (
      "resnet18_bs512",
      ["--config=configs/resnet18.py", "--config.image_size=32", "--config.batch_size=8"],
    ),
  ],
}
SIZES = {  # Device cache and eval sizes.
  "full": {
    "cache_examples": 463_437,
    "cache_size": 128,
    "cache_batch": 1024,
    "eval_config": "vit_b16",
    "eval_image": 128,
    "eval_batch": 1024,
    "bench_windows": 5,
    "bench_steps": 5,
  },
  "tiny": {
    "cache_examples": 2_000,
    "cache_size": 32,
    "cache_batch": 64,
    "eval_config": "quickstart",
    "eval_image": 32,
    "eval_batch": 8,
    "bench_windows": 1,
    "bench_steps": 1,
  },
}
QUICKSTART_TINY = [
  "--config.num_train_steps=8",
  "--config.eval_every_epochs=100",
  "--config.dataset_config=small",
  "--config.image_size=16",
  "--config.model.num_layers=1",
  "--config.batch_size=16",
]


def _run(command: list[str], timeout: float, env: dict[str, str]) -> tuple[bool, float, str]:
  """(succeeded, seconds, tail of the output) of one part."""
  start = time.perf_counter()
  try:
    result = subprocess.run(
      command, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(timeout, 1)
    )
    output, ok = result.stdout + result.stderr, result.returncode == 0
  except subprocess.TimeoutExpired as error:
    output = f"{error.stdout or ''}{error.stderr or ''}\nTIMED OUT after {timeout:.0f} s"
    output, ok = output if isinstance(output, str) else str(output), False
  return ok, time.perf_counter() - start, output[-3000:]


CACHE_SCRIPT = r'''
import json, sys, time
import jax, numpy as np
from animesion_jax import sharding
from animesion_jax.data import device_cache
examples, size, batch = (int(v) for v in sys.argv[1:4])
block = np.random.default_rng(0).integers(0, 256, (min(examples, 4096), size, size, 3), np.uint8)

def random_pixels(source, start, stop, size_, workers):
  """Stands in for decoding: `stop - start` images of random pixels (a tiled random block)."""
  count = stop - start
  images = np.empty((count, size_, size_, 3), np.uint8)
  for offset in range(0, count, len(block)):
    images[offset:offset + len(block)] = block[:count - offset]
  return images, (np.arange(start, stop) % 3263).astype(np.int32)

device_cache._decode_resized = random_pixels
mesh = sharding.create_mesh()
start = time.perf_counter()
cache = device_cache.DeviceCache(range(examples), mesh=mesh, global_batch_size=batch,
                                 image_size=size, resize_margin=0, horizontal_flip=True, seed=0)
jax.block_until_ready(cache.images)
fill_s = time.perf_counter() - start
first = cache.batch(0); jax.block_until_ready(first)
steps = 50
start = time.perf_counter()
for step in range(1, steps + 1):
  out = cache.batch(step)
jax.block_until_ready(out)
feed_s = time.perf_counter() - start
print("RESULT " + json.dumps({
    "examples": examples, "image_bytes": int(cache.images.nbytes), "fill_s": fill_s,
    "fill_gb_per_s": cache.images.nbytes / fill_s / 1e9, "batch": batch,
    "batches_per_s": steps / feed_s, "images_per_s": steps * batch / feed_s}))
'''

EVAL_SCRIPT = r"""
import json, sys, time
import jax, numpy as np
import importlib
from animesion_jax.training import evaluation, model_setup, sharding
image, batch = (int(v) for v in sys.argv[2:4])
config = importlib.import_module(f"configs.{sys.argv[1]}").get_config()
config.image_size, config.dtype = image, "bfloat16"
mesh = sharding.create_mesh()
setup = model_setup.create(config, 3263, mesh, steps_per_epoch=1000, total_steps=10**6)
eval_fn = evaluation.make_eval_fn(setup.model, config.normalization)
rng = np.random.default_rng(0)
data = sharding.to_global_batch({
    "image": rng.integers(0, 256, (batch, image, image, 3), np.uint8),
    "label": rng.integers(0, 3263, (batch,)).astype(np.int32),
    "mask": np.ones((batch,), np.float32)}, mesh)
jax.block_until_ready(eval_fn(setup.state, data))
steps = 20
start = time.perf_counter()
for _ in range(steps):
  out = eval_fn(setup.state, data)
jax.block_until_ready(out)
seconds = time.perf_counter() - start
print("RESULT " + json.dumps({"model": config.model.name, "batch": batch, "image_size": image,
                              "images_per_s": steps * batch / seconds}))
"""


def _result_line(output: str) -> dict:
  lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
  return json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--scale",
    choices=["full", "tiny"],
    default=os.environ.get("DEVICE_CHECK_SCALE", "full"),
    help="full: the real sizes; tiny: a CPU rehearsal.",
  )
  parser.add_argument("--out", default="device_check.json", help="The JSON to write.")
  parser.add_argument("--workdir", default="/tmp/device_check", help="Runs and data go here.")
  parser.add_argument("--budget_s", type=float, default=450, help="Time for all parts.")
  parser.add_argument(
    "--peak_tflops",
    type=float,
    default=989.0,
    help="Dense bf16 peak of one device, for MFU (H200/H100: 989).",
  )
  args = parser.parse_args()
  deadline = time.monotonic() + args.budget_s
  work = pathlib.Path(args.workdir).resolve()
  work.mkdir(parents=True, exist_ok=True)
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
    "PYTHONUNBUFFERED": "1",
  }
  sizes = SIZES[args.scale]
  report = {"scale": args.scale, "python": sys.version.split()[0], "parts": {}}
  probe = subprocess.run(
    [
      sys.executable,
      "-c",
      "import jax, json; d = jax.devices()[0]; print("
      "json.dumps({'jax': jax.__version__, 'platform': d.platform, "
      "'device_kind': d.device_kind, 'devices': jax.device_count()}))",
    ],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  )
  report["device"] = json.loads(probe.stdout.strip().splitlines()[-1])

  def part(name: str, command: list[str], share: float) -> tuple[bool, str]:
    left = deadline - time.monotonic()
    # At full size each part is capped at its share; a CPU rehearsal's compiles vary too much.
    limit = min(left, args.budget_s * share) if args.scale == "full" else left
    ok, seconds, output = _run(command, limit, env)
    record = {"ok": ok, "seconds": round(seconds, 1)}
    if not ok:
      record["output_tail"] = output
    report["parts"][name] = record
    print(f"[device_check] {name}: {'ok' if ok else 'FAILED'} in {seconds:.0f} s", flush=True)
    return ok, output

  quick_dir = work / "quickstart"
  quick = [
    sys.executable,
    "-m",
    "animesion_jax.main",
    "--config=configs/quickstart.py",
    f"--workdir={quick_dir}",
    f"--config.data_dir={work / 'tfds'}",
  ]
  ok, _ = part("quickstart", quick + (QUICKSTART_TINY if args.scale == "tiny" else []), 0.3)
  if ok:
    results = json.loads((quick_dir / "results.json").read_text())
    report["parts"]["quickstart"].update(test_top1=results["test"]["top1"], steps=results["steps"])

  for name, bench_args in BENCHMARKS[args.scale]:
    json_out = work / f"{name}.json"
    ok, _ = part(
      name,
      [
        sys.executable,
        "tools/benchmark.py",
        *bench_args,
        f"--windows={sizes['bench_windows']}",
        f"--steps_per_window={sizes['bench_steps']}",
        "--num_classes=3263",
        f"--json_out={json_out}",
      ],
      0.15,
    )
    if ok:
      jax_numbers = json.loads(json_out.read_text())["jax"]
      flops = jax_numbers.get("flops_per_step_xla") or jax_numbers.get("flops_per_step_analytic")
      report["parts"][name].update(
        steps_per_s=jax_numbers["steps_per_s"],
        images_per_s=jax_numbers["images_per_s"],
        compile_s=jax_numbers.get("compile_s"),
        mfu=(
          flops * jax_numbers["steps_per_s"] / (args.peak_tflops * 1e12 * jax_numbers["devices"])
        )
        if flops
        else None,
      )

  ok, output = part(
    "device_cache",
    [
      sys.executable,
      "-c",
      CACHE_SCRIPT,
      str(sizes["cache_examples"]),
      str(sizes["cache_size"]),
      str(sizes["cache_batch"]),
    ],
    0.25,
  )
  if ok:
    report["parts"]["device_cache"].update(_result_line(output))

  ok, output = part(
    "eval_vit_b16",
    [
      sys.executable,
      "-c",
      EVAL_SCRIPT,
      sizes["eval_config"],
      str(sizes["eval_image"]),
      str(sizes["eval_batch"]),
    ],
    0.1,
  )
  if ok:
    report["parts"]["eval_vit_b16"].update(_result_line(output))
  if (quick_dir / "results.json").exists():
    part(
      "evaluate_quickstart",
      [
        sys.executable,
        "-m",
        "animesion_jax.evaluate",
        f"--workdir={quick_dir}",
        f"--output_dir={work / 'evaluation'}",
      ],
      0.1,
    )

  out = pathlib.Path(args.out).resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(report, indent=1))
  print(format_table(report))
  print(f"Wrote {out}")
  return 0 if all(p["ok"] for p in report["parts"].values()) else 1


def format_table(report: dict) -> str:
  device = report["device"]
  lines = [
    f"device_check ({report['scale']}): {device['devices']} x {device['device_kind']} "
    f"({device['platform']}), jax {device['jax']}, Python {report['python']}",
    f"{'part':<22}{'ok':>4}{'s':>7}  numbers",
  ]
  for name, record in report["parts"].items():
    numbers = {k: v for k, v in record.items() if k not in ("ok", "seconds", "output_tail")}
    text = ", ".join(
      f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()
    )
    lines.append(f"{name:<22}{'yes' if record['ok'] else 'NO':>4}{record['seconds']:>7.0f}  {text}")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
