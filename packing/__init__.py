"""Tokens -> 2D packer -> WebDataset shard writer, and the reader/loader."""
