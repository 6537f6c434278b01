"""--what=input: does the host input pipeline keep up with the step? Host examples/s of the training loader over a
folder of JPEGs (decode + shorter side to 224 + centre crop + batch, on the host; the random crops happen on the
device, inside the step) with grain worker_count 0, 1, 2, against the device step's images/s at the same batch
(README "Benchmarks"). The JPEGs are written to a temporary folder from the embedded shapes: nothing is read
from or downloaded to anywhere else."""
from __future__ import annotations

import os
import tempfile
import time
from types import ModuleType
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from cl_jax import parallel
from cl_jax.data import pipeline
from cl_jax.data.folder import FolderSource
from cl_jax.data.shapes import ShapesSource

Row = dict[str, Any]

INPUT_WORKERS = (0, 1, 2)
INPUT_SIZE = 224            # the decoded, centre-cropped size the host hands to the device
JPEG_SIZE = (400, 300)      # stored width x height (ImageNet's mean is about 400 x 350)
JPEG_QUALITY = 90


def write_jpeg_folder(root: str, num_images: int, seed: int = 0) -> str:
  """`num_images` noisy JPEGs of the embedded shapes at JPEG_SIZE in root/<class>/ (a labelled folder layout)."""
  shapes = ShapesSource("train", num_examples=num_images, image_size=64, seed=seed)
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    ex = shapes[i]
    big = Image.fromarray(ex["image"]).resize(JPEG_SIZE, Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(big, np.float32) + rng.normal(0, 8, (JPEG_SIZE[1], JPEG_SIZE[0], 3)), 0, 255)
    folder = os.path.join(root, f"class_{int(ex['label']):02d}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(noisy.astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"), quality=JPEG_QUALITY)
  return root


def host_examples_per_sec(source: FolderSource, batch: int, worker_count: int, batches: int,
                          warmup: int = 2) -> float:
  """Examples/s of the training loader (shuffled, repeated, batched) after `warmup` batches (worker start-up)."""
  it = iter(pipeline.make_loader(source, global_batch=batch, seed=0, shuffle=True, num_epochs=None,
                                 worker_count=worker_count))
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t)


def folder_config(config: ml_collections.ConfigDict, root: str) -> ml_collections.ConfigDict:
  """`config` reading the JPEG folder at INPUT_SIZE, its crop sizes scaled by the same factor."""
  c = ml_collections.ConfigDict(config.to_dict())
  scale = INPUT_SIZE / int(config.data.image_size)
  c.dataset = f"folder:{root}"
  c.data = dict(image_size=INPUT_SIZE, seed=0, worker_count=0, holdout_frac=0.1, on_bad_image="fail")
  for group in c.augment.values():
    group.size = int(round(group.size * scale))
  c.eval.monitors = ()
  return c


def bench_input(config: ml_collections.ConfigDict, repeats: int, warmup: int, bench: ModuleType) -> list[Row]:
  """One row per worker_count (host examples/s and its ratio to the step), then the device step's row; `bench` is
  the running cl_jax.bench module (its compile_timed, time_ms and host_batch time the step as --what=step does)."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  batch = int(config.batch_size)
  with tempfile.TemporaryDirectory(prefix="cl_jax_input_") as root:
    write_jpeg_folder(root, max(4 * batch, 256))
    c = folder_config(config, root)
    run = train.build_run(c)
    state, specs = train.init_state(run)
    step = train.make_train_step(run, specs)
    on_device = parallel.host_to_global(bench.host_batch(run.train_source, batch), run.mesh)
    compiled, _ = bench.compile_timed(step, state, on_device)
    holder = [state]

    def one_step():
      holder[0], metrics = compiled(holder[0], on_device)
      return metrics

    step_ms = bench.time_ms(one_step, repeats, warmup)
    device_ips = batch / step_ms * 1e3
    rows = []
    for workers in INPUT_WORKERS:
      ips = host_examples_per_sec(run.train_source, batch, workers, max(repeats, 4))
      rows.append({"what": "input", "stage": "host", "worker_count": workers, "batch": batch,
                   "image_size": INPUT_SIZE, "jpeg": f"{JPEG_SIZE[0]}x{JPEG_SIZE[1]} q{JPEG_QUALITY}",
                   "host_examples_per_sec": ips, "host_over_step": ips / device_ips,
                   "keeps_up": bool(ips >= device_ips)})
  rows.append({"what": "input", "stage": "device_step", "method": c.method.name, "model": c.model.name,
               "devices": run.mesh.size, "batch": batch, "crop_sizes": [g.size for g in c.augment.values()],
               "step_ms": step_ms, "device_images_per_sec": device_ips})
  return rows
