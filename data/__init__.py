"""Data: corpus preparation, tokenizers, the shard format and the batch loader."""
