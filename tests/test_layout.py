"""The layout contracts of ARCHITECTURE.md, read from the source: a method file imports no other method file
(only the shared helpers under cl_jax/methods/), and nothing under cl_jax/eval/ imports the training loop."""
import ast
import importlib
import pathlib
import pkgutil

import pytest

from cl_jax import methods
from cl_jax.methods import METHODS

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS_DIR = ROOT / "cl_jax" / "methods"
# The modules under cl_jax/methods/ that a method file may import; a new shared helper is added here by name.
SHARED = {
    "__init__", "base", "common", "memory_bank",
    "language_image",   # the two-tower helpers of clip, siglip and unicl
    "shuffle_bn",       # MoCo's Shuffle BN (He et al. 2020, Sec. 3.3): a helper, not a method
}


def method_files() -> dict[str, pathlib.Path]:
  """module name -> file of every module under cl_jax/methods/ that defines a registered Method subclass."""
  for info in pkgutil.iter_modules(methods.__path__):
    importlib.import_module(f"cl_jax.methods.{info.name}")
  modules = {METHODS.get(n).__module__ for n in METHODS.names()}
  return {m.rsplit(".", 1)[1]: METHODS_DIR / f"{m.rsplit('.', 1)[1]}.py" for m in modules
          if m.startswith("cl_jax.methods.")}


def imports(source: str, package: str) -> list[tuple[int, str]]:
  """(line, dotted name) of every import in `source`, at any depth (inside functions too), relative ones resolved
  against `package`; `from a import b` yields both a and a.b (b may be a module), and import_module("x") yields x."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
      found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      found.append((node.lineno, node.args[0].value))
  return found


def test_the_import_reader_sees_nested_relative_and_dynamic_imports():
  source = ("def f():\n  from cl_jax import train\n"
            "def g():\n  from .clip import CLIP\n  import importlib; importlib.import_module('cl_jax.methods.byol')\n"
            "from .. import train as t\n")
  found = {name for _, name in imports(source, "cl_jax.methods")}
  assert {"cl_jax.train", "cl_jax.methods.clip", "cl_jax.methods.byol"} <= found


def test_method_files_import_no_other_method_file():
  files = method_files()
  assert {"simclr", "moco", "clip"} <= set(files), f"registry found only these method files: {sorted(files)}"
  bad = []
  for name, path in sorted(files.items()):
    for line, dotted in sorted(set(imports(path.read_text(), "cl_jax.methods"))):
      parts = dotted.split(".")
      if parts[:2] != ["cl_jax", "methods"] or len(parts) < 3 or parts[2] in SHARED | {name}:
        continue
      target = parts[2]
      if target in files:
        bad.append(f"cl_jax/methods/{name}.py:{line} imports cl_jax.methods.{target}, another method file")
      elif (METHODS_DIR / f"{target}.py").exists() or (METHODS_DIR / target).is_dir():
        bad.append(f"cl_jax/methods/{name}.py:{line} imports cl_jax.methods.{target}, not a declared shared helper "
                   "(add it to SHARED in tests/test_layout.py if it is one)")
  if bad:
    pytest.fail(f"A method file may import only the shared helpers under cl_jax/methods/ ({', '.join(sorted(SHARED))}):"
                "\n  " + "\n  ".join(dict.fromkeys(bad)), pytrace=False)


def test_eval_never_imports_the_training_loop():
  bad = []
  for path in sorted((ROOT / "cl_jax" / "eval").rglob("*.py")):
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for line, dotted in sorted(set(imports(path.read_text(), package))):
      if dotted == "cl_jax.train" or dotted.startswith("cl_jax.train."):
        bad.append(f"{path.relative_to(ROOT)}:{line} imports cl_jax.train")
  if bad:
    pytest.fail("cl_jax/eval/ must not import the training loop:\n  " + "\n  ".join(dict.fromkeys(bad)), pytrace=False)
