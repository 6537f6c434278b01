"""The reference side of `python -m cl_jax.bench --what=peer`: the quick start in PyTorch with lightly.

Runs ONLY in the side environment (torch, torchvision, lightly; see docs/peer.md), as a script:

  <side python> cl_jax/peer_torch.py --recipe=recipe.json --data=data.npz --out=DIR

It imports nothing from cl_jax (whose dependencies the side environment does not have). Everything it trains
comes from the recipe cl_jax/peer.py exports from the resolved config: the augment groups, AdamW or SGD with the
warm-up + cosine schedule (per-step weight-decay schedule, per-parameter clipping, frozen and constant-lr
parameter groups as cl_jax/optim.py), batch size, steps, seed, the model and the method's fields. At each of the
recipe's eval steps it writes DIR/features_<step>.npz (backbone features of the train and test splits, BN in
eval mode, the images normalised as cl_jax's eval_preprocess); cl_jax scores them with its own kNN.

The backbone is cl_jax's resnet_tiny (cl_jax/models/resnet.py) rebuilt layer by layer: ResNet v1.5 basic blocks
(stride on the first 3x3), stages of 1 block at widths 16/32/64/128 x width, 'imagenet' stem (7x7/2 conv, BN,
ReLU, 3x3/2 max-pool) or 'cifar' / 'small', projection shortcut (1x1 conv + BN) where the shape changes,
He-normal fan_out conv init, BN momentum 0.1 (flax 0.9) and eps 1e-5, zero_init_last_bn from the recipe,
global average pool. MoCo's bn_splits > 1 uses a split BatchNorm (BN statistics per group of b/S rows, the
official MoCo CIFAR demo's SplitBatchNorm), as cl_jax emulates per-device BN. Methods: simclr, moco_v2, byol,
simsiam, dino, swav (METHODS).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peer_torch_views import Views, eval_inputs

from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss, SwaVLoss
from lightly.models.modules import heads
from lightly.models.utils import batch_shuffle, batch_unshuffle, deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule

# ----------------------------------------------------------------------------- backbone


class SplitBatchNorm(nn.BatchNorm2d):
  """BatchNorm2d whose training statistics are taken per group of b/S rows (S = num_splits)."""

  def __init__(self, channels: int, num_splits: int, **kw):
    super().__init__(channels, **kw)
    self.num_splits = num_splits

  def forward(self, x):
    s = self.num_splits
    if not self.training or s == 1:
      return super().forward(x)
    n, c, h, w = x.shape
    mean_split = self.running_mean.repeat(s)
    var_split = self.running_var.repeat(s)
    out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_split, var_split, self.weight.repeat(s),
                       self.bias.repeat(s), True, self.momentum, self.eps).reshape(n, c, h, w)
    self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
    self.running_var.copy_(var_split.view(s, c).mean(dim=0))
    return out


class BasicBlock(nn.Module):
  def __init__(self, cin: int, cout: int, stride: int, norm, zero_init_last_bn: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = norm(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = norm(cout)
    if zero_init_last_bn:
      nn.init.zeros_(self.bn2.weight)
    self.proj = None
    if cin != cout or stride != 1:
      self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


ARCHS = {"resnet_tiny": dict(stage_sizes=(1, 1, 1, 1), base_width=16),
         "resnet18": dict(stage_sizes=(2, 2, 2, 2), base_width=64)}


class ResNet(nn.Module):
  """cl_jax's ResNet (basic blocks) in PyTorch: input [b, 3, h, w] normalised, output [b, feature_dim]."""

  def __init__(self, model: dict, bn_splits: int = 1):
    super().__init__()
    if model["name"] not in ARCHS:
      raise SystemExit(f"error: the reference side builds {', '.join(ARCHS)}, not {model['name']}")
    arch = ARCHS[model["name"]]
    norm = (lambda c: SplitBatchNorm(c, bn_splits, momentum=0.1, eps=1e-5)) if bn_splits > 1 else (
        lambda c: nn.BatchNorm2d(c, momentum=0.1, eps=1e-5))
    widths = [max(1, int(round(arch["base_width"] * float(model["width"]) * 2**i)))
              for i in range(len(arch["stage_sizes"]))]
    stem = model["stem"]
    if stem == "imagenet":
      self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), norm(widths[0]), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
    elif stem == "small":
      self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), norm(widths[0]), nn.ReLU())
    else:
      self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), norm(widths[0]), nn.ReLU())
    blocks, cin = [], widths[0]
    for i, n in enumerate(arch["stage_sizes"]):
      for j in range(n):
        blocks.append(BasicBlock(cin, widths[i], 2 if (i > 0 and j == 0) else 1, norm,
                                 bool(model["zero_init_last_bn"])))
        cin = widths[i]
    self.blocks = nn.Sequential(*blocks)
    self.feature_dim = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if model["zero_init_last_bn"]:
      for b in blocks:
        nn.init.zeros_(b.bn2.weight)

  def forward(self, x):
    return self.blocks(self.stem(x)).mean(dim=(2, 3))


