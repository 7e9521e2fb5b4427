"""Reporting: the metric tables (``aggregate``), the emergence step of each layer and the
labelers' own scores (``emergence``) and the figures (``figures``)."""
