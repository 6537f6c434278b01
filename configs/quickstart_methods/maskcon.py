"""MaskCon on the embedded shapes with coarse labels (Feng & Patras 2023): 10 shapes -> 3 groups (round, angular,
other; data.coarse_labels='shapes'), scored on the 10 fine shapes it never sees.

MoCo v2's quick-start queue and key momentum (4096 keys for 10k images, m = 0.99) with the official loss
settings: T1 = 0.1, T2 = 0.05, w = 0.5; the official head Linear-ReLU-Linear (512 hidden) to 128-d; BN over the
whole batch (model.bn='sync', as the official single-GPU run); 25 epochs (975 steps), as MoCo v2's quick start.
Measured on the shared 2-core machine (load 5-20, so wall times are mostly waiting; ~3 min of user CPU each),
975 steps, fine labels of the test split: kNN top-1 18.10 -> 32.65 / 31.10 (two runs), Recall@1 16.35 -> 25.55 /
25.30 (R@2 40.4, R@5 63.8, R@10 81.5), 8m47 wall. Same budget (975 steps): MoCo v2's quick start R@1 23.55 (kNN
29.85); SupCon on the coarse labels (method=supcon, data.coarse_labels=shapes, num_epochs=25) R@1 82.50 (kNN 74.35).
On these shapes the nuisances (colour, size, position) dominate instance discrimination, and coarse supervision
alone removes them; MaskCon keeps MoCo's instance term and its soft targets are half right: at T2 = 0.05 49% of
their mass lands on the query's fine class (chance 30%). Variants (R@1 / kNN): w = 1.0: 16.20 / 16.75 (no learning:
from scratch the near-collapsed keys give a flat target over the whole coarse class); w = 0.8, T2 = 0.1 (the
official SOP setting): 24.65 / 29.65; queue 1024: 26.10 / 32.60; weak key (crop + flip) / strong query views as the
official: 26.70 / 33.25.
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="maskcon", temperature=0.1, soft_temperature=0.05, w=0.5, momentum=0.99, queue_size=4096,
                  proj_dim=128, proj_hidden=512)
  c.data.coarse_labels = "shapes"
  c.num_epochs = 25
  c.eval.monitors = ("knn", "fine_recall")   # eval/recall_at_{1,2,5,10} on the test split's fine labels