# ----------------------------------------------------------------------------- methods


def crop_roles(r: dict, name: str) -> list:
  """Each crop group's role ('global' or 'local'), as cl_jax's methods.common.crop_roles asks for."""
  roles = [g["role"] for g in r["augment"]]
  if "global" not in roles or not all(roles):
    raise SystemExit(f"error: {name} needs every crop group to declare its role and one with role='global'")
  return roles


def global_first(roles: list) -> list:
  """Crop group indices, global groups first, each kind in recipe order (cl_jax's crop_order)."""
  return [i for i, x in enumerate(roles) if x == "global"] + [i for i, x in enumerate(roles) if x != "global"]


class Method(nn.Module):
  """loss(groups, step) on a batch of view groups; after_step(step) after the optimizer; eval_backbone."""

  def after_step(self, step: int) -> None:
    pass

  def eval_backbone(self) -> nn.Module:
    return self.backbone


class SimCLR(Method):
  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    self.backbone = ResNet(model)
    v2 = int(m["version"]) == 2
    self.head = heads.SimCLRProjectionHead(self.backbone.feature_dim, m["proj_hidden"], m["proj_dim"],
                                           num_layers=3 if v2 else 2, batch_norm=v2)
    self.criterion = NTXentLoss(temperature=m["temperature"])

  def loss(self, groups, step):
    x = groups[0]                                        # [b, 2, 3, s, s]: both views in one BN batch
    b = x.shape[0]
    z = self.head(self.backbone(torch.cat([x[:, 0], x[:, 1]])))
    return self.criterion(z[:b], z[b:])


class MoCo(Method):
  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    splits = int(m["bn_splits"])
    self.backbone = ResNet(model, bn_splits=splits)
    self.head = heads.MoCoProjectionHead(self.backbone.feature_dim, m["proj_hidden"], m["proj_dim"])
    self.backbone_k, self.head_k = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
    deactivate_requires_grad(self.backbone_k)
    deactivate_requires_grad(self.head_k)
    self.shuffle = bool(m["shuffle_bn"])
    self.momentum = float(m["momentum"])
    self.criterion = NTXentLoss(temperature=m["temperature"], memory_bank_size=(int(m["queue_size"]),
                                                                                int(m["proj_dim"])))

  def loss(self, groups, step):
    x = groups[0]
    q = self.head(self.backbone(x[:, 0]))
    with torch.no_grad():
      xk = x[:, 1]
      if self.shuffle:
        xk, idx = batch_shuffle(xk)
      k = self.head_k(self.backbone_k(xk))
      if self.shuffle:
        k = batch_unshuffle(k, idx)
    return self.criterion(q, k)

  def after_step(self, step):
    update_momentum(self.backbone, self.backbone_k, self.momentum)
    update_momentum(self.head, self.head_k, self.momentum)


class BYOL(Method):
  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    self.backbone = ResNet(model)
    self.head = heads.BYOLProjectionHead(self.backbone.feature_dim, m["proj_hidden"], m["proj_dim"])
    self.predictor = heads.BYOLPredictionHead(m["proj_dim"], m["pred_hidden"], m["proj_dim"])
    self.backbone_t, self.head_t = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
    deactivate_requires_grad(self.backbone_t)
    deactivate_requires_grad(self.head_t)
    self.base_momentum, self.total_steps = float(m["base_momentum"]), int(r["total_steps"])
    self.criterion = NegativeCosineSimilarity()

  def loss(self, groups, step):
    x = groups[0]
    p = [self.predictor(self.head(self.backbone(x[:, v]))) for v in (0, 1)]   # one BN batch per view
    with torch.no_grad():
      t = [self.head_t(self.backbone_t(x[:, v])) for v in (0, 1)]
    # 2 - 2 cos per pair, summed over both pairs (BYOL Eq. 2 symmetrised), as cl_jax's byol_regression.
    return 4.0 + 2.0 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))

  def after_step(self, step):
    tau = cosine_schedule(step, self.total_steps, self.base_momentum, 1.0)
    update_momentum(self.backbone, self.backbone_t, tau)
    update_momentum(self.head, self.head_t, tau)


