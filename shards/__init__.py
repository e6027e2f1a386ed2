"""Synthetic VOS datasets and WebDataset shards.

Modules: `shards.synth` (write_davis, write_ytvos), `shards.layout` (list_videos, Video), `shards.pack` (pack,
read_index, shard_urls), `shards.check` (check). Command line: `python -m shards.synth`, `python -m shards
pack|check`.
"""
