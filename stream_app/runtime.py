"""How a loaded model runs its forward pass: eager PyTorch or frozen TorchScript.

`build_runtime` turns the eval-mode module `model.py` loaded into the module infer calls,
once per worker at start (the build time is logged). Runtimes:

  eager   the module as loaded (today's path before issue 16).
  frozen  `torch.jit.trace` (or the scripted module as is) + `torch.jit.freeze` +
          `torch.jit.optimize_for_inference`: BatchNorm folded into the convolutions,
          weights constants, fused ops. On the 2-core AVX2 dev box Lite0 ran 1.3-1.6 x
          eager at batch 1 (docs/stream_app.md, "Model runtime").
  onednn  `torch.jit.trace` + `torch.jit.freeze`, run by oneDNN Graph fusion
          (`torch.jit.enable_onednn_fusion`): each convolution runs with its ReLU6 and
          residual add fused in, where `frozen` runs 33 separate clamp passes (11 % of its
          forward). The executor compiles its fused graph per input shape on the first
          calls of that shape, so the build runs every batch size up to `warm_batches`
          first. The switch is process-wide and set before each build: a `frozen`
          build turns it off (an `onednn` module built before keeps fusing, measured).
          oneDNN's fused clamp maps NaN to a finite value where eager keeps NaN, so a
          model whose own arithmetic can make NaN (a user's TorchScript that divides,
          say) would answer instead of failing `non-finite`; Lite0's uint8 inputs and
          finite weights cannot, and user TorchScript models default to `frozen`.

`channels_last` stores the weights and feeds the input in NHWC memory order (the logical
shape stays N x C x H x W); oneDNN's depthwise kernels prefer it.

`fold_padding` moves a convolution's separate zero padding (TensorFlow "SAME" padding,
which EfficientNet-Lite0's port applies as a ZeroPad2d before each padded convolution)
into the convolution itself; padding wider at one end is made symmetric by widening the
kernel with zeros. Lite0's logits are bit-identical, and its frozen graph loses a
dense <-> oneDNN layout round trip per padded convolution: `aten::pad` has no oneDNN
kernel, so each one had the activation reordered out of oneDNN's blocked layout and back
(26 reorder pairs -> 1, the input's).

Every runtime is checked against the eager module on a fixed input at build time: the
logits must agree within `BUILD_TOLERANCE`, else the build fails (ModelLoadError) rather
than serve different answers.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import warnings
from typing import Literal

import torch

from stream_app.errors import ModelLoadError

log = logging.getLogger(__name__)

Runtime = Literal["eager", "frozen", "onednn"]
RUNTIMES: tuple[Runtime, ...] = ("eager", "frozen", "onednn")
# Calls per batch size before the fused graph is in place: a profiling run, then the
# optimised one (measured: the third call runs at full speed).
WARM_CALLS = 3
# Batch sizes warmed at most (each costs ~0.15 s at build); larger ones compile on use.
MAX_WARM_BATCH = 16
# Largest |logit difference| tolerated between a built runtime and eager fp32 on the
# check input. Folding BatchNorm reorders float sums: measured ~1e-5 on Lite0 logits.
BUILD_TOLERANCE = 1e-3


class Frozen(torch.nn.Module):
    """A frozen graph behind the usual nn.Module face (eval mode, no parameters): freezing
    drops the script module's `training` attribute, which callers may ask about.

    One call at a time: a worker's fused decode+infer stage and its infer stage share
    the model from two executor threads, and two threads compiling new shapes of one
    oneDNN Graph module at once left those shapes failing on every later call (seen in
    review: "Partition inputs are missing"). A worker runs one torch thread per core,
    so the lock costs no parallelism."""

    def __init__(self, graph: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.graph = graph
        self._lock = threading.Lock()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            out: torch.Tensor = self.graph(x)
        return out


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def fold_padding(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """A copy of `module` in which every Conv2d that zero-pads its input first (a
    `static_padding` ZeroPad2d; convolution padding 0, dilation 1) pads in the
    convolution instead; and how many were folded. Others are left as they are, and so is
    a TorchScript module (its forward is compiled code, not these submodules).

    A convolution pads symmetrically. Padding that is wider on one side (SAME padding of
    a stride-2 convolution: one pixel more at the end) becomes the wider amount on both
    sides, and the kernel gets zero rows/columns on the side that gained padding, so each
    output still reads exactly the inputs it read before (for finite inputs the extra
    taps add exact zeros). The attribute name alone is not trusted: each folded
    convolution is compared with its original on a small random input and kept as it was
    if they differ (a forward that does not pad first, say)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module, 0
    folded = copy.deepcopy(module)
    count = 0
    for original, sub in zip(module.modules(), folded.modules(), strict=True):
        pad = getattr(sub, "static_padding", None)
        if not isinstance(sub, torch.nn.Conv2d) or not isinstance(pad, torch.nn.ZeroPad2d):
            continue
        left, right, top, bottom = pad.padding
        if (
            tuple(sub.padding) != (0, 0)
            or tuple(sub.dilation) != (1, 1)
            or sub.padding_mode != "zeros"
            or min(pad.padding) < 0  # a negative pad crops
        ):
            continue
        kept = (sub.weight, sub.kernel_size, sub.padding)
        widened = torch.nn.functional.pad(
            sub.weight.detach(),
            (
                max(0, right - left),
                max(0, left - right),
                max(0, bottom - top),
                max(0, top - bottom),
            ),
        )
        sub.weight = torch.nn.Parameter(widened, requires_grad=False)
        sub.kernel_size = (int(widened.shape[-2]), int(widened.shape[-1]))
        sub.padding = (max(top, bottom), max(left, right))
        sub.static_padding = torch.nn.Identity()
        if _same_outputs(original, sub):
            count += 1
        else:
            log.warning("not folding the padding of %r: its outputs would change", original)
            sub.weight, sub.kernel_size, sub.padding = kept
            sub.static_padding = pad
    return folded, count


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two convolutions give the same output on a small random input."""
    assert isinstance(a, torch.nn.Conv2d)
    side = 2 * max(a.kernel_size) + 5
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(1, a.in_channels, side, side + 1, generator=gen) * 4.0 - 2.0
    try:
        with torch.inference_mode():
            want, got = a(x), b(x)
    except Exception:  # noqa: BLE001 - a convolution we cannot check is not folded
        return False
    return want.shape == got.shape and bool(torch.allclose(want, got, rtol=0, atol=1e-5))


def build_runtime(
    module: torch.nn.Module,
    runtime: Runtime,
    channels_last: bool,
    input_size: int,
    fold: bool = False,
    warm_batches: int = 4,
) -> torch.nn.Module:
    """The module to run for `runtime`; `module` must be in eval mode, gradients off.
    `fold`: move the convolutions' zero padding into them first (`fold_padding`).
    `warm_batches`: the `onednn` runtime is run at batch sizes 1..warm_batches before it
    is returned (larger ones compile on first use), and each size's output is checked.
    An `onednn` build that fails or differs from eager falls back to `frozen` (logged):
    the default runtime must not stop a model that the plain frozen graph serves."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"unknown model runtime {runtime!r}; choose one of {RUNTIMES}")
    try:
        return _build(module, runtime, channels_last, input_size, fold, warm_batches)
    except ModelLoadError as exc:
        if runtime != "onednn":
            raise
        log.warning("%s; building the frozen runtime instead", exc)
        return _build(module, "frozen", channels_last, input_size, fold, warm_batches)


