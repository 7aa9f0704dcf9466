"""retro-search: Retro-Search (arXiv 2504.04383) and the pipeline around it.

The pieces most users need, importable without loading torch or vllm:

    from retro_search import TraceRecord, SearchConfig, TraceSearch, retro_search, segment

Engines (`retro_search.engines.load_engine`), grading (`retro_search.grading`), readers
(`retro_search.readers`) and the scheduler (`retro_search.scheduler.run_shard`) live in their
modules.
"""

import importlib

# Imported on first use (PEP 562): a job loads only the modules it runs, so its manifest's module
# hashes name the code that made its output (provenance.loaded_modules), not the whole package.
_EXPORTS = {"RecordError": "records", "TraceRecord": "records", "TraceSearch": "search",
            "retro_search": "search", "SearchConfig": "search_types",
            "SearchOutcome": "search_types", "segment": "segmentation"}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'retro_search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"retro_search.{_EXPORTS[name]}"), name)
