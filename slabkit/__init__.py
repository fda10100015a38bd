"""slabkit: who allocates from a Linux slab cache."""
__version__ = "0.1.0"
