"""Shipping and using a model: the bundle format (`bundle`), export from a run (`export`), the `Retriever`
(`retriever`) and the retrieval CLI (`cli`). `python -m hashtune.export` and `python -m hashtune.retrieve`
are thin entry points onto `export.main` and `cli.main`.
"""

from hashtune.retrieval.retriever import Retriever, SearchResult, evaluate_bundle

__all__ = ["Retriever", "SearchResult", "evaluate_bundle"]
