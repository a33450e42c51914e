"""Data tools: synthetic datasets in the real layouts, and the check of a real dataset before a long run."""
