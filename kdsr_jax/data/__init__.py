"""kdsr_jax.data."""
