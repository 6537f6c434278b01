"""cl_jax.bench: every --what once on a tiny run (keys, types, positive FLOPs and ratios), the helpers against
hand-computed values, and the CLI's JSON lines. Nothing here asserts on wall-clock time."""
import json
import math

import jax
import jax.numpy as jnp
import pytest

from cl_jax import bench
from tests import harness

COMMON = {"what": str, "devices": int, "batch": int, "step_ms": float, "images_per_sec": float,
          "compile_s": float, "peak_bytes": int, "flops": float, "flops_per_sec": float,
          "gemm_peak_flops_per_sec": float, "ratio_to_gemm_peak": float}


def tiny_config():
  """The tiny config on a 2-block ViT and 16 px images (fast to compile), batch 16 on 8 devices."""
  return harness.tiny_config(**{"model": dict(name="vit_micro", patch_size=8, dtype="float32"), "data.image_size": 16,
                                "data.num_train": 32, "data.num_test": 16, "augment.global.size": 16,
                                "batch_size": 16})


@pytest.fixture(scope="module")
def gemm_peak():
  return bench.gemm_peak_flops_per_sec(64, repeats=2)


def check_row(row, what):
  assert row["what"] == what
  for key, typ in COMMON.items():
    assert isinstance(row[key], typ), (key, row[key])
  assert row["devices"] == jax.device_count() and row["batch"] == 16
  assert row["flops"] > 0 and row["peak_bytes"] > 0
  for key in ("step_ms", "images_per_sec", "flops_per_sec", "gemm_peak_flops_per_sec", "ratio_to_gemm_peak"):
    assert math.isfinite(row[key]) and row[key] > 0, key
  # The derived numbers are consistent with the measured ones.
  assert row["images_per_sec"] == pytest.approx(row["batch"] / (row["step_ms"] / 1e3))
  assert row["flops_per_sec"] == pytest.approx(row["flops"] / (row["step_ms"] / 1e3))
  assert row["ratio_to_gemm_peak"] == pytest.approx(
      row["flops_per_sec"] / (row["gemm_peak_flops_per_sec"] * row["devices"]))
  json.dumps(row)   # one JSON object per line


def test_step_and_bare_backbone(gemm_peak):
  step, bare = bench.bench_step(tiny_config(), repeats=2, gemm_peak=gemm_peak)
  check_row(step, "step")
  check_row(bare, "bare_backbone_forward_backward")
  assert step["bare_step_ms"] == bare["step_ms"]
  assert isinstance(step["overhead_ratio"], float) and step["overhead_ratio"] > 0
  assert step["overhead_ratio"] == pytest.approx(step["step_ms"] / bare["step_ms"])
  # The full step runs the backbone forward+backward plus augmentation, head, loss and optimizer.
  assert step["flops"] > bare["flops"]


def test_model_forward_and_backward(gemm_peak):
  forward, fwd_bwd = bench.bench_model(tiny_config(), repeats=2, gemm_peak=gemm_peak)
  check_row(forward, "model_forward")
  check_row(fwd_bwd, "model_forward_backward")
  # Backward costs about twice the forward: the sum is clearly above the forward alone.
  assert fwd_bwd["flops"] > 1.5 * forward["flops"]


def test_loss_flops_cover_the_logits_matmul(gemm_peak):
  c = tiny_config()
  (row,) = bench.bench_loss(c, repeats=2, gemm_peak=gemm_peak)
  check_row(row, "loss")
  assert row["proj_dim"] == c.method.proj_dim
  # Forward logits [2b_local, 2N] @ D on each device, and the backward needs at least as much again.
  n, local, dim = c.batch_size, c.batch_size // jax.device_count(), c.method.proj_dim
  assert row["flops"] >= 2 * jax.device_count() * (2 * 2 * local * 2 * n * dim)


def test_augment_views_and_torchvision_field(gemm_peak):
  c = tiny_config()
  (row,) = bench.bench_augment(c, repeats=2, gemm_peak=gemm_peak)
  check_row(row, "augment")
  assert row["views_per_sec"] == pytest.approx(2 * row["images_per_sec"])   # 2 views per image
  assert row["image_size"] == 16 and row["crop_sizes"] == [16]
  try:
    import torchvision  # noqa: F401
  except ImportError:
    assert row["torchvision_views_per_sec"] is None and row["ratio_vs_torchvision"] is None
    assert "torchvision is not installed" in row["note"]
  else:
    assert row["torchvision_views_per_sec"] > 0 and row["ratio_vs_torchvision"] > 0
    assert row["ratio_vs_torchvision"] == pytest.approx(row["views_per_sec"] / row["torchvision_views_per_sec"])
    assert row["best_ratio_vs_torchvision"] == pytest.approx(
        row["best_views_per_sec"] / row["best_torchvision_views_per_sec"])
    assert row["best_torchvision_views_per_sec"] >= row["torchvision_views_per_sec"]
  assert row["best_views_per_sec"] >= row["views_per_sec"]   # best round vs median round


def test_compiled_flops_and_memory_of_a_matmul():
  a = jnp.ones((64, 32), jnp.float32)
  b = jnp.ones((32, 16), jnp.float32)
  compiled, compile_s = bench.compile_timed(jax.jit(jnp.matmul), a, b)
  assert compile_s > 0
  assert bench.compiled_flops(compiled) == 2 * 64 * 32 * 16
  assert bench.compiled_peak_bytes(compiled) >= 4 * (64 * 32 + 32 * 16 + 64 * 16)


class _Fake:
  def __init__(self, cost=None, stats=None):
    self._cost, self._stats = cost, stats

  def cost_analysis(self):
    return self._cost

  def memory_analysis(self):
    return self._stats


