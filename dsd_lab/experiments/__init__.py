"""Studies of a bundle: train-and-evaluate runs in their own folders, cross-validation, ablation, reports, tables."""
