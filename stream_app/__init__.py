"""The stream app: decode -> infer -> postprocess over Kafka topics (faust-streaming).

The torch-free names are re-exported here. `stream_app.model` and `stream_app.infer`
import torch and are imported explicitly by whoever runs a model.
"""

from stream_app.decode import DecodedImage, decode_image, sniff_format
from stream_app.errors import (
    DecodeError,
    InferError,
    ModelLoadError,
    PostprocessError,
    StageError,
)
from stream_app.labels import load_labels
from stream_app.postprocess import ScoredClass, softmax, top_k
from stream_app.settings import StreamSettings
from stream_app.spec import ModelInfo, PreprocessSpec

__all__ = [
    "DecodeError",
    "DecodedImage",
    "InferError",
    "ModelInfo",
    "ModelLoadError",
    "PostprocessError",
    "PreprocessSpec",
    "ScoredClass",
    "StageError",
    "StreamSettings",
    "decode_image",
    "load_labels",
    "sniff_format",
    "softmax",
    "top_k",
]