def _build(
    module: torch.nn.Module,
    runtime: Runtime,
    channels_last: bool,
    input_size: int,
    fold: bool,
    warm_batches: int,
) -> torch.nn.Module:
    started = time.perf_counter()
    fmt = memory_format(channels_last)
    probe = _probe(input_size).contiguous(memory_format=fmt)
    with torch.inference_mode():
        reference = module(_probe(input_size))
    if not bool(torch.isfinite(reference).all()):
        raise ModelLoadError("the model gives non-finite logits on the check input")
    folds = 0
    if fold:
        module, folds = fold_padding(module)
    if channels_last:
        module = module.to(memory_format=fmt)
    warm_diff = 0.0
    try:
        built = module if runtime == "eager" else _frozen(module, probe, runtime == "onednn")
        with torch.inference_mode():
            if runtime == "onednn":
                warm_diff = _warm(built, probe, reference, warm_batches, fmt)
            out = built(probe)
            out = built(probe)  # the second call runs the optimised graph (profiling done)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build the {runtime} runtime: {exc}") from exc
    if not isinstance(out, torch.Tensor) or out.shape != reference.shape:
        raise ModelLoadError(f"{runtime} runtime changes the output shape")
    diff = max(float((out.float() - reference.float()).abs().max()), warm_diff)
    if not diff <= BUILD_TOLERANCE:
        raise ModelLoadError(
            f"{runtime} runtime (channels_last={channels_last}, fold={fold}) differs from eager "
            f"by {diff:.2e} "
            f"on the check input (tolerance {BUILD_TOLERANCE:g})"
        )
    log.info(
        "model runtime %s, channels_last=%s, %d paddings folded: built in %.2f s "
        "(max |logit - eager| %.1e)",
        runtime,
        channels_last,
        folds,
        time.perf_counter() - started,
        diff,
    )
    return built


def _probe(size: int) -> torch.Tensor:
    """A fixed, non-trivial input (a blank one would not exercise the weights)."""
    gen = torch.Generator().manual_seed(16)
    return torch.rand(2, 3, size, size, generator=gen) * 4.0 - 2.0


def _warm(
    built: torch.nn.Module,
    probe: torch.Tensor,
    want: torch.Tensor,
    batches: int,
    fmt: torch.memory_format,
) -> float:
    """Runs `built` WARM_CALLS times at each batch size 1..batches (the probe's images in
    turn, in memory order `fmt`), so no stream batch pays for compiling its shape;
    returns the largest |difference| of the compiled graphs' outputs from `want`
    (eager's logits for the probe's images)."""
    diff = 0.0
    for n in range(1, min(max(1, batches), MAX_WARM_BATCH) + 1):
        rows = torch.arange(n) % probe.shape[0]
        x = probe[rows].contiguous(memory_format=fmt)
        for _ in range(WARM_CALLS):
            out = built(x)
        if not isinstance(out, torch.Tensor) or out.shape[0] != n:
            raise ModelLoadError(f"onednn runtime returns a wrong shape at batch {n}")
        diff = max(diff, float((out.float() - want[rows].float()).abs().max()))
    return diff


def _frozen(module: torch.nn.Module, example: torch.Tensor, onednn: bool) -> torch.nn.Module:
    """Traced and frozen; then `optimize_for_inference` (oneDNN ops, one per graph node),
    or, with `onednn`, left for oneDNN Graph to fuse when it runs. The two do not mix:
    `optimize_for_inference` done with the fusion switched on gives a graph that fails
    when run (IndexError inside torch 2.15), so the switch is set before each build."""
    torch.jit.enable_onednn_fusion(onednn)
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
            return Frozen(frozen if onednn else torch.jit.optimize_for_inference(frozen))
