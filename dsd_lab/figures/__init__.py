"""Paper-style figures: the segmentation comparison (Fig. 2) and training curves (``figures`` extra)."""
