"""What FDT's discrete tokens learnt (Chen et al. 2023, Sec. 4.5 / Fig. 5, as a table): `python -m cl_jax.evaluate
--workdir=<an fdt run> --protocol=fdt_tokens`.

On the test split: how many dictionary entries have a non-zero sparsemax weight on some image / some caption (and
per example), then for the most used entries (by total weight over images and captions) the caption words that win
the entry's max-pool (weighted by the entry's weight) and, on data with per-example attributes (the embedded
shapes: shape, colour, size, position, background), the value of each attribute the entry fires for most, as the
lift = mean weight on images with that value / mean weight on all images (1 = no preference). Writes
<workdir>/eval/fdt_tokens_step<N>.{txt,png}: the table, and a PNG with each entry's top images and its lift over
every attribute value.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from cl_jax.eval import features
from cl_jax.run_state import Run, TrainState

TOP_ENTRIES = 16
TOP_WORDS = 3
TOP_IMAGES = 5


def active_counts(image_weights: np.ndarray, text_weights: np.ndarray) -> dict[str, float]:
  """Entries with a non-zero weight on at least one image / caption / both, and the mean per example."""
  img, txt = image_weights > 0, text_weights > 0
  any_img, any_txt = img.any(axis=0), txt.any(axis=0)
  return {"active_image": int(any_img.sum()), "active_text": int(any_txt.sum()),
          "active_both": int((any_img & any_txt).sum()), "active_any": int((any_img | any_txt).sum()),
          "per_image": float(img.sum(axis=1).mean()), "per_text": float(txt.sum(axis=1).mean()),
          "num_tokens": int(image_weights.shape[1])}


def top_entries(image_weights: np.ndarray, text_weights: np.ndarray, n: int = TOP_ENTRIES) -> np.ndarray:
  """The `n` entries with the largest total weight over images and captions (each modality's mean counted once)."""
  mass = image_weights.mean(axis=0) + text_weights.mean(axis=0)
  return np.argsort(-mass, kind="stable")[:n]


def entry_words(text_weights: np.ndarray, winner_ids: np.ndarray, entry: int, vocab: Sequence[str],
                n: int = TOP_WORDS) -> list[tuple[str, float]]:
  """(word, share of the entry's text weight) of the words that win entry `entry`'s max-pool most, by weight.

  `winner_ids` [num_texts, K]: the token id at the winning position of each caption for each entry."""
  w = text_weights[:, entry]
  total = float(w.sum())
  if total <= 0:
    return []
  mass = np.bincount(winner_ids[:, entry], weights=w, minlength=len(vocab))
  order = np.argsort(-mass, kind="stable")[:n]
  return [(vocab[i], float(mass[i] / total)) for i in order if mass[i] > 0]


def attribute_lift(image_weights: np.ndarray, entry: int, values: np.ndarray) -> np.ndarray:
  """[num_values] mean weight of entry `entry` on the images with each value / its mean weight on all images."""
  w = image_weights[:, entry].astype(np.float64)
  counts = np.bincount(values)
  sums = np.bincount(values, weights=w, minlength=len(counts))
  mean = w.mean()
  with np.errstate(invalid="ignore", divide="ignore"):
    per_value = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    return per_value / mean if mean > 0 else np.zeros_like(per_value)


def token_table(image_weights: np.ndarray, text_weights: np.ndarray, winner_ids: np.ndarray,
                vocab: Sequence[str], attributes: Mapping[str, tuple[np.ndarray, Sequence[str]]],
                n: int = TOP_ENTRIES) -> list[dict[str, Any]]:
  """One row per frequent entry: entry, image/caption activity (% of examples), top words, per attribute the value
  with the largest lift and that lift, and the lift of every value (for the PNG)."""
  rows = []
  for k in top_entries(image_weights, text_weights, n):
    row = {"entry": int(k), "image_pct": 100.0 * float((image_weights[:, k] > 0).mean()),
           "text_pct": 100.0 * float((text_weights[:, k] > 0).mean()),
           "words": entry_words(text_weights, winner_ids, int(k), vocab), "attributes": {}, "lift": {}}
    for name, (values, names) in attributes.items():
      lift = attribute_lift(image_weights, int(k), values)
      best = int(np.argmax(lift))
      row["attributes"][name] = (names[best] if best < len(names) else str(best), float(lift[best]))
      row["lift"][name] = lift
    rows.append(row)
  return rows


def format_table(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, float]) -> str:
  """The table as text: a header line with the active counts, then one line per entry."""
  head = (f"FDT dictionary: {counts['active_any']} of {counts['num_tokens']} entries active on the test split "
          f"({counts['active_image']} on images, {counts['active_text']} on captions, {counts['active_both']} on "
          f"both); {counts['per_image']:.1f} active per image, {counts['per_text']:.1f} per caption")
  names = list(rows[0]["attributes"]) if rows else []
  cols = ["entry", "img%", "txt%", "top words (share of text weight)"] + [f"{n} (lift)" for n in names]
  lines = [head, " | ".join(cols)]
  for r in rows:
    words = ", ".join(f"{w} {100 * s:.0f}%" for w, s in r["words"]) or "-"
    attrs = [f"{v} x{lift:.2f}" for v, lift in r["attributes"].values()]
    lines.append(" | ".join([f"{r['entry']:5d}", f"{r['image_pct']:5.1f}", f"{r['text_pct']:5.1f}", words] + attrs))
  return "\n".join(lines)


