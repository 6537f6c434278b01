"""Eight fake CPU devices for every test, set before JAX is imported, and a persistent XLA compilation cache
shared with the training processes the tests start (the same programs compile once per test worker)."""
import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One directory per pytest-xdist worker (a half-written entry is only ever a warning and a recompile).
os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
    prefix=f"cl_jax_test_xla_cache_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_")
atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