class SimSiam(Method):
  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    self.backbone = ResNet(model)
    d, hid, layers = int(m["proj_dim"]), int(m["proj_hidden"]), int(m["proj_layers"])
    blocks, cin = [], self.backbone.feature_dim
    for _ in range(layers - 1):
      blocks.append((cin, hid, nn.BatchNorm1d(hid), nn.ReLU()))
      cin = hid
    blocks.append((cin, d, nn.BatchNorm1d(d, affine=False), None))
    self.head = heads.ProjectionHead(blocks)
    self.predictor = heads.SimSiamPredictionHead(d, m["pred_hidden"], d)
    self.criterion = NegativeCosineSimilarity()

  def loss(self, groups, step):
    x = groups[0]
    z = [self.head(self.backbone(x[:, v])) for v in (0, 1)]
    p = [self.predictor(zi) for zi in z]
    return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))


class DINO(Method):
  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    if int(m["num_layers"]) != 3:
      raise SystemExit("error: lightly's DINOProjectionHead has 3 layers; the recipe asks for "
                       f"{m['num_layers']}")
    self.backbone = ResNet(model)
    def head():
      return heads.DINOProjectionHead(self.backbone.feature_dim, m["hidden_dim"], m["bottleneck_dim"], m["out_dim"],
                                      batch_norm=bool(m["use_bn_in_head"]), norm_last_layer=bool(m["norm_last_layer"]))
    self.head = head()
    # The teacher starts as a copy of the student; a weight-normed module cannot be deep-copied, so load its state.
    self.backbone_t, self.head_t = copy.deepcopy(self.backbone), head()
    self.head_t.load_state_dict(self.head.state_dict())
    deactivate_requires_grad(self.backbone_t)
    deactivate_requires_grad(self.head_t)
    self.roles = crop_roles(r, "DINO")
    self.m, self.total_steps, self.steps_per_epoch = m, int(r["total_steps"]), int(r["steps_per_epoch"])
    self.criterion = DINOLoss(m["out_dim"], warmup_teacher_temp=m["warmup_teacher_temp"],
                              teacher_temp=m["teacher_temp"],
                              warmup_teacher_temp_epochs=max(int(m["warmup_teacher_temp_epochs"]), 1),
                              student_temp=m["student_temp"], center_momentum=m["center_momentum"])

  def eval_backbone(self):
    return self.backbone_t if self.m["encode_with"] == "teacher" else self.backbone

  def teacher_temp(self, step):
    """Linear warm-up per epoch from warmup_teacher_temp to teacher_temp (DINO's schedule), then constant."""
    w, epoch = int(self.m["warmup_teacher_temp_epochs"]), step // self.steps_per_epoch
    if epoch >= w:
      return float(self.m["teacher_temp"])
    lo, hi = float(self.m["warmup_teacher_temp"]), float(self.m["teacher_temp"])
    return lo + (hi - lo) * epoch / max(w - 1, 1)

  def loss(self, groups, step):
    # Global crops first (the student's view t for teacher view t is skipped by DINOLoss's diagonal).
    student, teacher = [], []
    for i in global_first(self.roles):
      x = groups[i]
      v = x.shape[1]
      flat = torch.cat([x[:, j] for j in range(v)])    # the backbone runs once per group (multi-crop)
      student.extend(self.head(self.backbone(flat)).chunk(v))
      if self.roles[i] == "global":
        with torch.no_grad():
          teacher.extend(self.head_t(self.backbone_t(flat)).chunk(v))
    return self.criterion(teacher, student, teacher_temp=self.teacher_temp(step))

  def after_step(self, step):
    tau = cosine_schedule(step, self.total_steps, float(self.m["momentum"]), 1.0)
    update_momentum(self.backbone, self.backbone_t, tau)
    update_momentum(self.head, self.head_t, tau)


