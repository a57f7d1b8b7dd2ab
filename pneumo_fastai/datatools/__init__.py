"""Tools around the dataset, at the edge of the road: download, check, prepare, holdout."""
