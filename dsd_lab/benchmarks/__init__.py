"""What DSD costs, measured: training-step time and memory, data loading, head parameters."""
