"""What every stage shares, importing nothing else of the package: the config and its schema,
the prompt table, the tasks and their metrics, image batches, atomic file writing and the
version provenance every output records, and the torchvision guard."""
