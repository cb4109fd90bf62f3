"""Speed as the size target: per-block engine time of every database level, measured
on vLLM (:mod:`.measure`, serve environment), fitted (:mod:`.sweep`), cached with its
identity (:mod:`.table`, :mod:`.build`), and turned into the search's budget."""
