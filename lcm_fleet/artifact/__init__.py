"""Model artifacts: the typed manifest, decoder kinds and precisions, the registry's reads."""
