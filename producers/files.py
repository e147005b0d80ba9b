"""Image files from paths: walk directories, recognise images by content, not extension."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from producers.items import NOT_AN_IMAGE, TOO_LARGE, UNREADABLE, Item, Skip
from schemas.raw import sniff_content_type

log = logging.getLogger(__name__)


def find_files(
    paths: Iterable[str | os.PathLike[str]], recursive: bool = False
) -> Iterator[Path | Skip]:
    """Files named or found under `paths`, sorted per directory; missing paths become Skips.

    A directory contributes its direct files, or its whole tree with `recursive`.
    """
    for p in map(Path, paths):
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            yield from sorted(f for f in found if f.is_file())
        elif p.is_file():
            yield p
        elif p.exists():
            yield Skip(str(p), UNREADABLE, "not a regular file")
        else:
            yield Skip(str(p), UNREADABLE, "no such file or directory")


def read_image(
    path: Path, max_bytes: int | None = None, image_id: str | None = None
) -> Item | Skip:
    """The file as an Item if its bytes start like a supported image; else a Skip."""
    source = str(path)
    try:
        if max_bytes is not None:
            size = path.stat().st_size
            if size > max_bytes:  # don't read a huge file just to refuse it
                return Skip(
                    source, TOO_LARGE, f"{size} bytes, the topic accepts at most {max_bytes}"
                )
        data = path.read_bytes()
    except OSError as exc:
        return Skip(source, UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}")
    content_type = sniff_content_type(data)
    if content_type is None:
        head = data[:8].hex(" ") if data else "empty file"
        return Skip(source, NOT_AN_IMAGE, f"no known image signature (starts {head})")
    return Item(data=data, source=source, image_id=image_id, content_type=content_type)


def file_items(
    paths: Iterable[str | os.PathLike[str]],
    recursive: bool = False,
    max_bytes: int | None = None,
    image_id: str | None = None,
) -> Iterator[Item | Skip]:
    for entry in find_files(paths, recursive):
        yield entry if isinstance(entry, Skip) else read_image(entry, max_bytes, image_id)
