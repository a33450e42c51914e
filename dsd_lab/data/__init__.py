"""Data tools: synthetic datasets in the real layouts."""
