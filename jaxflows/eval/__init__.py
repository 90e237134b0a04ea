"""jaxflows.eval."""
