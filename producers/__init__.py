"""Publish images to the pipeline's raw topic: files, bundled samples, generated load.

Python API: `publish_files(paths, settings)` and `publish_items(items, settings)` return a
PublishResult (summary + every delivered (image_id, produced_at_ms)).
CLI: `python -m producers images|samples|synthetic --help`.
"""

from producers.items import Item, Skip
from producers.publisher import Publisher, PublishResult, publish_files, publish_items
from producers.settings import ProducerSection, ProducerSettings
from producers.summary import Delivered, Problem, Summary

__all__ = [
    "Delivered",
    "Item",
    "Problem",
    "ProducerSection",
    "ProducerSettings",
    "PublishResult",
    "Publisher",
    "Skip",
    "Summary",
    "publish_files",
    "publish_items",
]
