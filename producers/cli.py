"""`python -m producers images|samples|synthetic`: publish images to images.raw.

Prints a summary (or `--json`) on stdout; logs and progress go to stderr.
Exit status: 0 all published, 1 some deliveries failed, 2 usage error,
3 some inputs skipped (not an image, unreadable, too large), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from infra import logs
from producers import files, samples, synthetic
from producers.items import Item, Skip
from producers.progress import Progress
from producers.publisher import PublishResult, publish_items
from producers.settings import ProducerSettings
from schemas.image_id import InvalidImageId, validate_image_id

log = logging.getLogger("producers")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--rate", type=float, help="images per second (default: as fast as acked)")
    common.add_argument("--source", help="the source header for every image (default: per image)")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")
    common.add_argument(
        "--delivered-out",
        metavar="FILE",
        help="write one JSON line per delivered record (id, produced_at_ms, partition, offset, source)",
    )
    common.add_argument("--bootstrap-servers", help="override PIPELINE_KAFKA__BOOTSTRAP_SERVERS")
    common.add_argument("--topic", help="override the topic (default images.raw)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    common.add_argument("--log-level", default=None, help="default from PIPELINE_LOG_LEVEL or INFO")

    p = argparse.ArgumentParser(
        prog="python -m producers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    im = sub.add_parser(
        "images", parents=[common], help="publish image files (recognised by content)"
    )
    im.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    im.add_argument("--recursive", "-r", action="store_true", help="walk directories recursively")
    im.add_argument(
        "--id", dest="image_id", help="image id (only with a single file; default sha256)"
    )

    sa = sub.add_parser("samples", parents=[common], help="publish the bundled sample photos")
    sa.add_argument(
        "--repeat",
        type=int,
        default=0,
        metavar="N",
        help=f"N variants of each of the {len(samples.PHOTO_NAMES)} photos (distinct ids)",
    )
    sa.add_argument("--corrupt", type=int, default=0, metavar="K", help="add K corrupt images")
    sa.add_argument("--seed", type=int, default=None, help="variant seed (default 0)")

    sy = sub.add_parser("synthetic", parents=[common], help="publish generated images")
    sy.add_argument("--count", type=int, required=True, metavar="N")
    sy.add_argument("--size", default="224x224", metavar="WxH")
    sy.add_argument(
        "--format", default="JPEG", choices=["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"]
    )
    sy.add_argument("--quality", type=int, default=90)
    sy.add_argument("--seed", type=int, default=None)
    return p


def _settings(args: argparse.Namespace) -> ProducerSettings:
    settings = ProducerSettings()
    section: dict[str, Any] = {}
    if args.rate is not None:
        section["rate"] = args.rate
    if args.source is not None:
        section["source"] = args.source
    if args.topic:
        section["topic"] = args.topic
    if getattr(args, "seed", None) is not None:
        section["seed"] = args.seed
    kafka: dict[str, Any] = {}
    if args.bootstrap_servers:
        kafka["bootstrap_servers"] = args.bootstrap_servers
    data = settings.model_dump()
    data["producer"].update(section)
    data["kafka"].update(kafka)
    if args.log_level:
        data["log_level"] = args.log_level
    return ProducerSettings.model_validate(data)


def _inputs(
    args: argparse.Namespace, settings: ProducerSettings
) -> tuple[Iterable[Item | Skip], int | None]:
    seed = settings.producer.seed
    if args.command == "images":
        found = list(files.find_files(args.paths, args.recursive))
        if args.image_id is not None:
            validate_image_id(args.image_id)
            if len(found) != 1 or isinstance(found[0], Skip):
                raise UsageError(
                    f"--id needs exactly one readable file; the paths name {len(found)}"
                )
        limit = settings.kafka.max_message_bytes
        items = (
            f if isinstance(f, Skip) else files.read_image(f, limit, args.image_id) for f in found
        )
        return items, len(found)
    if args.command == "samples":
        if args.repeat < 0 or args.corrupt < 0:
            raise UsageError("--repeat and --corrupt must be >= 0")
        total = len(samples.PHOTO_NAMES) * (1 + args.repeat) + args.corrupt
        return samples.sample_items(args.repeat, args.corrupt, seed), total
    if args.count < 0:
        raise UsageError("--count must be >= 0")
    size = synthetic.parse_size(args.size)
    return synthetic.synthetic_items(args.count, size, seed, args.format, args.quality), args.count


class UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except Exception as exc:  # pydantic ValidationError: bad env or option values
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    log.info("publishing to %s at %s", settings.producer.topic, settings.kafka.bootstrap_servers)
    try:
        items, total = _inputs(args, settings)
    except (UsageError, InvalidImageId, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = None
    if not args.no_progress:
        progress = Progress(
            total, interval_s=settings.producer.progress_interval_s, label=args.command
        )
    result = publish_items(items, settings, progress=progress, handle_signals=True)
    _report(result, args)
    return result.summary.exit_code()


def _report(result: PublishResult, args: argparse.Namespace) -> None:
    s = result.summary
    if args.delivered_out:
        with open(args.delivered_out, "w", encoding="utf-8") as fh:
            for d in result.records:
                fh.write(json.dumps(vars(d)) + "\n")
    if args.json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        print(s.format_text())
    if s.exit_code():
        what = []
        if s.failed:
            what.append(f"{s.failed} failed ({', '.join(sorted({p.reason for p in s.failures}))})")
        if s.skipped:
            what.append(f"{s.skipped} skipped ({', '.join(sorted({p.reason for p in s.skips}))})")
        if s.interrupted:
            what.append("interrupted")
        print("error: " + "; ".join(what), file=sys.stderr)
