"""The two model paths `python -m bench` runs the pipeline with: today's and the new one.

The new path is the stream app's defaults (whatever the environment exports on top).
Today's path is the model step before issue 16, as the stream app's own settings
select it; it mirrors `stream_app.agreement.TODAY` (a unit test keeps them equal):
full-size JPEG decode, the eager fp32 module in contiguous memory, forward batches of 4;
and the workers' transport as it was: micro-batches of 16, uncompressed produce batches,
every stage its own agent (decoded pixels and logits cross the brokers), and each batch's
acks awaited before the next batch is processed.
"""

from __future__ import annotations

OLD_PATH_ENV: dict[str, str] = {
    "PIPELINE_STREAM__MODEL__RUNTIME": "eager",
    "PIPELINE_STREAM__MODEL__CHANNELS_LAST": "false",
    "PIPELINE_STREAM__MODEL__FOLD_PADDING": "false",
    "PIPELINE_STREAM__DECODE__JPEG_DRAFT": "false",
    "PIPELINE_STREAM__INFER__MAX_FORWARD_BATCH": "4",
    "PIPELINE_STREAM__WORKER__BATCH_SIZE": "16",
    "PIPELINE_STREAM__WORKER__PRODUCER_COMPRESSION": "none",
    "PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER": "false",
    "PIPELINE_STREAM__WORKER__FUSE_POSTPROCESS": "false",
    "PIPELINE_STREAM__WORKER__OVERLAP_SENDS": "false",
}


def parse_env(text: str) -> dict[str, str]:
    """'K=V,K2=V2' -> {'K': 'V', 'K2': 'V2'}; every key must be a PIPELINE_ setting."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.startswith("PIPELINE_"):
            raise ValueError(f"expected PIPELINE_...=value, got {part!r}")
        out[key.strip()] = value.strip()
    return out
