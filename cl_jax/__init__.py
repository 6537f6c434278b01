"""cl_jax: contrastive, self-supervised and language-image representation learning in JAX."""

__version__ = "0.1.0"