class SwAV(Method):
  """SwaVProjectionHead, L2 normalisation, SwaVPrototypes without bias (as the official and cl_jax's heads;
  lightly's Linear has one), SwaVLoss (Sinkhorn codes of each global crop, swapped prediction), no queue. The
  prototypes are kept at unit norm (normalised at init and after every update, as cl_jax's project_params) and
  frozen for optim.frozen_steps by the generic optim.frozen path (their parameter names contain 'prototypes')."""

  def __init__(self, m: dict, model: dict, r: dict):
    super().__init__()
    if int(m["queue_length"]):
      raise SystemExit(f"error: the reference side's SwAV has no queue; the recipe asks for {m['queue_length']} rows")
    self.backbone = ResNet(model)
    self.head = heads.SwaVProjectionHead(self.backbone.feature_dim, m["proj_hidden"], m["proj_dim"])
    self.prototypes = heads.SwaVPrototypes(m["proj_dim"], int(m["num_prototypes"]))
    for layer in self.prototypes.heads:
      layer.bias = None
    self.normalize_prototypes()
    self.roles = crop_roles(r, "SwAV")
    self.criterion = SwaVLoss(temperature=m["temperature"], sinkhorn_iterations=int(m["sinkhorn_iters"]),
                              sinkhorn_epsilon=m["epsilon"])

  @torch.no_grad()
  def normalize_prototypes(self):
    self.prototypes.normalize()

  def scores(self, groups) -> tuple:
    """(global crops' prototype scores, local crops'), one [b, K] per crop: the backbone once per group, the head
    (whose BN sees every crop) once on all of them, as cl_jax's MultiCropEncoder."""
    order = global_first(self.roles)
    counts = [groups[i].shape[1] for i in order]
    feats = torch.cat([self.backbone(torch.cat([groups[i][:, j] for j in range(v)])) for i, v in zip(order, counts)])
    z = F.normalize(self.head(feats), dim=1)
    per_crop = self.prototypes(z).chunk(sum(counts))
    num_global = sum(v for i, v in zip(order, counts) if self.roles[i] == "global")
    return list(per_crop[:num_global]), list(per_crop[num_global:])

  def loss(self, groups, step):
    high, low = self.scores(groups)
    return self.criterion(high, low)

  def after_step(self, step):
    self.normalize_prototypes()


METHODS = {"simclr": SimCLR, "moco_v2": MoCo, "byol": BYOL, "simsiam": SimSiam, "dino": DINO, "swav": SwAV}


# ----------------------------------------------------------------------------- optimizer (cl_jax/optim.py)


def lr_at(step: int, o: dict, total: int, steps_per_epoch: int, batch: int) -> float:
  peak = float(o["lr"]) * {"none": 1.0, "linear": batch / o["base_batch"],
                           "sqrt": math.sqrt(batch / o["base_batch"])}[o["lr_scaling"]]
  warm = int(o["warmup_steps"]) or round(float(o["warmup_epochs"]) * steps_per_epoch)
  if step < warm:
    return peak * step / max(warm, 1)
  if o["schedule"] == "constant":
    return peak
  if o["schedule"] != "cosine":
    raise SystemExit(f"error: the reference side has warm-up + cosine or constant, not {o['schedule']}")
  t = min(max((step - warm) / max(total - warm, 1), 0.0), 1.0)
  return o["end_lr"] + (peak - o["end_lr"]) * 0.5 * (1.0 + math.cos(math.pi * t))


def wd_at(step: int, o: dict, total: int) -> float:
  if o["weight_decay_schedule"] is None:
    return float(o["weight_decay"])
  start, end = (float(v) for v in o["weight_decay_schedule"])
  t = min(max(step / max(total, 1), 0.0), 1.0)
  return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, o: dict) -> list:
  """AdamW groups by (weight decay: ndim > 1 when exclude_bias_and_norm, constant lr: name matches)."""
  constant = tuple(o["constant_lr"] or ())
  groups: dict = {}
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    decay = p.ndim > 1 or not o["exclude_bias_and_norm"]
    const = any(s in name for s in constant)
    groups.setdefault((decay, const), []).append(p)
  return [{"params": ps, "decay": d, "constant": c} for (d, c), ps in groups.items()]


# ----------------------------------------------------------------------------- training


