"""Search: the keyword text pipeline, the indexer (tokens, vectors) and the engine
(plan, keyword arm, vector arm, fusion, snippets)."""
