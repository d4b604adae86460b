"""kdsr_jax.convert."""
