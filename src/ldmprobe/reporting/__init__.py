"""Reporting: the metric tables (``aggregate``), the best score each token grid allows
(``ceiling``), the emergence step of each layer and the labelers' own scores (``emergence``)
and the figures (``figures``)."""
