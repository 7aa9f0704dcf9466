"""retro-search: Retro-Search (arXiv 2504.04383) and the pipeline around it.

The pieces most users need, importable without loading torch or vllm:

    from retro_search import TraceRecord, SearchConfig, TraceSearch, retro_search, segment

Engines (`retro_search.engines.load_engine`), grading (`retro_search.grading`), readers
(`retro_search.readers`) and the scheduler (`retro_search.scheduler.run_shard`) live in their
modules.
"""

from retro_search.records import RecordError, TraceRecord
from retro_search.search import TraceSearch, retro_search
from retro_search.search_types import SearchConfig, SearchOutcome
from retro_search.segmentation import segment

__all__ = ["RecordError", "SearchConfig", "SearchOutcome", "TraceRecord", "TraceSearch",
           "retro_search", "segment"]
__version__ = "0.1.0"
