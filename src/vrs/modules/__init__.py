"""Lightning modules: the noise-augmented base classifier (and, later, the noise-level selector)."""
