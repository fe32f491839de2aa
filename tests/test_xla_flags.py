"""The default XLA flags: added only where jaxlib accepts them, never over the user's own."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from animesion_jax.cli import xla_flags

_YNN = "xla_cpu_experimental_ynn_fusion_type"


def test_user_sets_recognises_any_spelling():
  assert xla_flags.user_sets(f"--{_YNN}=-individual_convolution", _YNN)
  assert xla_flags.user_sets(f"--xla_dump_to=/tmp/x --{_YNN}=", _YNN)
  assert xla_flags.user_sets(f"--no{_YNN}", _YNN)
  assert not xla_flags.user_sets("--xla_dump_to=/tmp/x", _YNN)
  assert not xla_flags.user_sets(f"--{_YNN}_other=1", _YNN)
  assert not xla_flags.user_sets("", _YNN)


def test_users_flag_wins_and_is_never_probed(monkeypatch, tmp_path):
  monkeypatch.setattr(xla_flags, "jaxlib_accepts", lambda flag: pytest.fail("probed"))
  environ = {"XLA_FLAGS": f"--{_YNN}=individual_convolution"}
  added = xla_flags.apply_default_flags(environ, str(tmp_path / "cache.json"))
  assert added == []
  assert environ["XLA_FLAGS"] == f"--{_YNN}=individual_convolution"


def test_accepted_flag_is_appended_and_the_answer_cached(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(xla_flags, "jaxlib_accepts", lambda flag: calls.append(flag) or True)
  cache = tmp_path / "cache.json"
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  added = xla_flags.apply_default_flags(environ, str(cache))
  assert added == [f"--{_YNN}=-individual_convolution"]
  assert environ["XLA_FLAGS"] == (
    f"--xla_force_host_platform_device_count=2 --{_YNN}=-individual_convolution"
  )
  assert list(json.loads(cache.read_text()).values()) == [True]
  assert xla_flags.apply_default_flags({}, str(cache)) == added
  assert len(calls) == 1  # The second start read the cache.


def test_refused_or_failing_probe_leaves_xla_flags_alone(monkeypatch, tmp_path):
  monkeypatch.setattr(xla_flags, "jaxlib_accepts", lambda flag: False)
  environ = {}
  assert xla_flags.apply_default_flags(environ, str(tmp_path / "a.json")) == []
  assert "XLA_FLAGS" not in environ

  def broken(flag):
    raise RuntimeError("no interpreter")

  monkeypatch.setattr(xla_flags, "jaxlib_accepts", broken)
  assert xla_flags.apply_default_flags(environ, str(tmp_path / "b.json")) == []
  # An unwritable cache (a directory in its place) only means probing again next time.
  monkeypatch.setattr(xla_flags, "jaxlib_accepts", lambda flag: True)
  (tmp_path / "c.json").mkdir()
  assert len(xla_flags.apply_default_flags(environ, str(tmp_path / "c.json"))) == 1


def test_opt_out(monkeypatch, tmp_path):
  monkeypatch.setattr(xla_flags, "jaxlib_accepts", lambda flag: pytest.fail("probed"))
  environ = {"ANIMESION_XLA_DEFAULT_FLAGS": "0"}
  assert xla_flags.apply_default_flags(environ, str(tmp_path / "cache.json")) == []


@pytest.mark.slow
def test_real_jaxlib_refuses_an_unknown_flag_and_the_run_goes_on(tmp_path):
  """An unknown flag aborts XLA in the probe only; the caller's run starts without it."""
  assert not xla_flags.jaxlib_accepts("--xla_animesion_no_such_flag=1")
  bogus = (("xla_animesion_no_such_flag", "1"),)
  code = (
    "import os, sys; from animesion_jax.cli import xla_flags; "
    f"added = xla_flags.apply_default_flags(cache_path=sys.argv[1], defaults={bogus!r}); "
    "import jax, jax.numpy as jnp; "
    "print(added, repr(os.environ.get('XLA_FLAGS')), float(jnp.ones(3).sum()))"
  )
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  run = subprocess.run(
    [sys.executable, "-c", code, str(tmp_path / "cache.json")],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == ["[]", "'--xla_force_host_platform_device_count=1'", "3.0"]


# A small CNN's loss and gradients (conv, BatchNorm, max-pool: the convolution kinds the flag
# moves between YNNPACK and XLA's own kernels), printed as JSON.
_CONV_NUMERICS = """
import json, jax, jax.numpy as jnp, numpy as np, flax.linen as nn
from animesion_jax.models import resnet

class SmallCnn(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=False)(x))
    x = resnet.max_pool_3x3_stride_2(x)
    x = nn.relu(nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)))(x))
    x = nn.Conv(16, (1, 1), strides=(2, 2))(x)
    return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))

model = SmallCnn()
images = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
labels = jnp.arange(4) % 5
variables = model.init(jax.random.PRNGKey(0), images)
def loss_fn(params):
  logits, _ = model.apply({**variables, "params": params}, images, mutable=["batch_stats"])
  return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(4), labels])
loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables["params"])
leaves = jax.tree_util.tree_leaves_with_path(grads)
print(json.dumps({"loss": float(loss),
                  "grads": {jax.tree_util.keystr(k): np.asarray(v).ravel().tolist()
                            for k, v in leaves}}))
"""


@pytest.mark.slow
def test_flag_leaves_a_cnns_loss_and_gradients_unchanged():
  if not xla_flags.jaxlib_accepts(f"--{_YNN}=-individual_convolution"):
    pytest.skip("this jaxlib does not know the flag")
  results = []
  for flags_value in ("", f"--{_YNN}=-individual_convolution"):
    env = {**os.environ, "XLA_FLAGS": flags_value, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
      [sys.executable, "-c", _CONV_NUMERICS], env=env, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    results.append(json.loads(run.stdout.splitlines()[-1]))
  without, with_flag = results
  assert abs(without["loss"] - with_flag["loss"]) < 1e-5
  assert without["grads"].keys() == with_flag["grads"].keys()
  for key, values in without["grads"].items():
    a, b = np.asarray(values), np.asarray(with_flag["grads"][key])
    scale = max(np.abs(a).max(), 1e-3)
    assert np.abs(a - b).max() <= 1e-4 * scale, key


def test_every_command_starts_jax_the_same_way():
  """Each `python -m animesion_jax.X` command defines the runtime flags and calls start_jax (XLA
  flags, compilation cache) before it loads a model."""
  package = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "animesion_jax"
  )
  commands = [
    os.path.join(root, name)
    for root, _, names in os.walk(package)
    for name in names
    if (root == package and name.endswith(".py")) or name == "__main__.py"
  ]
  # Commands whose own process runs no JAX: where their workers start it the same way.
  in_workers = {"batch.py": "distributed/job.py"}
  checked = []
  for path in commands:
    with open(path) as f:
      source = f.read()
    if "def main(" not in source:
      continue
    checked.append(os.path.relpath(path, package))
    if checked[-1] in in_workers:
      with open(os.path.join(package, in_workers[checked[-1]])) as f:
        assert "xla_flags.prepare(" in f.read(), in_workers[checked[-1]]
      assert "\nimport jax\n" not in source, f"{path} imports jax in the driver"
      continue
    assert "common.define_runtime_flags(" in source, path
    assert "common.start_jax(" in source, path
    load = source.find("load_from_flags(")
    if load >= 0:
      assert source.find("common.start_jax(") < load, f"{path} loads a model before start_jax"
  assert {"export/__main__.py", "serve/__main__.py", "predict.py", "main.py"} <= set(checked)
