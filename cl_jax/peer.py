"""Side by side with the reference implementations: the same quick start trained by cl_jax and by lightly.

  python -m cl_jax.bench --config=configs/quickstart.py:method=simclr --what=peer [--peer_python=...]

For one method, on the same embedded `shapes` data (the exact uint8 images, labels and attributes the cl_jax
sources yield, exported to an .npz), the same backbone shape (resnet_tiny rebuilt in PyTorch), and the same
resolved recipe (augment groups, optimizer, batch, steps, the method's fields; exported as JSON), this module

  1. trains cl_jax (`train.train_and_evaluate`, kNN every `eval_every` steps) in <workdir>/cl_jax,
  2. runs cl_jax/peer_torch.py with the side interpreter (PyTorch + torchvision + lightly, never a cl_jax
     dependency), which trains the reference and saves backbone features of both splits at the same steps,
  3. scores those features with cl_jax's own evaluator (eval/knn.py, eval/attributes.py), so both curves come
     from one kNN, and prints the table (step, cl_jax kNN, reference kNN) and the per-attribute kNN at the end;
     <workdir>/peer.json holds the same figures.

No torch import here: the reference runs in another process.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

# method -> what the reference side builds with lightly (for messages and the report).
REFERENCES = {
    "simclr": "lightly SimCLRProjectionHead + NTXentLoss",
    "moco_v2": "lightly MoCoProjectionHead + NTXentLoss(memory_bank_size) + update_momentum, batch_shuffle",
    "byol": "lightly BYOLProjectionHead/BYOLPredictionHead + NegativeCosineSimilarity + update_momentum",
    "simsiam": "lightly ProjectionHead/SimSiamPredictionHead + NegativeCosineSimilarity",
    "dino": "lightly DINOProjectionHead + DINOLoss + update_momentum",
    "swav": "lightly SwaVProjectionHead + SwaVPrototypes (no bias, unit norm) + SwaVLoss (Sinkhorn)",
}
VERSIONS = {"torch": "2.14.1", "torchvision": "0.29.1", "lightly": "1.6.0"}
DEFAULT_VENV = "~/.cl_jax_peer"
ENV_PYTHON = "CL_JAX_PEER_PYTHON"
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_torch.py")


def install_command(venv: str = DEFAULT_VENV) -> str:
  """The commands that make the side environment the reference runs in."""
  pins = " ".join(f"{name}=={version}" for name, version in VERSIONS.items())
  return f"python -m venv {venv} && {venv}/bin/pip install {pins}"


def default_python() -> str:
  """$CL_JAX_PEER_PYTHON, else ~/.cl_jax_peer/bin/python."""
  return os.environ.get(ENV_PYTHON) or os.path.join(DEFAULT_VENV, "bin", "python")


def check_method(name: str) -> None:
  """One-line error for a method without a reference implementation here."""
  if name not in REFERENCES:
    raise ValueError(f"method '{name}' has no reference implementation for --what=peer; "
                     f"methods with one: {', '.join(REFERENCES)}.")


def check_python(python: str) -> str:
  """The side interpreter's absolute path if it imports torch, torchvision and lightly; else a one-line error
  naming the commands that install it."""
  path = os.path.abspath(os.path.expanduser(python))
  venv = os.path.dirname(os.path.dirname(path)) if path.endswith(os.path.join("bin", "python")) else DEFAULT_VENV
  fix = f"install it with: {install_command(venv)} (or pass --peer_python=/path/to/python, or set {ENV_PYTHON})"
  if not os.path.isfile(path):
    raise ValueError(f"the reference side needs a Python with PyTorch and lightly, and {path} does not exist; {fix}")
  probe = subprocess.run([path, "-c", "import torch, torchvision, lightly"], capture_output=True, text=True)
  if probe.returncode != 0:
    last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
    raise ValueError(f"the reference side's Python {path} cannot import torch, torchvision and lightly ({last}); "
                     f"{fix}")
  return path


# ----------------------------------------------------------------------------- what both sides share


def _plain(x: Any) -> Any:
  """JSON-ready copy of config values (ConfigDicts, tuples, numpy scalars)."""
  if isinstance(x, ml_collections.ConfigDict):
    x = x.to_dict()
  if isinstance(x, Mapping):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def eval_steps(total_steps: int, every: int) -> list[int]:
  """The steps the kNN is taken at, as train.train_and_evaluate does: 0, every `every`, and the last."""
  steps = [0] + (list(range(every, total_steps, every)) if every > 0 else []) + [total_steps]
  return sorted(set(steps))


def recipe(run: Any, eval_every: int) -> dict[str, Any]:
  """The resolved recipe of a built run (train.build_run) that the reference reproduces, JSON-ready."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  from cl_jax.data import augment  # pylint: disable=g-import-not-at-top
  from cl_jax.eval import features, knn, settings  # pylint: disable=g-import-not-at-top

  c = run.config
  sections = train.resolved_sections(run)
  e = settings.read(c, knn.SCHEMA)
  groups = [{"name": name, **_plain(g)} for name, g in augment.view_groups(c.augment)]
  return _plain({
      "method": sections["method"], "model": sections["model"], "optim": sections["optim"],
      "augment": groups, "batch_size": c.batch_size, "total_steps": run.total_steps,
      "steps_per_epoch": run.steps_per_epoch, "seed": c.seed, "log_every": c.get("log_every", 20),
      "eval": {"steps": eval_steps(run.total_steps, eval_every), "image_size": features.image_size(c),
               "crop_frac": settings.read(c, features.SCHEMA).crop_frac, "batch_size": c.eval.batch_size,
               "knn_k": e.knn_k, "knn_temperature": e.knn_temperature,
               "knn_train_examples": e.knn_train_examples},
      "normalize": {"mean": augment.MEAN_RGB, "std": augment.STD_RGB},
  })


