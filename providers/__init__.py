"""Model providers behind one contract (providers.base) and the registry of models."""
