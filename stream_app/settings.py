"""Settings of the stream app: `PIPELINE_STREAM__...` on top of the shared sections.

Examples:
  PIPELINE_STREAM__MODEL__KIND=torchscript
  PIPELINE_STREAM__MODEL__TORCHSCRIPT_PATH=/models/mine.pt
  PIPELINE_STREAM__MODEL__LABELS_PATH=/models/labels.txt
  PIPELINE_STREAM__INFER__TORCH_THREADS=2
  PIPELINE_STREAM__POSTPROCESS__TOP_K=3
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from infra.security import KAFKA_STREAM
from infra.settings import PipelineSettings


class ModelSettings(BaseModel):
    """Which model infer runs and how its input is prepared.

    kind=efficientnet-lite0: the ImageNet-pretrained EfficientNet-Lite0 shipped in the
    installed packages; its preprocessing is fixed (224 px, (x-127)/128) and the
    preprocessing fields below must stay unset.
    kind=torchscript: `torchscript_path` (torch.jit.save'd module taking float32
    N x 3 x S x S, returning N x classes logits) with `labels_path` (one label per line);
    input_size/resize_size/mean/std describe its preprocessing (defaults: 224, 256,
    ImageNet mean/std on a [0, 1] scale).
    """

    kind: Literal["efficientnet-lite0", "torchscript"] = "efficientnet-lite0"
    torchscript_path: Path | None = None
    labels_path: Path | None = None
    # Name and version reported with every prediction; derived when unset.
    name: str | None = None
    version: str | None = None
    input_size: int | None = Field(default=None, ge=8, le=4096)
    resize_size: int | None = Field(default=None, ge=8, le=8192)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # How the forward pass runs (stream_app/runtime.py): frozen TorchScript, built once
    # at worker start, run by oneDNN ops (frozen) or by oneDNN Graph's fused kernels
    # (onednn); or eager (the path before issue 16). channels_last: NHWC memory.
    # Unset for kind=torchscript it is frozen: oneDNN's fused clamp turns NaN into a
    # finite value, which would hide a user model's non-finite outputs.
    runtime: Literal["eager", "frozen", "onednn"] = "onednn"
    channels_last: bool = True
    # Zero padding done by the convolution, not a separate pad op before it (padding
    # wider at one end widens the kernel with zeros; bit-identical on Lite0, and the
    # frozen graph then keeps oneDNN's layout throughout).
    fold_padding: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> ModelSettings:
        if self.kind == "torchscript":
            if "runtime" not in self.model_fields_set:
                self.runtime = "frozen"
            if self.torchscript_path is None:
                raise ValueError("model.kind=torchscript needs model.torchscript_path")
            if self.labels_path is None:
                raise ValueError("model.kind=torchscript needs model.labels_path")
        else:
            fixed = {
                k: v
                for k, v in (
                    ("torchscript_path", self.torchscript_path),
                    ("input_size", self.input_size),
                    ("resize_size", self.resize_size),
                    ("mean", self.mean),
                    ("std", self.std),
                )
                if v is not None
            }
            if fixed:
                raise ValueError(
                    f"model.kind={self.kind} has fixed preprocessing; unset {sorted(fixed)} "
                    "or use model.kind=torchscript"
                )
        if (
            self.input_size is not None
            and self.resize_size is not None
            and self.resize_size < self.input_size
        ):
            raise ValueError("model.resize_size must be >= model.input_size")
        return self


class DecodeSettings(BaseModel):
    # Bigger inputs are refused before Pillow sees them (reason too-large).
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # Width x height above this is a decompression bomb; below Pillow's own 89 Mpx. At
    # 40 Mpx a 16-bit or RGBA PNG took a worker to 1.31-1.43 GiB, too near the 1.5 GiB
    # bound; 32 Mpx holds a 48 Mpx phone's usual 12 Mpx output and DSLRs up to 6900 px.
    max_pixels: int = Field(default=32_000_000, ge=1)
    # A progressive JPEG decodes each scan over the whole image: 60,000 repeated scans in
    # a 3.6 MB file took over a minute. Encoders write about 10; more is refused.
    max_jpeg_scans: int = Field(default=100, ge=1)
    # Longer side / shorter side above this is refused (bad-aspect-ratio): a centre crop
    # of a 1 x 20000 strip classifies nothing. 20:1 passes any panorama a camera makes.
    max_aspect_ratio: float = Field(default=20.0, ge=1.0)
    # Pillow plugins allowed to parse input; the rest (EPS runs Ghostscript!) never run.
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
    # JPEG draft mode: let libjpeg decode at 1/2, 1/4 or 1/8 scale when the image still
    # covers jpeg_draft_oversample x the resize at that scale. Off by default: libjpeg's
    # scaled IDCT is not Pillow's bicubic filter, and top-1 then agreed with the full
    # decode on 94.3 % (oversample 1), 97.6 % (1.5), 99.1 % (2) of the agreement set,
    # under issue 16's 99.5 % bar (docs/stream_app.md).
    jpeg_draft: bool = False
    jpeg_draft_oversample: float = Field(default=2.0, ge=1.0, le=8.0)


class InferSettings(BaseModel):
    # Intra-op threads of torch in this process (torch.set_num_threads).
    torch_threads: int = Field(default=1, ge=1, le=256)
    # Largest batch per forward pass; a worker's micro-batch is cut into chunks of this
    # size. On the 2-core dev machine 4 gave the most images per CPU second (see
    # docs/stream_app.md); larger batches were slower per image.
    max_forward_batch: int = Field(default=4, ge=1, le=1024)


class PostprocessSettings(BaseModel):
    top_k: int = Field(default=5, ge=1)


class WorkerSettings(BaseModel):
    app_id: str = "torchstream"
    # Web endpoint of a worker (health view); workers started by `workers -n N` use
    # web_port, web_port+1, ...
    web_port: int = Field(default=6066, ge=1, le=65535)
    web_host: str = "127.0.0.1"
    # Micro-batching: up to batch_size events or batch_window_s seconds, whichever first.
    batch_size: int = Field(default=16, ge=1, le=1024)
    batch_window_s: float = Field(default=0.2, gt=0)
    # Stages this worker runs (a worker may run a subset, e.g. only infer).
    stages: tuple[Literal["decode", "infer", "postprocess"], ...] = (
        "decode",
        "infer",
        "postprocess",
    )
    # Benchmarks only: every stage forwards its input unchanged to its output topic, no
    # model is loaded (stream_app/relay.py): the real stages' cost of moving events.
    relay: bool = False
    # How often the health view is logged.
    health_log_interval_s: float = Field(default=30.0, gt=0)
    # Where faust keeps local state (tables are not used, but faust wants a dir).
    data_dir: Path = Path(".run/stream_app")
    # How long a batch's sends may take before the worker gives up and exits (the
    # batch is not acked, so it is redelivered to whoever owns the partition next).
    send_timeout_s: float = Field(default=120.0, gt=0)
    # Producer batching. A batch's outputs are sent together; faust's default 16 KiB
    # batch holds no decoded image (147 KB), so each would travel in a produce request
    # of its own (acks=all: a replication round trip each). 1 MiB batches carry a
    # whole micro-batch per partition in one request.
    producer_max_batch_bytes: int = Field(default=1_048_576, ge=16_384)
    producer_linger_ms: int = Field(default=5, ge=0, le=1000)
    # Compression of the batches a worker produces. Off: lz4 takes the decoded crops to
    # 66 % for 0.15 ms each in a loop, but in the pipeline it cost the workers 8-12 ms
    # of CPU per image and Kafka's CPU did not fall (BENCHMARKS.md, issue 16 A/B).
    producer_compression: Literal["none", "lz4", "zstd", "gzip", "snappy"] = "none"
    # A worker running both decode and infer runs them as one agent: decoded pixels
    # (147 KB per image, 3 replicas) stay in memory instead of crossing the brokers
    # (stream_app/fused.py). Results and the per-stage dead letters go to the same
    # topics as with separate stages; images.decoded is not written. On by default:
    # same-run A/B, total CPU per image 43.3 vs 56.5 ms, Kafka's share halved (5.1 vs
    # 9.9 ms), same answers (BENCHMARKS.md, issue 16). A worker started for decode or
    # infer alone runs unfused; false restores separate agents everywhere.
    fuse_decode_infer: bool = True
    # A worker running both infer and postprocess runs postprocess in infer's agent (in
    # the fused decode+infer agent when that is on): the logits (4 KB per image, 3
    # replicas) and one more Faust hop per image stay off the brokers; images.inferred
    # is not written, predictions and postprocess's dead letters go to their usual
    # topics. On by default: two same-run A/B pairs, Kafka CPU per image 2.6-2.7 vs
    # 3.8-4.0 ms, total 19.5 vs 20.9 ms on warm servers (BENCHMARKS.md, issue 16).
    # postprocess keeps its (idle) agent on images.inferred for what an unfused infer wrote.
    fuse_postprocess: bool = True
    # A stage processes its next micro-batch while the previous one's outputs await the
    # brokers' acks (acks=all: a replication round trip). Inputs are still acked in
    # order, each only after its own outputs are acked, with one batch in flight.
    # Off by default: on warm servers it gained nothing (the cores are full at
    # saturation, BENCHMARKS.md), and it is one more thing in flight at a rebalance.
    overlap_sends: bool = False
    # Watchdog: a stage that holds an unacknowledged input longer than stall_after_s, or
    # whose source has had records waiting that long with no progress at all, is
    # stalled; the worker then exits with code 76 and its supervisor restarts it
    # (restart_on_stall=false only reports it). Lag is measured every lag_probe_interval_s.
    stall_after_s: float = Field(default=60.0, gt=0)
    restart_on_stall: bool = True
    lag_probe_interval_s: float = Field(default=5.0, gt=0)
    # A worker stopping (after a failure or a stall) that has not exited after this long
    # ends hard; nothing unacked was committed, so nothing is lost.
    stop_grace_s: float = Field(default=30.0, gt=0)
    # Consumer group liveness: a killed worker's partitions move after session_timeout_s.
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)


class StreamSection(BaseModel):
    # Prepended to every topic name of the registry, e.g. "tenant-a." (the topics must
    # exist: `python -m infra provision` or a test fixture creates them).
    topic_prefix: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    postprocess: PostprocessSettings = Field(default_factory=PostprocessSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)


class StreamSettings(PipelineSettings):
    """Settings of a stream worker: shared kafka/cassandra sections plus `stream`."""

    kafka_principal: ClassVar[str] = KAFKA_STREAM

    stream: StreamSection = Field(default_factory=StreamSection)
