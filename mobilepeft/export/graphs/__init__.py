"""Graphs every exporter shares: the vision encoder, the static-KV-cache decoder, the merged source model."""
