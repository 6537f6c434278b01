"""Label regimes on any labelled source: noisy, coarse and category-discovery labels for the train split.

`config.data` fields (sources.SHARED; None = off; they compose in the order coarse -> noise -> discovery):

  label_noise    "symmetric:0.4"   flip with probability r to a class drawn uniformly from the OTHER classes
                                   (the symmetric protocol of Co-teaching, Han et al. 2018, and TCL, Huang et al. 2023)
                 "asymmetric:0.4"  flip with probability r along a fixed class -> class map (Patrini et al. 2017):
                                   CIFAR-10 truck->automobile, bird->airplane, deer->horse, cat<->dog; CIFAR-100 the
                                   next class of the same superclass; shapes similar shapes (ASYMMETRIC_SHAPES);
                                   otherwise i -> (i + 1) % C
                 {"kind": "asymmetric", "rate": 0.4, "map": {"cat": "dog", ...}}   an explicit flip map
  coarse_labels  "shapes" (SHAPES_COARSE), "cifar100" (its 20 superclasses), or an explicit mapping:
                 {fine: coarse} (class names or ids), {coarse: [fine, ...]}, or a list of C coarse names or ids
  discovery      "old=0-4,labelled=0.5" (old classes: a count N = the first N, a range a-b, ranges joined by "+";
                 labelled: the fraction of old-class examples keeping their label, default 0.5, GCD's protocol,
                 Vaze et al. 2022), or {"old": [0, 1, 2], "labelled": 0.5}; every other example gets label -1
  label_seed     the seed of the noise and discovery draws (None: data.seed)

Fields added to each example: noise `clean_label` (the batch's "label" is the noisy one) and `is_noisy`; coarse
`fine_label` ("label" the coarse id); discovery `true_label` and `is_old_class` ("label" -1 where unlabelled, which
cl_jax/losses/supcon.py treats as positive only with its own views). Every per-example decision is a hash of
(seed, regime, example index), so every host, worker and batch order agrees. `regime_summary(source)` is the realised
regime as a JSON-able dict (the training loop writes it to <workdir>/label_regime.json).
"""
from __future__ import annotations

import abc

from typing import Any, Mapping, Sequence

import numpy as np

from cl_jax.data.class_groups import (  # noqa: F401 (re-exported)
    ASYMMETRIC_CIFAR10, ASYMMETRIC_SHAPES, CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR100_COARSE, SHAPES_COARSE)

NOISE_KINDS = ("symmetric", "asymmetric")
NAMED_COARSE = {"shapes": SHAPES_COARSE, "cifar100": CIFAR100_COARSE}
REGIME_FIELDS = ("coarse_labels", "label_noise", "discovery")   # the order they are applied in
# The fields the regimes keep for evaluation only: the training loop removes them from a method's views.
TRUTH_FIELDS = ("clean_label", "is_noisy", "fine_label", "true_label", "is_old_class")
_TAGS = {"label_noise": 0x4015E, "discovery": 0xD15C0}
_M64 = np.uint64((1 << 64) - 1)


# ------------------------------------------------------------------------------------------------ per-example draws

