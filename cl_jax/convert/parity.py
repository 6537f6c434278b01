"""Measures a CLIP conversion end to end: open_clip's model with random weights -> the command -> cl_jax CLIP
workdir; the same images and tokens through both; then --to=torch and a bitwise comparison. The README's model-zoo
figures come from it:

  python -m cl_jax.convert.parity --arch=ViT-B-32        # also ViT-B-16-quickgelu, ViT-L-14, RN50

Needs torch and open_clip (the test extra); nothing is downloaded (pretrained=None)."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import numpy as np
from absl import app, flags


def randomise(model: Any, std: float = 0.02, seed: int = 0) -> Any:
  """Every parameter of a torch module drawn from N(0, std^2) (a fixed generator); the module in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * std)
  return model.eval()


def measure(ref: Any, arch: str, quick_gelu: bool, image_size: int, workdir: str) -> dict[str, Any]:
  """{'image', 'text', 'logits': max relative errors of the normalised embeddings and of the zero-shot logits,
  'tokens_equal', 'round_trip_bitwise', 'convert_s'} of open_clip model `ref` converted as open_clip:`arch`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import open_clip  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  from cl_jax.convert import __main__ as cli  # pylint: disable=g-import-not-at-top
  path, out, back = (os.path.join(workdir, n) for n in ("clip.pth", "wd", "back.safetensors"))
  torch.save(ref.state_dict(), path)
  merges = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
  start = time.perf_counter()
  cli.run(f"open_clip:{arch}", path, out, merges=merges, quick_gelu=quick_gelu,
          data={"num_train": 512, "num_test": 256})
  seconds = time.perf_counter() - start
  run, state, _, _ = train.load_run(out)
  prompts = ["a photo of a dog.", "a photo of a red star.", "an image of a small striped circle."]
  tokens = np.asarray(run.method.tokenizer.encode(prompts))
  x = np.random.RandomState(0).randn(2, 3, image_size, image_size).astype(np.float32)
  with torch.no_grad():
    img = torch.nn.functional.normalize(ref.encode_image(torch.from_numpy(x)), dim=-1).numpy()
    txt = torch.nn.functional.normalize(ref.encode_text(torch.from_numpy(tokens)), dim=-1).numpy()
  z_img = np.asarray(run.method.encode_image_embedding(state["params"], state["method_state"],
                                                      jnp.asarray(x.transpose(0, 2, 3, 1))))
  z_txt = np.asarray(run.method.encode_text(state["params"], state["method_state"], jnp.asarray(tokens, jnp.int32)))
  scale = float(np.exp(np.asarray(state["params"]["logit_scale"])))
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  cli.run("", "", back, to="torch", workdir=out)
  got, want = load_file(back), {k: v.numpy() for k, v in ref.state_dict().items()
                                if not k.endswith("num_batches_tracked")}
  bitwise = set(got) == set(want) and all(got[k].shape == want[k].shape and np.array_equal(got[k], want[k])
                                          for k in got)
  return {"image": rel(z_img, img), "text": rel(z_txt, txt), "logits": rel(scale * z_img @ z_txt.T,
                                                                          scale * img @ txt.T),
          "tokens_equal": bool(np.array_equal(tokens, open_clip.get_tokenizer("RN50")(prompts).numpy())),
          "round_trip_bitwise": bitwise, "convert_s": seconds}


def main(argv: list[str]) -> None:
  del argv
  import open_clip  # pylint: disable=g-import-not-at-top
  arch = flags.FLAGS.arch
  ref = randomise(open_clip.create_model(arch, pretrained=None))
  size = ref.visual.image_size[0] if isinstance(ref.visual.image_size, tuple) else ref.visual.image_size
  r = measure(ref, arch, "quickgelu" in arch, int(size), tempfile.mkdtemp(prefix="cl_jax_parity_"))
  print(f"{arch} at {size} px: image {r['image']:.1e}, text {r['text']:.1e}, zero-shot logits {r['logits']:.1e} "
        f"(max relative); tokens equal: {r['tokens_equal']}; back to open_clip bitwise: {r['round_trip_bitwise']}; "
        f"convert {r['convert_s']:.0f} s")


if __name__ == "__main__":
  flags.DEFINE_string("arch", "ViT-B-32", "an open_clip model name (open_clip.list_models())")
  app.run(main)
