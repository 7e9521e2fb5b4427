"""Generation: one job's images, previews, latents and activations (``generate``), the
activation store (``storage``), what each source stores and how it is read (``sources``,
``reads``) and the DDIM-inverted start of a known-answer world image (``inversion``)."""
