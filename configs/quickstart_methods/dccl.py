"""DCCL on the embedded shapes as a category-discovery task (Pu, Zhong & Sebe 2023): shapes 0-4 are old classes with
half their examples labelled (data.discovery='old=0-4,labelled=0.5'), shapes 5-9 are new and every other example
is unlabelled; scored by the discovery monitor (semi-supervised k-means with K = 10 on the training split's
backbone features, Hungarian matching, accuracy on the unlabelled examples: eval/cluster_acc_all/old/new).

The official loss settings (InfoNCE at 1.0, SupCon at 0.07 with weight 0.35, concept temperature 0.05, memory
momentum 0.1, Infomap k 15 at similarity 0.6, clusters of <= 4 outliers, concept weight 0.04 -> 0.4 over the
first half of the run, as the official 100 of 200 epochs); a DINO head at the tiny backbone's scale
(128 -> 512 -> 512 -> 128 -> 1024). The GCD baseline is the same run with --config.method.concept_weight=0.
Measured figures: README / cl_jax/methods/dccl.py. As the paper starts from a self-supervised backbone: train the
SimCLR quick start with --config.data.render=mask, then this with --config.data.render=mask
--config.init_from=<that workdir>; there DCCL's New-class accuracy beats GCD's (README).
"""
import ml_collections


def apply(c: ml_collections.ConfigDict) -> None:
  c.method = dict(name="dccl", sup_weight=0.35, temperature=1.0, supcon_temperature=0.07,
                  supcon_base_temperature=0.07, head_hidden=512, head_bottleneck=128, head_out=1024, head_layers=3,
                  concept_weight=0.4, concept_ramp_from=0.1, concept_ramp_epochs=8, concept_temperature=0.05,
                  memory_momentum=0.1, knn_k=15, min_sim=0.6, min_size=4, max_sim=True, markov_time=1.0,
                  clustering="auto",
                  max_concepts=128)
  c.data.discovery = "old=0-4,labelled=0.5"
  c.eval.monitors = ("knn", "discovery")
