"""omnicurate: curate omni-modal instruction data into 2D-packed WebDataset shards."""

__version__ = "0.1.0"
