"""Knowledge bases, the embedding engine and semantic search."""
