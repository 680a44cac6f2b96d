"""Tokens -> 2D packer -> WebDataset shard writer, and the reader/loader."""

from packing.pack2d import pack_2d

__all__ = ["pack_2d"]