def save_features(method: Method, data: dict, e: dict, mean, std, path: str) -> None:
  backbone = method.eval_backbone()
  was = backbone.training
  backbone.eval()
  out = {}
  with torch.no_grad():
    for split in ("train", "test"):
      x = eval_inputs(data[f"{split}_image"], e, mean, std)
      out[split] = torch.cat([backbone(x[i:i + e["batch_size"]]) for i in range(0, len(x), e["batch_size"])]
                             ).numpy().astype(np.float32)
  backbone.train(was)
  np.savez(path + ".tmp.npz", **out)
  os.replace(path + ".tmp.npz", path)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--recipe", required=True)
  ap.add_argument("--data", required=True)
  ap.add_argument("--out", required=True)
  ap.add_argument("--threads", type=int, default=2)
  ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes for the augmentations")
  ap.add_argument("--digest", default="")
  a = ap.parse_args()
  torch.set_num_threads(a.threads)
  with open(a.recipe) as f:
    r = json.load(f)
  with np.load(a.data) as f:
    data = {k: f[k] for k in f.files}
  os.makedirs(a.out, exist_ok=True)
  m, o, e = r["method"], r["optim"], r["eval"]
  mean, std = r["normalize"]["mean"], r["normalize"]["std"]
  if m["name"] not in METHODS:
    raise SystemExit(f"error: no reference for method {m['name']}; have {', '.join(METHODS)}")
  if o["name"] not in ("adamw", "sgd") or int(o["grad_accum_steps"]) != 1:
    raise SystemExit(f"error: the reference side has AdamW or SGD without accumulation, not {o['name']}")
  torch.manual_seed(int(r["seed"]))
  method = METHODS[m["name"]](m, r["model"], r)
  method.train()
  groups = param_groups(method, o)
  if o["name"] == "adamw":
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=0.0, betas=(o["b1"], o["b2"]),
                            eps=o["eps"], weight_decay=0.0)
  else:   # optax chain(add_decayed_weights, sgd(momentum)): coupled L2, buf = m buf + g, p -= lr buf
    opt = torch.optim.SGD([{"params": g["params"]} for g in groups], lr=0.0, momentum=float(o["momentum"]),
                          nesterov=bool(o["nesterov"]), weight_decay=0.0)
  frozen = tuple(o["frozen"] or ())
  frozen_params = [p for n, p in method.named_parameters() if p.requires_grad and any(s in n for s in frozen)]
  total, spe, batch = int(r["total_steps"]), int(r["steps_per_epoch"]), int(r["batch_size"])
  g = torch.Generator().manual_seed(int(r["seed"]))
  views_ds = Views(data["train_image"], r["augment"], mean, std)
  loader = torch.utils.data.DataLoader(
      views_ds, batch_size=batch, drop_last=True,
      sampler=torch.utils.data.RandomSampler(range(len(data["train_image"])), generator=g),
      num_workers=a.workers, persistent_workers=a.workers > 0, collate_fn=views_ds.collate)
  eval_steps = set(e["steps"])
  log = open(os.path.join(a.out, "log.jsonl"), "w")
  print(f"reference: {m['name']} (torch {torch.__version__}, {a.threads} threads) | batch {batch} | "
        f"{total} steps | backbone {sum(p.numel() for p in method.backbone.parameters())} params", flush=True)
  step, start = 0, time.time()
  eval_seconds = 0.0
  if 0 in eval_steps:
    t0 = time.time()
    save_features(method, data, e, mean, std, os.path.join(a.out, "features_0.npz"))
    eval_seconds += time.time() - t0
  while step < total:
    for views in loader:
      lr, wd = lr_at(step, o, total, spe, batch), wd_at(step, o, total)
      peak = lr_at(10**9, {**o, "schedule": "constant"}, total, spe, batch)
      for group, spec in zip(opt.param_groups, groups):
        group["lr"] = peak if spec["constant"] else lr
        group["weight_decay"] = wd if spec["decay"] else 0.0
      loss = method.loss(views, step)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      if float(o["clip_norm"]) > 0:
        ps = [p for p in method.parameters() if p.grad is not None]
        if o["clip_mode"] == "global":
          torch.nn.utils.clip_grad_norm_(ps, float(o["clip_norm"]))
        else:
          for p in ps:
            torch.nn.utils.clip_grad_norm_([p], float(o["clip_norm"]))
      if frozen and (not o["frozen_steps"] or step < int(o["frozen_steps"])):
        for p in frozen_params:
          p.grad = None
      opt.step()
      method.after_step(step)
      step += 1
      if step % int(r["log_every"]) == 0 or step == total:
        elapsed = time.time() - start - eval_seconds
        rec = {"step": step, "loss": float(loss), "lr": lr, "seconds": elapsed}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(f"reference step {step:>5}/{total}: loss {float(loss):.4f}, lr {lr:.2e}, "
              f"{step * batch / max(elapsed, 1e-9):.0f} img/s", flush=True)
      if step in eval_steps:
        t0 = time.time()
        save_features(method, data, e, mean, std, os.path.join(a.out, f"features_{step}.npz"))
        eval_seconds += time.time() - t0
      if step >= total:
        break
  train_seconds = time.time() - start - eval_seconds
  with open(os.path.join(a.out, "done.json"), "w") as f:
    json.dump({"recipe_digest": a.digest, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
               "torch": torch.__version__}, f)
  print(f"reference: trained in {train_seconds:.0f} s (+{eval_seconds:.0f} s features)", flush=True)


if __name__ == "__main__":
  main()
