"""kdsr_jax.models."""
