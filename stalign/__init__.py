"""stalign: semantically aligned speech-text embeddings in JAX/Flax."""
