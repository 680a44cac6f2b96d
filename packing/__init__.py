"""Tokens -> 2D packer -> WebDataset shard writer, and the reader/loader.

`packing.pack_2d` loads the packer (and numba) on first use, so the modules that only need
the shard format (packing.format: numpy alone) stay cheap to import.
"""

__all__ = ["pack_2d"]


def __getattr__(name: str):
    if name == "pack_2d":
        from packing.pack2d import pack_2d

        return pack_2d
    raise AttributeError(f"module 'packing' has no attribute {name!r}")
