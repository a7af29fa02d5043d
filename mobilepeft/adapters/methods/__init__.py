"""The built-in adapter methods, one file each (each registers itself: adapters/registry.py)."""
