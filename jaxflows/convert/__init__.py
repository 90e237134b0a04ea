"""jaxflows.convert."""
