"""Reports: the one family of writers every report uses (Markdown tables and numbers, JSON summaries, PNG figures),
so that a report of a new product is a few calls, and every report reads and is written the same way.

They take plain data (mappings, rows, arrays) and a folder already claimed by
:mod:`geoplantnet.storage.outputs`; they never decide where a report goes or whether it may be replaced."""