def _mix(*values: Any) -> np.ndarray:
  """The 64-bit hash of cl_jax/data/captions._mix (SplitMix64 finaliser chained over the values), vectorised."""
  with np.errstate(over="ignore"):
    h = np.full(np.shape(values[-1]), 0x9E3779B97F4A7C15, np.uint64)
    for v in values:
      h = (h ^ np.asarray(v).astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
      h = (h ^ (h >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
      h = h ^ (h >> np.uint64(29))
  return h


def uniform(seed: int, tag: int, index: np.ndarray, stream: int = 0) -> np.ndarray:
  """A float64 in [0, 1) per example index, a pure function of (seed, tag, index, stream)."""
  index = np.asarray(index, np.int64)
  h = _mix(np.full(index.shape, seed), np.full(index.shape, tag), index, np.full(index.shape, stream))
  return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------------------------------- config parsing

def _plain(value: Any) -> Any:
  """ConfigDicts as dicts and tuples as lists, all the way down (a config may hold either)."""
  if hasattr(value, "items") and not isinstance(value, str):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _class_id(name: str, value: Any, class_names: Sequence[str], num_classes: int) -> int:
  """A class given by name or id (an int or a digit string) -> its id; unknown ones are one line."""
  if isinstance(value, str) and value in class_names:
    return list(class_names).index(value)
  if isinstance(value, (int, np.integer)) or (isinstance(value, str) and value.strip().isdigit()):
    if isinstance(value, bool) or not 0 <= int(value) < num_classes:
      raise ValueError(f"{name}: class {value!r} is not in [0, {num_classes}); use a class id below {num_classes}.")
    return int(value)
  raise ValueError(f"{name}: unknown class {value!r}; use one of {', '.join(map(str, class_names[:12]))}"
                   f"{', ...' if len(class_names) > 12 else ''} or a class id.")


def _rate(name: str, value: Any) -> float:
  try:
    r = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{name}: noise rate {value!r} is not a number; pass e.g. 'symmetric:0.4'.") from None
  if not 0 <= r < 1:
    raise ValueError(f"{name}: noise rate {r} is outside [0, 1); pass a rate such as 0.4.")
  return r


def parse_noise(spec: Any) -> dict[str, Any]:
  """data.label_noise -> {"kind", "rate", "map"}: "symmetric:0.4", "asymmetric:0.4" or a dict of those keys."""
  name = "data.label_noise"
  spec = _plain(spec)
  if isinstance(spec, str):
    kind, sep, rate = spec.partition(":")
    if not sep:
      raise ValueError(f"{name}={spec!r}: expected kind:rate; pass e.g. 'symmetric:0.4' or 'asymmetric:0.4'.")
    spec = {"kind": kind.strip(), "rate": rate.strip()}
  if not isinstance(spec, dict):
    raise ValueError(f"{name}={spec!r}: expected a string such as 'symmetric:0.4' or a dict(kind=, rate=, map=).")
  unknown = sorted(set(spec) - {"kind", "rate", "map"})
  if unknown:
    raise ValueError(f"{name}.{unknown[0]}: unknown; known: kind, map, rate.")
  kind = spec.get("kind")
  if kind not in NOISE_KINDS:
    raise ValueError(f"{name}: unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)} "
                     "(e.g. 'symmetric:0.4').")
  if spec.get("map") is not None and kind != "asymmetric":
    raise ValueError(f"{name}.map: only asymmetric noise reads a flip map; set kind='asymmetric' or drop the map.")
  return {"kind": kind, "rate": _rate(name, spec.get("rate")), "map": spec.get("map")}


def flip_map(source_name: str, class_names: Sequence[str], explicit: Any = None) -> np.ndarray:
  """int [C]: the asymmetric target of each class (itself = never flipped): explicit, CIFAR-10's, CIFAR-100's
  next-in-superclass, the shapes', else i -> (i + 1) % C."""
  names, c = tuple(class_names), len(class_names)
  target = np.arange(c)
  if explicit is not None:
    if not isinstance(explicit, dict):
      raise ValueError(f"data.label_noise.map={explicit!r}: expected a dict of class -> class, e.g. {{'cat': 'dog'}}.")
    for k, v in explicit.items():
      target[_class_id("data.label_noise.map", k, names, c)] = _class_id("data.label_noise.map", v, names, c)
    return target
  named = (ASYMMETRIC_CIFAR10 if names == CIFAR10_CLASSES else ASYMMETRIC_SHAPES if source_name == "shapes"
           else None)
  if named is not None:
    for k, v in named.items():
      target[names.index(k)] = names.index(v)
    return target
  if names == CIFAR100_CLASSES:
    for fine in CIFAR100_COARSE.values():
      ids = [names.index(f) for f in fine]
      target[ids] = np.roll(ids, -1)
    return target
  return (np.arange(c) + 1) % c


def parse_coarse(spec: Any, class_names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
  """data.coarse_labels -> (int [C] fine -> coarse id, coarse class names); a fine class left out is one line."""
  name, names, c = "data.coarse_labels", tuple(class_names), len(class_names)
  spec = _plain(spec)
  if isinstance(spec, str):
    if spec not in NAMED_COARSE:
      raise ValueError(f"{name}={spec!r}: unknown; use one of {', '.join(NAMED_COARSE)} or an explicit mapping "
                       "{fine: coarse}.")
    spec = {k: list(v) for k, v in NAMED_COARSE[spec].items()}
  order: list[str] = []   # coarse ids: the groups' order, else the order of first appearance over the fine classes
  if isinstance(spec, dict) and spec and all(isinstance(v, list) for v in spec.values()):   # {coarse: [fine, ...]}
    order, spec = list(spec), {str(f): k for k, fine in spec.items() for f in fine}
  if isinstance(spec, list):
    if len(spec) != c:
      raise ValueError(f"{name}: the list has {len(spec)} entries for {c} classes; give one coarse class per class.")
    spec = dict(zip(map(str, range(c)), spec))
  if not isinstance(spec, dict) or not spec:
    raise ValueError(f"{name}={spec!r}: expected 'shapes', 'cifar100' or a mapping {{fine: coarse}}.")
  coarse_of: dict[int, Any] = {}
  for k, v in spec.items():
    coarse_of[_class_id(name, k, names, c)] = v
  missing = [names[i] for i in range(c) if i not in coarse_of]
  if missing:
    raise ValueError(f"{name}: fine class {missing[0]!r} has no coarse class ({len(missing)} of {c} missing); "
                     "map every class.")
  values = [coarse_of[i] for i in range(c)]
  if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
    k = max(values) + 1
    if sorted(set(values)) != list(range(k)):
      raise ValueError(f"{name}: coarse ids {sorted(set(values))} are not 0..{k - 1}; number the coarse classes "
                       "from 0 without gaps.")
    return np.asarray(values, np.int32), tuple(str(i) for i in range(k))
  coarse_names = tuple(dict.fromkeys([*order, *(str(v) for v in values)]))
  return np.asarray([coarse_names.index(str(v)) for v in values], np.int32), coarse_names


def _old_classes(value: Any, class_names: Sequence[str], c: int) -> list[int]:
  name = "data.discovery.old"
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    return list(range(int(value)))
  if isinstance(value, str) and value.strip().isdigit():
    return list(range(int(value)))
  if isinstance(value, str):
    out = []
    for part in value.split("+"):
      lo, sep, hi = part.strip().partition("-")
      if sep and lo.strip().isdigit() and hi.strip().isdigit():
        out += range(_class_id(name, lo.strip(), class_names, c), _class_id(name, hi.strip(), class_names, c) + 1)
      else:
        out.append(_class_id(name, part.strip(), class_names, c))
    return out
  if isinstance(value, list):
    return [_class_id(name, v, class_names, c) for v in value]
  raise ValueError(f"{name}={value!r}: expected a count (the first N classes), a range '0-4' or a list of classes.")


def parse_discovery(spec: Any, class_names: Sequence[str]) -> dict[str, Any]:
  """data.discovery -> {"old": sorted old class ids, "labelled": fraction}; no new (or no old) classes is one line."""
  name, c = "data.discovery", len(class_names)
  spec = _plain(spec)
  if isinstance(spec, str):
    items = [kv.partition("=") for kv in spec.split(",") if kv.strip()]
    if any(not sep for _, sep, _ in items):
      raise ValueError(f"{name}={spec!r}: expected key=value pairs; pass e.g. 'old=0-4,labelled=0.5'.")
    spec = {k.strip(): v.strip() for k, _, v in items}
  if not isinstance(spec, dict):
    raise ValueError(f"{name}={spec!r}: expected 'old=0-4,labelled=0.5' or a dict(old=, labelled=).")
  unknown = sorted(set(spec) - {"old", "labelled"})
  if unknown:
    raise ValueError(f"{name}.{unknown[0]}: unknown; known: labelled, old.")
  if spec.get("old") is None:
    raise ValueError(f"{name}: no old classes given; pass e.g. 'old=0-4,labelled=0.5'.")
  old = sorted(set(_old_classes(spec["old"], class_names, c)))
  if not old:
    raise ValueError(f"{name}: the split has no old classes; name at least one with old=...")
  if old[-1] >= c:
    raise ValueError(f"{name}.old: class {old[-1]} is not in [0, {c}); use old classes below {c}.")
  if len(old) == c:
    raise ValueError(f"{name}: the split has no new classes (all {c} are old); leave some out of old=...")
  try:
    labelled = float(spec.get("labelled", 0.5))
  except (TypeError, ValueError):
    raise ValueError(f"{name}.labelled={spec.get('labelled')!r}: not a number; pass a fraction such as 0.5.") from None
  if not 0 <= labelled <= 1:
    raise ValueError(f"{name}.labelled={labelled}: must be in [0, 1]; pass a fraction such as 0.5.")
  return {"old": old, "labelled": labelled}


# --------------------------------------------------------------------------------------------------------- sources

def all_labels(source: Any) -> np.ndarray:
  """int32 [N]: every example's label, from a regime, a `labels` array, shapes' `arrays`, else read one by one."""
  if isinstance(source, LabelRegime):
    return source.fields(all_labels(source.source), np.arange(len(source)))["label"]
  labels = getattr(source, "labels", None)
  if isinstance(labels, np.ndarray) and len(labels) == len(source):
    return labels.astype(np.int32)
  arrays = getattr(source, "arrays", None)
  if isinstance(arrays, dict) and "label" in arrays:
    return np.asarray(arrays["label"], np.int32)
  return np.asarray([source[i]["label"] for i in range(len(source))], np.int32)


class LabelRegime(abc.ABC):
  """A source whose examples' "label" is a function of the wrapped source's label and the example index; every other
  attribute (name, split, image_size, captions_of, ...) is the wrapped source's."""

  kind = ""
  truth = ""   # the field keeping the wrapped source's label (what evaluation scores against)

  def __init__(self, source: Any):
    self.source = source
    self.name, self.image_size, self.has_labels = source.name, source.image_size, True
    self.num_classes, self.class_names = source.num_classes, source.class_names

  @abc.abstractmethod
  def fields(self, label: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """The regime's fields ("label" and the kept truths) of examples `index` with wrapped labels `label`."""

  @abc.abstractmethod
  def summary(self) -> dict[str, Any]:
    """The realised regime, JSON-able (label_regime.json)."""

  def __len__(self) -> int:
    return len(self.source)

  def _apply(self, ex: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    out = self.fields(np.asarray([ex["label"]], np.int64), np.asarray([int(i) % len(self)]))
    return {**ex, **{k: np.asarray(v[0]) for k, v in out.items()}}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self._apply(dict(self.source[i]), i)

  @property
  def labels(self) -> np.ndarray:
    """int32 [N]: every example's regime label (what training sees)."""
    return all_labels(self)

  def __getattr__(self, attr: str) -> Any:
    # `arrays` (shapes' in-memory columns) would hand out the clean labels as "label": not forwarded.
    if attr.startswith("__") or attr == "arrays" or "source" not in self.__dict__:
      raise AttributeError(attr)
    inner = getattr(self.source, attr)
    if attr == "get_with_captions":   # captions.CaptionedSource reads examples through it
      def get_with_captions(i: int):
        ex, captions = inner(i)
        return self._apply(dict(ex), i), captions
      return get_with_captions
    return inner

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.source!r})"


class NoisyLabels(LabelRegime):
  """Symmetric (to a uniformly drawn other class) or asymmetric (along a flip map) label noise at `rate`: the noise
  protocol of Co-teaching (Han et al. 2018) and TCL (Huang et al. 2023); `clean_label` kept, `is_noisy` flags flips."""

  kind, truth = "label_noise", "clean_label"

  def __init__(self, source: Any, kind: str, rate: float, seed: int, flips: np.ndarray | None = None):
    super().__init__(source)
    self.noise, self.rate, self.seed = kind, float(rate), int(seed)
    self.flips = None if flips is None else np.asarray(flips, np.int64)
    if self.num_classes < 2:
      raise ValueError(f"data.label_noise needs at least 2 classes but '{self.name}' has {self.num_classes}.")

  def fields(self, label: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    label = np.asarray(label, np.int64)
    u = uniform(self.seed, _TAGS["label_noise"], index, 0)
    c = int(self.num_classes)
    if self.noise == "symmetric":
      other = np.minimum((uniform(self.seed, _TAGS["label_noise"], index, 1) * (c - 1)).astype(np.int64), c - 2)
      target = (label + 1 + other) % c
    else:
      target = self.flips[label]
    noisy = np.where(u < self.rate, target, label)
    return {"label": noisy.astype(np.int32), "clean_label": label.astype(np.int32), "is_noisy": noisy != label}

  def summary(self) -> dict[str, Any]:
    f = self.fields(all_labels(self.source), np.arange(len(self)))
    c = int(self.num_classes)
    transition = np.zeros((c, c), np.int64)
    np.add.at(transition, (f["clean_label"], f["label"]), 1)
    out = {"regime": self.kind, "noise": self.noise, "rate": self.rate, "seed": self.seed,
           "realised_rate": float(f["is_noisy"].mean()), "noisy_indices": np.flatnonzero(f["is_noisy"]).tolist(),
           "label": f["label"].tolist(), "transition": transition.tolist()}
    if self.flips is not None:
      out["flip_map"] = {self.class_names[i]: self.class_names[j] for i, j in enumerate(self.flips) if i != j}
    return out


class CoarseLabels(LabelRegime):
  """Coarse labels (MaskCon's setting, Feng & Patras 2023): "label" the coarse id of the fine class, `fine_label`
  kept; num_classes and class_names are the coarse ones."""

  kind, truth = "coarse_labels", "fine_label"

  def __init__(self, source: Any, fine_to_coarse: np.ndarray, coarse_names: Sequence[str]):
    super().__init__(source)
    self.fine_class_names = source.class_names
    self.fine_to_coarse = np.asarray(fine_to_coarse, np.int32)
    self.num_classes, self.class_names = len(coarse_names), tuple(coarse_names)

  def fields(self, label: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    label = np.asarray(label, np.int64)
    return {"label": self.fine_to_coarse[label], "fine_label": label.astype(np.int32)}

  def summary(self) -> dict[str, Any]:
    return {"regime": self.kind, "coarse_class_names": list(self.class_names),
            "fine_to_coarse": {n: self.class_names[k] for n, k in zip(self.fine_class_names, self.fine_to_coarse)}}


class DiscoveryLabels(LabelRegime):
  """Generalized category discovery (Vaze et al. 2022, Sec. 3): a `labelled` fraction of the old classes' examples
  keep their label, every other example gets -1 (unlabelled); `true_label` and `is_old_class` kept."""

  kind, truth = "discovery", "true_label"

  def __init__(self, source: Any, old: Sequence[int], labelled: float, seed: int):
    super().__init__(source)
    self.old_classes, self.labelled, self.seed = tuple(int(k) for k in old), float(labelled), int(seed)
    self.new_classes = tuple(k for k in range(int(self.num_classes)) if k not in self.old_classes)
    self._is_old = np.isin(np.arange(int(self.num_classes)), self.old_classes)

  def fields(self, label: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    label = np.asarray(label, np.int64)
    is_old = self._is_old[label]
    keep = is_old & (uniform(self.seed, _TAGS["discovery"], index) < self.labelled)
    return {"label": np.where(keep, label, -1).astype(np.int32), "true_label": label.astype(np.int32),
            "is_old_class": is_old}

  def summary(self) -> dict[str, Any]:
    f = self.fields(all_labels(self.source), np.arange(len(self)))
    return {"regime": self.kind, "old_classes": list(self.old_classes), "new_classes": list(self.new_classes),
            "labelled": self.labelled, "seed": self.seed, "labelled_indices": np.flatnonzero(f["label"] >= 0).tolist(),
            "realised_labelled": float((f["label"] >= 0)[f["is_old_class"]].mean()) if f["is_old_class"].any() else 0.}


def wrap(source: Any, split: str, hp: Mapping[str, Any]) -> Any:
  """`source` in the regimes of the validated config.data `hp` (train split only; the test split keeps true labels,
  but its config is checked all the same)."""
  hp = {**hp, **{k: None for k in REGIME_FIELDS if hp.get(k) == ""}}   # "" is off too (a CLI-overridable default)
  asked = [k for k in REGIME_FIELDS if hp.get(k) is not None]
  if not asked:
    return source
  if not getattr(source, "has_labels", False) or not getattr(source, "class_names", None):
    raise ValueError(f"data.{asked[0]} needs labels but '{getattr(source, 'name', source)}' has none; use a labelled "
                     f"source or unset data.{asked[0]}.")
  seed = int(hp["label_seed"] if hp.get("label_seed") is not None else hp.get("seed") or 0)
  out, names = source, tuple(source.class_names)
  if hp.get("coarse_labels") is not None:
    fine_to_coarse, coarse_names = parse_coarse(hp["coarse_labels"], names)
    out, names = CoarseLabels(out, fine_to_coarse, coarse_names), coarse_names
  if hp.get("label_noise") is not None:
    noise = parse_noise(hp["label_noise"])
    flips = flip_map(out.name, names, noise["map"]) if noise["kind"] == "asymmetric" else None
    out = NoisyLabels(out, noise["kind"], noise["rate"], seed, flips)
  if hp.get("discovery") is not None:
    d = parse_discovery(hp["discovery"], names)
    out = DiscoveryLabels(out, d["old"], d["labelled"], seed)
  return out if split == "train" else source


def regimes_of(source: Any) -> list[LabelRegime]:
  """The regimes wrapped around a source's data, innermost first (through text wrappers with a `source`)."""
  out = []
  while source is not None:
    if isinstance(source, LabelRegime):
      out.append(source)
    source = source.__dict__.get("source") if hasattr(source, "__dict__") else None
  return out[::-1]


def regime_summary(source: Any) -> dict[str, Any]:
  """The realised label regime of a (train) source as a JSON-able dict ({} without one): per regime, in the order
  applied, its settings and realised draws (flipped indices and noisy labels, the class split, ...)."""
  regimes = regimes_of(source)
  if not regimes:
    return {}
  return {"dataset": regimes[0].source.name, "num_examples": len(regimes[0]),
          "regimes": [r.summary() for r in regimes]}


def truth(source: Any) -> tuple[str, int]:
  """(the batch field with the source's true label, its number of classes): "label" without a regime, else the
  innermost regime's kept truth (fine_label / clean_label / true_label) and the unwrapped source's class count.
  Evaluation (kNN memory, linear probe, online probe) scores against it; training sees only "label"."""
  regimes = regimes_of(source)
  if not regimes:
    return "label", int(getattr(source, "num_classes", 0) or 0)
  return regimes[0].truth, int(regimes[0].source.num_classes)