class _Stats:
  temp_size_in_bytes, argument_size_in_bytes, output_size_in_bytes, alias_size_in_bytes = 100, 20, 3, 20


def test_cost_and_memory_helpers_handle_each_return_type():
  assert bench.compiled_flops(_Fake(cost={"flops": 10.0})) == 10.0
  assert bench.compiled_flops(_Fake(cost=[{"flops": 10.0}, {"flops": 5.0}])) == 15.0
  assert bench.compiled_flops(_Fake(cost=None)) is None
  assert bench.compiled_flops(_Fake(cost={"bytes accessed": 3.0})) is None
  assert bench.compiled_peak_bytes(_Fake(stats=_Stats())) == 103   # donated aliases counted once
  assert bench.compiled_peak_bytes(_Fake(stats=None)) is None


def test_time_ms_takes_the_median_after_warmup(monkeypatch):
  ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 30.0])   # durations 1 s, 3 s, 10 s -> median 3 s
  monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
  calls = []
  assert bench.time_ms(lambda: calls.append(1), repeats=3, warmup=2) == 3000.0
  assert len(calls) == 5
  with pytest.raises(ValueError, match="repeats"):
    bench.time_ms(lambda: None, repeats=0)


def test_time_rounds_returns_every_round_in_ms(monkeypatch):
  ticks = iter([0.0, 0.5, 1.0, 3.0, 10.0, 10.25, 11.0, 12.0])   # a: 0.5 s, 0.25 s; b: 2 s, 1 s
  monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
  times = bench.time_rounds({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=0)
  assert times == {"a": [500.0, 250.0], "b": [2000.0, 1000.0]}


def test_time_interleaved_runs_each_call_once_per_round():
  order = []
  ms = bench.time_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1)
  assert order == ["a", "b"] * 3 and set(ms) == {"a", "b"}


def test_time_rounds_settle_runs_each_call_untimed_before_its_timed_run():
  order = []
  times = bench.time_rounds({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2,
                            warmup=0, settle=2)
  assert order == ["a", "a", "a", "b", "b", "b"] * 2 and [len(t) for t in times.values()] == [2, 2]


def test_measure_rejects_unknown_what():
  with pytest.raises(ValueError, match="Unknown --what='speed'; use one of: step, augment, loss, model"):
    bench.measure(tiny_config(), "speed")


def test_cli_prints_one_json_object_per_line():
  out = harness.run_python("-m", "cl_jax.bench", "--config=configs/quickstart.py:runlocal", "--what=loss",
                           "--repeats=2", "--gemm_size=64")
  assert out.returncode == 0, out.stderr[-2000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
  assert [r["what"] for r in rows] == ["loss"]
  assert rows[0]["flops"] > 0 and rows[0]["ratio_to_gemm_peak"] > 0


def test_memory_rows_show_shard_state_splitting_the_optimizer_state():
  """--what=memory: with shard_state the optimizer moments are stored 1/8 per device (8 devices), and the
  compiled step's per-device argument bytes fall by about that much; the logical sizes do not change."""
  full, sharded = bench.bench_memory(tiny_config(), repeats=1, gemm_peak=0.0)
  assert (full["shard_state"], sharded["shard_state"], full["devices"]) == (False, True, 8)
  assert full["opt_state_bytes"] == sharded["opt_state_bytes"] > 0
  assert full["opt_state_bytes_per_device"] == full["opt_state_bytes"]          # replicated
  assert sharded["opt_state_bytes_per_device"] < 0.25 * full["opt_state_bytes"]  # split over 'data'
  saved = full["step_argument_bytes_per_device"] - sharded["step_argument_bytes_per_device"]
  assert saved >= 0.8 * (full["opt_state_bytes_per_device"] - sharded["opt_state_bytes_per_device"])


def test_input_rows_compare_the_host_pipeline_with_the_step(monkeypatch):
  """--what=input on small JPEGs (32 px for speed): one host row per worker count and the step's row, the ratio
  computed from them, the crops scaled with the image size, and a JPEG folder the folder source reads."""
  from cl_jax import input_bench
  monkeypatch.setattr(input_bench, "INPUT_SIZE", 32)
  monkeypatch.setattr(input_bench, "JPEG_SIZE", (48, 40))
  rows = bench.measure(tiny_config(), "input", repeats=1, warmup=0)
  host, (device,) = rows[:-1], rows[-1:]
  assert [r["worker_count"] for r in host] == list(input_bench.INPUT_WORKERS)
  assert device["stage"] == "device_step" and device["crop_sizes"] == [32]   # 16 px crops of 16 px images -> 32
  for r in host:
    assert r["host_examples_per_sec"] > 0 and r["image_size"] == 32
    assert r["host_over_step"] == pytest.approx(r["host_examples_per_sec"] / device["device_images_per_sec"])
    assert r["keeps_up"] == (r["host_over_step"] >= 1)
  assert device["device_images_per_sec"] == pytest.approx(16 / device["step_ms"] * 1e3)


def test_jpeg_folder_is_a_labelled_folder_of_decodable_images(tmp_path):
  from cl_jax.data.folder import FolderSource
  from cl_jax.input_bench import write_jpeg_folder
  write_jpeg_folder(str(tmp_path), 40)
  source = FolderSource(str(tmp_path), "train", image_size=24, on_bad_image="fail")
  test = FolderSource(str(tmp_path), "test", image_size=24, on_bad_image="fail")
  assert len(source) + len(test) == 40 and source.has_labels
  assert source[0]["image"].shape == (24, 24, 3) and source.num_skipped == 0
