"""How a loaded model runs its forward pass: eager PyTorch or frozen TorchScript.

`build_runtime` turns the eval-mode module `model.py` loaded into the module infer calls,
once per worker at start (the build time is logged). Runtimes:

  eager   the module as loaded (today's path before issue 16).
  frozen  `torch.jit.trace` (or the scripted module as is) + `torch.jit.freeze` +
          `torch.jit.optimize_for_inference`: BatchNorm folded into the convolutions,
          weights constants, fused ops. On the 2-core AVX2 dev box Lite0 ran 1.3-1.6 x
          eager at batch 1 (docs/stream_app.md, "Model runtime").

`channels_last` stores the weights and feeds the input in NHWC memory order (the logical
shape stays N x C x H x W); oneDNN's depthwise kernels prefer it.

Every runtime is checked against the eager module on a fixed input at build time: the
logits must agree within `BUILD_TOLERANCE`, else the build fails (ModelLoadError) rather
than serve different answers.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Literal

import torch

from stream_app.errors import ModelLoadError

log = logging.getLogger(__name__)

Runtime = Literal["eager", "frozen"]
RUNTIMES: tuple[Runtime, ...] = ("eager", "frozen")
# Largest |logit difference| tolerated between a built runtime and eager fp32 on the
# check input. Folding BatchNorm reorders float sums: measured ~1e-5 on Lite0 logits.
BUILD_TOLERANCE = 1e-3


class Frozen(torch.nn.Module):
    """A frozen graph behind the usual nn.Module face (eval mode, no parameters): freezing
    drops the script module's `training` attribute, which callers may ask about."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.graph = graph
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.graph(x)
        return out


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def build_runtime(
    module: torch.nn.Module, runtime: Runtime, channels_last: bool, input_size: int
) -> torch.nn.Module:
    """The module to run for `runtime`; `module` must be in eval mode, gradients off."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown model runtime {runtime!r}; choose one of {RUNTIMES}")
    started = time.perf_counter()
    fmt = memory_format(channels_last)
    probe = _probe(input_size).contiguous(memory_format=fmt)
    with torch.inference_mode():
        reference = module(_probe(input_size))
    if channels_last:
        module = module.to(memory_format=fmt)
    try:
        built = module if runtime == "eager" else _frozen(module, probe)
        with torch.inference_mode():
            out = built(probe)
            out = built(probe)  # the second call runs the optimised graph (profiling done)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build the {runtime} runtime: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.shape != reference.shape:
        raise ModelLoadError(f"{runtime} runtime changes the output shape")
    diff = float((out.float() - reference.float()).abs().max())
    if not diff <= BUILD_TOLERANCE:
        raise ModelLoadError(
            f"{runtime} runtime (channels_last={channels_last}) differs from eager by {diff:.2e} "
            f"on the check input (tolerance {BUILD_TOLERANCE:g})"
        )
    log.info(
        "model runtime %s, channels_last=%s: built in %.2f s (max |logit - eager| %.1e)",
        runtime,
        channels_last,
        time.perf_counter() - started,
        diff,
    )
    return built


def _probe(size: int) -> torch.Tensor:
    """A fixed, non-trivial input (a blank one would not exercise the weights)."""
    gen = torch.Generator().manual_seed(16)
    return torch.rand(2, 3, size, size, generator=gen) * 4.0 - 2.0


def _frozen(module: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream in favour of torch.export; it still works.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            scripted = (
                module
                if isinstance(module, torch.jit.ScriptModule)
                else torch.jit.trace(module, example, check_trace=False)
            )
            scripted.eval()
            frozen = torch.jit.freeze(scripted)
            return Frozen(torch.jit.optimize_for_inference(frozen))
