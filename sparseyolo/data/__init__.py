"""Datasets and sample data. Real data comes from files shipped inside registry packages (no hub access)."""
