"""The communication audit pins each method's collectives on 8 devices: SimCLR and CLIP gather only their embeddings
(once each way) and all-reduce the gradients once (about the parameters' bytes); MoCo v2 adds shuffle BN's image
gather and the queue keys. A gather of the whole image batch in SimCLR, or a second gradient all-reduce, fails."""
import collections

import pytest

from cl_jax import comm_audit
from tests.harness import tiny_method_config

HLO = """
  %ag = f32[16,64]{1,0} all-gather(%x), channel_id=1, dimensions={0}, metadata={op_name="jit(f)/shard_map/jvp()/all_gather"}
  %ar = (f32[7,7,3,16]{3,2,1,0}, /*index=1*/bf16[256]{0}) all-reduce(%a, %b), metadata={op_name="jit(f)/shard_map/(transpose(jvp(Encoder))/backbone/stem_conv/psum_invariant:x)"}
  %cp = f32[4,8]{1,0} collective-permute-start(%y), source_target_pairs={{0,1}}
  %bn = f32[32]{0} all-reduce(%z), metadata={op_name="jit(f)/shard_map/jvp(Encoder)/backbone/stem_bn/psum_invariant"}
"""


def test_parser_reads_kinds_tuples_bytes_and_purposes():
  ops = comm_audit.collectives(HLO)
  assert [(o["kind"], o["bytes"], o["purpose"]) for o in ops] == [
      ("all-gather", 16 * 64 * 4, "gather"), ("all-reduce", 7 * 7 * 3 * 16 * 4 + 256 * 2, "gradients"),
      ("collective-permute", 4 * 8 * 4, "rotation"), ("all-reduce", 32 * 4, "batch-norm stats")]


def _audit(method, **overrides):
  c = tiny_method_config(method, **overrides)
  result = comm_audit.audit(c)
  counts = collections.Counter()
  sizes = collections.Counter()
  for r in result["table"]:
    counts[(r["kind"], r["purpose"])] += r["count"]
    sizes[(r["kind"], r["purpose"])] += r["bytes"]
  return c, result, counts, sizes


@pytest.mark.parametrize("method,embed", [("simclr", "proj_dim"), ("clip", "embed_dim")])
def test_contrastive_steps_gather_only_their_embeddings(method, embed):
  c, result, counts, sizes = _audit(method)
  assert result["facts"]["devices"] == 8
  kinds = {k for k, _ in counts}
  assert kinds <= {"all-gather", "all-reduce", "reduce-scatter"}          # no all-to-all, no rotation
  assert counts[("all-gather", "gather")] == 2 and counts[("reduce-scatter", "gather^T")] == 2
  assert sizes[("all-gather", "gather")] == 2 * c.batch_size * int(c.method[embed]) * 4   # embeddings, not images
  grads = sizes[("all-reduce", "gradients")]
  assert 0.95 * result["facts"]["param_bytes"] <= grads <= 1.05 * result["facts"]["param_bytes"]
  assert not [p for _, p in counts if p not in ("gather", "gather^T", "gradients", "batch-norm stats",
                                                "batch-norm stats (backward)", "metrics / state")]


def test_moco_v2_gathers_images_for_shuffle_bn_and_keys_for_the_queue():
  c, result, counts, sizes = _audit("moco_v2", batch_size=64)   # 8 per device: bn_splits 8 divides it
  image = c.batch_size * c.augment["global"].size ** 2 * 3 * 4
  assert counts[("all-gather", "gather")] == 5
  assert image <= sizes[("all-gather", "gather")] <= image + 4 * c.batch_size * int(c.method.proj_dim) * 4
  grads = sizes[("all-reduce", "gradients")]
  assert 0.95 * result["facts"]["param_bytes"] <= grads <= 1.05 * result["facts"]["param_bytes"]
