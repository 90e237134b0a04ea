"""jaxflows.chem."""
