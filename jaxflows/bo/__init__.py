"""jaxflows.bo."""
