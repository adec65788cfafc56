"""Tools the models may call (provider-agnostic): the registry and the tools themselves."""
