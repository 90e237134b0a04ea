"""jaxflows.nn."""
