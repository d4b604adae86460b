"""kdsr_jax.train."""