def plot_tokens(rows: Sequence[Mapping[str, Any]], images: Mapping[int, np.ndarray], top_images: np.ndarray,
                attributes: Mapping[str, tuple[np.ndarray, Sequence[str]]], path: str, title: str) -> str:
  """PNG: per entry (rows), its top images (`images`: index -> [H, W, 3] uint8), then a heatmap of its lift over
  every attribute value."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the fdt_tokens protocol's PNG needs matplotlib; pip install matplotlib.") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  n, k = len(rows), top_images.shape[1]
  labels = [f"{n}={v}" for n, (_, names) in attributes.items() for v in names]
  lift = np.array([np.concatenate([r["lift"][a][:len(names)] for a, (_, names) in attributes.items()])
                   for r in rows]) if attributes else np.zeros((n, 0))
  width = k * 0.9 + max(0.35 * len(labels), 2.0) + 3.0
  fig = plt.figure(figsize=(width, 0.9 * n + 1.6), dpi=100)
  grid = fig.add_gridspec(n, k + 1, width_ratios=[1] * k + [max(0.4 * len(labels), 2.0)], wspace=0.05, hspace=0.1,
                          top=0.97)
  for i, r in enumerate(rows):
    for j in range(k):
      ax = fig.add_subplot(grid[i, j])
      ax.imshow(images[int(top_images[i, j])], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0:
        words = ",".join(w for w, _ in r["words"][:2])
        ax.set_ylabel(f"#{r['entry']}\n{words}", rotation=0, ha="right", va="center", fontsize=7)
  if labels:
    ax = fig.add_subplot(grid[:, k])
    im = ax.imshow(lift, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(2.0, float(np.nanmax(lift))))
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="lift (mean weight | value / mean weight)")
  fig.suptitle(title, fontsize=9, y=0.995)
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  return path


def _text_weights(run: Run, state: TrainState, tokens: np.ndarray, chunk: int = 256
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(weights [n, K], winning token ids [n, K]) of caption token rows, in fixed-size chunks (one compile)."""
  fn = jax.jit(run.method.text_token_weights)
  weights, winners = [], []
  for start in range(0, len(tokens), chunk):
    rows = tokens[start:start + chunk]
    padded = np.pad(rows, ((0, chunk - len(rows)), (0, 0)))
    w, pos = (np.asarray(x)[:len(rows)] for x in fn(state["params"], state["method_state"], padded))
    weights.append(w)
    winners.append(np.take_along_axis(rows, pos, axis=1))   # position -> token id
  return np.concatenate(weights), np.concatenate(winners)


def report(run: Run, state: TrainState, specs: Any, workdir: str, step: int) -> tuple[dict[str, float], str]:
  """The fdt_tokens protocol: (eval/fdt_* metrics, a summary line); prints the table, writes the .txt and .png."""
  method = run.method
  if not all(hasattr(method, a) for a in ("image_token_weights", "text_token_weights", "tokenizer")):
    raise ValueError(f"the fdt_tokens protocol needs an fdt run, not {run.config.method.name}.")
  source = run.test_source
  if source is None or not hasattr(source, "captions_of"):
    raise ValueError(f"the fdt_tokens protocol needs a test split with captions; dataset '{run.config.dataset}' "
                     "has none.")
  image_w = features.extract(run, features.make_encode(run, specs, "image_token_weights"), state, source,
                             fields=())["features"]
  n = len(image_w)
  tokens = method.tokenizer.encode([source.captions_of(i)[0] for i in range(n)])
  text_w, winner_ids = _text_weights(run, state, tokens)
  attrs = {name: (np.asarray(source.attribute_values(name))[:n], tuple(values))
           for name, (_, values) in (getattr(source, "attributes", None) or {}).items()}
  counts = active_counts(image_w, text_w)
  rows = token_table(image_w, text_w, winner_ids, method.tokenizer.vocab, attrs)
  table = format_table(rows, counts)
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f"fdt_tokens_step{step}")
  with open(base + ".txt", "w") as f:
    f.write(table + "\n")
  print(table, flush=True)
  top_images = np.argsort(-image_w[:, [r["entry"] for r in rows]], axis=0, kind="stable")[:TOP_IMAGES].T
  images = {int(i): np.asarray(source[int(i)]["image"]) for i in np.unique(top_images)}
  png = plot_tokens(rows, images, top_images, attrs, base + ".png",
                    f"FDT tokens at step {step}: {counts['active_any']}/{counts['num_tokens']} active, "
                    f"T_sd={float(np.asarray(state['method_state']['sd_temperature'])):g}") if rows else ""
  metrics = {f"eval/fdt_{k}": float(v) for k, v in counts.items() if k != "num_tokens"}
  line = (f"step {step}: FDT tokens active on the test split {counts['active_any']}/{counts['num_tokens']} "
          f"({counts['per_image']:.1f} per image, {counts['per_text']:.1f} per caption) | wrote {base}.txt, {png}")
  return metrics, line
