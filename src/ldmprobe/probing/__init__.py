"""Probing: the dataset manifest and its splits (``dataset``), the linear probes (``probes``)
and one (source, layer, step) cell's training and metrics (``cell``)."""
