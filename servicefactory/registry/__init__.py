"""Where services are found: the registry interface and its backends."""
