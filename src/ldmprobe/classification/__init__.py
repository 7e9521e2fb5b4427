"""The classification experiment: the class prompts (``prompts``), classifier runs on every
preview (``jobs``), their tables (``stats``) and figures (``figures``)."""
