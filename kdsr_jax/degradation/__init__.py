"""kdsr_jax.degradation."""
