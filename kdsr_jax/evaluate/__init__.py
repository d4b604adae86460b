"""kdsr_jax.evaluate."""