def export_data(train_source: Any, test_source: Any, path: str) -> None:
  """The two splits' uint8 images, labels and attributes, exactly as the sources hold them, to `path` (.npz)."""
  arrays: dict[str, np.ndarray] = {}
  for split, source in (("train", train_source), ("test", test_source)):
    rows = [source[i] for i in range(len(source))]
    arrays[f"{split}_image"] = np.stack([r["image"] for r in rows]).astype(np.uint8)
    arrays[f"{split}_label"] = np.asarray([r["label"] for r in rows], np.int32)
    for name in getattr(source, "attributes", None) or {}:
      arrays[f"{split}_attr_{name}"] = np.asarray(source.attribute_values(name), np.int32)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_data(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def attribute_names(data: Mapping[str, np.ndarray]) -> list[str]:
  return [k[len("train_attr_"):] for k in data if k.startswith("train_attr_")]


def score(train_features: np.ndarray, test_features: np.ndarray, data: Mapping[str, np.ndarray],
          num_classes: int, k: int, temperature: float, attributes: bool = False) -> dict[str, float]:
  """cl_jax's weighted kNN (eval/knn.py) of test features against train features, and with `attributes` the
  per-attribute kNN (eval/attributes.py): {"knn_top1", "knn_top5", "attr_<name>", ...}."""
  from cl_jax.eval import attributes as attributes_lib, knn  # pylint: disable=g-import-not-at-top

  memory_labels = data["train_label"][:len(train_features)]
  acc = knn.knn_accuracy(test_features, data["test_label"], train_features, memory_labels, num_classes,
                         k=k, temperature=temperature)
  out = {"knn_top1": acc["top1"], "knn_top5": acc["top5"]}
  names = attribute_names(data)
  if attributes and names:
    attr = attributes_lib.attribute_knn(
        test_features, {n: data[f"test_attr_{n}"] for n in names}, train_features,
        {n: data[f"train_attr_{n}"][:len(train_features)] for n in names}, k=k, temperature=temperature)
    out.update({f"attr_{n}": v for n, v in attr.items()})
  return out


# ----------------------------------------------------------------------------- the two sides


def _read_metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def run_cl_jax(config: ml_collections.ConfigDict, workdir: str, say: Any) -> dict[str, Any]:
  """Trains (or resumes, or finds finished) the cl_jax run; its kNN curve and the attribute kNN at the end."""
  from cl_jax import evaluate, train  # pylint: disable=g-import-not-at-top

  start = time.time()
  train.train_and_evaluate(config, workdir)
  train_s = time.time() - start
  curve = {int(r["step"]): float(r["eval/knn_top1"]) for r in _read_metrics(workdir) if "eval/knn_top1" in r}
  attrs = evaluate.evaluate(workdir, "attributes", stream=sys.stdout)
  say(f"cl_jax: trained in {train_s:.0f} s")
  return {"curve": curve, "attributes": {k.replace("eval/attr_", ""): v for k, v in attrs.items()},
          "train_seconds": train_s}


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def run_reference(python: str, recipe_path: str, data_path: str, out_dir: str, rec: Mapping[str, Any],
                  say: Any, threads: int = 2) -> float:
  """Runs peer_torch.py in the side interpreter (skipped when out_dir holds a finished run of this recipe)."""
  done = os.path.join(out_dir, "done.json")
  if os.path.exists(done):
    with open(done) as f:
      finished = json.load(f)
    if finished.get("recipe_digest") == _digest(rec):
      say(f"reference: finished run of this recipe found in {out_dir}")
      return float(finished.get("train_seconds", 0.0))
  os.makedirs(out_dir, exist_ok=True)
  cmd = [python, PEER_SCRIPT, f"--recipe={recipe_path}", f"--data={data_path}", f"--out={out_dir}",
         f"--threads={threads}", f"--digest={_digest(rec)}"]
  say("reference: " + " ".join(cmd))
  proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    sys.stderr.write(proc.stderr[-4000:])
    raise RuntimeError(f"the reference run failed (exit {proc.returncode}): {last}")
  with open(done) as f:
    return float(json.load(f).get("train_seconds", 0.0))


def reference_features(out_dir: str, step: int) -> tuple[np.ndarray, np.ndarray]:
  with np.load(os.path.join(out_dir, f"features_{step}.npz")) as f:
    return f["train"], f["test"]


def score_reference(out_dir: str, rec: Mapping[str, Any], data: Mapping[str, np.ndarray], num_classes: int
                    ) -> tuple[dict[int, float], dict[str, float]]:
  """({eval step: kNN top-1}, {attribute: kNN top-1 at the last step}) of the features the reference saved."""
  e = rec["eval"]
  curve, attrs = {}, {}
  for step in e["steps"]:
    last = step == e["steps"][-1]
    train_features, test_features = reference_features(out_dir, step)
    if e["knn_train_examples"]:
      train_features = train_features[:e["knn_train_examples"]]
    s = score(train_features, test_features, data, num_classes, e["knn_k"], e["knn_temperature"], attributes=last)
    curve[step] = s["knn_top1"]
    if last:
      attrs = {k[len("attr_"):]: v for k, v in s.items() if k.startswith("attr_")}
  return curve, attrs


def table(rows: Sequence[Mapping[str, Any]], attrs: Mapping[str, Mapping[str, float]]) -> list[str]:
  """The printed comparison: one line per eval step, then one per attribute at the end."""
  lines = [f"{'step':>6}  {'cl_jax kNN':>10}  {'reference kNN':>13}  {'diff':>6}"]
  for r in rows:
    a, b = r.get("cl_jax"), r.get("reference")
    diff = f"{a - b:+6.2f}" if a is not None and b is not None else ""
    fa = f"{a:10.2f}" if a is not None else f"{'-':>10}"
    fb = f"{b:13.2f}" if b is not None else f"{'-':>13}"
    lines.append(f"{r['step']:>6}  {fa}  {fb}  {diff}")
  names = list(attrs.get("reference", {}) or attrs.get("cl_jax", {}))
  if names:
    lines.append(f"{'attribute (end)':>15}  {'cl_jax':>7}  {'reference':>9}")
    for n in names:
      a, b = attrs.get("cl_jax", {}).get(n), attrs.get("reference", {}).get(n)
      lines.append(f"{n:>15}  {a if a is not None else float('nan'):7.2f}  "
                   f"{b if b is not None else float('nan'):9.2f}")
  return lines


def compare(config: ml_collections.ConfigDict, *, python: str | None = None, workdir: str | None = None,
            eval_every: int = 0, say: Any = None) -> dict[str, Any]:
  """Runs both sides for `config` and returns (and writes to <workdir>/peer.json) the side-by-side figures."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top

  say = say or (lambda s: print(s, flush=True))
  name = config.method.name
  check_method(name)
  python = check_python(python or default_python())
  if config.dataset != "shapes":
    raise ValueError(f"--what=peer compares on the embedded data; set dataset='shapes' (got '{config.dataset}').")
  workdir = os.path.abspath(os.path.expanduser(workdir or os.path.join("/tmp/cl_jax_peer", name)))
  run = train.build_run(config)
  every = eval_every or max(run.total_steps // 5, 1)
  config = ml_collections.ConfigDict(config.to_dict())   # unlocked copy with the eval frequency
  config.eval.every = every
  rec = recipe(run, every)
  os.makedirs(workdir, exist_ok=True)
  recipe_path, data_path = os.path.join(workdir, "recipe.json"), os.path.join(workdir, "data.npz")
  with open(recipe_path, "w") as f:
    json.dump(rec, f, indent=2, sort_keys=True)
  export_data(run.train_source, run.test_source, data_path)
  data = load_data(data_path)
  num_classes = run.train_source.num_classes
  del run

  ours = run_cl_jax(config, os.path.join(workdir, "cl_jax"), say)
  ref_dir = os.path.join(workdir, "reference")
  ref_seconds = run_reference(python, recipe_path, data_path, ref_dir, rec, say)
  e = rec["eval"]
  ref_curve, ref_attrs = score_reference(ref_dir, rec, data, num_classes)
  rows = [{"step": step, "cl_jax": ours["curve"].get(step), "reference": ref_curve[step]} for step in e["steps"]]
  attrs = {"cl_jax": ours["attributes"], "reference": ref_attrs}
  say(f"{name}: weighted kNN top-1 (k={e['knn_k']}, T={e['knn_temperature']}), cl_jax vs reference "
      f"({REFERENCES[name]}; torch {VERSIONS['torch']})")
  for line in table(rows, attrs):
    say(line)
  result = {"what": "peer", "method": name, "steps": rec["total_steps"], "batch": rec["batch_size"],
            "curve": rows, "attributes": attrs, "cl_jax_train_seconds": ours["train_seconds"],
            "reference_train_seconds": ref_seconds, "workdir": workdir}
  with open(os.path.join(workdir, "peer.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result
