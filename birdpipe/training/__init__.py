"""Training one fold: the loop, its samples, augmentations and losses."""
