"""hashtune: tune, ablate and ship transformer deep-hashing models (TransHash, He & Wei 2023)."""

__version__ = "0.1.0"
