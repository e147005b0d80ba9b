"""Issue 16's faster model step: frozen runtime, JPEG draft decode, settings that select
today's path, and the agreement check's mechanics (the full >= 500-image agreement run is
tests/integration/test_stream_agreement.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, JpegImagePlugin

from stream_app import agreement
from stream_app.decode import decode_image
from stream_app.errors import ModelLoadError
from stream_app.infer import Inferencer
from stream_app.model import load_model
from stream_app.runtime import Frozen, Runtime, build_runtime, fold_padding
from stream_app.settings import DecodeSettings, ModelSettings, StreamSettings
from stream_app.spec import LITE0_PREPROCESS

PHOTOS = Path(os.path.dirname(skimage.data.__file__))


def jpeg(size: tuple[int, int], exif: Image.Exif | None = None) -> bytes:
    im = Image.open(PHOTOS / "astronaut.png").convert("RGB").resize(size)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def test_defaults_are_the_new_path_and_settings_reach_todays() -> None:
    s = StreamSettings().stream
    assert (s.model.runtime, s.model.channels_last, s.decode.jpeg_draft) == ("onednn", True, False)
    assert s.model.fold_padding
    assert s.worker.producer_compression == "none" and s.worker.fuse_decode_infer
    assert s.worker.fuse_postprocess
    env = {
        "PIPELINE_STREAM__MODEL__RUNTIME": "eager",
        "PIPELINE_STREAM__MODEL__CHANNELS_LAST": "false",
        "PIPELINE_STREAM__MODEL__FOLD_PADDING": "false",
        "PIPELINE_STREAM__DECODE__JPEG_DRAFT": "false",
        "PIPELINE_STREAM__WORKER__PRODUCER_COMPRESSION": "lz4",
        "PIPELINE_STREAM__WORKER__FUSE_DECODE_INFER": "false",
        "PIPELINE_STREAM__WORKER__FUSE_POSTPROCESS": "false",
    }
    old = os.environ.copy()
    os.environ.update(env)
    try:
        today = StreamSettings().stream
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert (today.model.runtime, today.model.channels_last) == ("eager", False)
    assert not today.model.fold_padding
    assert (today.decode.jpeg_draft, today.worker.producer_compression) == (False, "lz4")
    assert not today.worker.fuse_decode_infer and not today.worker.fuse_postprocess


@pytest.mark.parametrize("runtime", ["frozen", "onednn"])
def test_frozen_runtimes_give_eager_logits(runtime: Runtime) -> None:
    eager = load_model(ModelSettings(runtime="eager", channels_last=False))
    frozen = load_model(ModelSettings(runtime=runtime))
    assert isinstance(frozen.module, Frozen) and frozen.channels_last
    assert not frozen.module.training and not list(frozen.module.parameters())
    assert not isinstance(eager.module, Frozen)
    blobs = [(PHOTOS / p).read_bytes() for p in ("coffee.png", "chelsea.png", "rocket.jpg")]
    arrays = [decode_image(b, LITE0_PREPROCESS, DecodeSettings()).pixels for b in blobs]
    for batch in (1, 2, 3):
        new = Inferencer(frozen, batch).run(arrays)
        ref = Inferencer(eager, 4).run(arrays)
        for a, b in zip(new, ref, strict=True):
            assert a.logits is not None and b.logits is not None
            np.testing.assert_allclose(a.logits, b.logits, atol=1e-3)
            assert int(a.logits.argmax()) == int(b.logits.argmax())


def test_onednn_runtime_runs_fused_kernels_at_every_batch_size() -> None:
    """The oneDNN Graph runtime really fuses (its executed graph holds fusion groups,
    the clamps gone into them), at warmed batch sizes and at one compiled on first use,
    with eager's answers; and a `frozen` build after it (the switch is process-wide)
    leaves both serving eager's answers."""
    eager = load_model(ModelSettings(runtime="eager", channels_last=False)).module
    fused = load_model(ModelSettings(runtime="onednn"), warm_batches=2).module
    assert isinstance(fused, Frozen)

    def check(module: torch.nn.Module, batch: int) -> None:
        gen = torch.Generator().manual_seed(batch)
        x = torch.rand(batch, 3, 224, 224, generator=gen).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            for _ in range(3):  # the third call of a new shape runs its fused graph
                got = module(x)
            torch.testing.assert_close(got, eager(x.contiguous()), rtol=0, atol=1e-3)

    for batch in (1, 2, 5):
        check(fused, batch)
        graph = torch.jit.last_executed_optimized_graph()
        groups = graph.findAllNodes("prim::oneDNNFusionGroup", recurse=True)
        assert len(groups) >= 40, f"batch {batch}: {len(groups)} fusion groups"
        assert not graph.findAllNodes("aten::clamp", recurse=False)
    plain = load_model(ModelSettings(runtime="frozen")).module
    for batch in (3, 2):
        check(plain, batch)
        check(fused, batch)


def test_two_threads_compiling_new_shapes_of_one_onednn_model_at_once() -> None:
    """A worker's fused decode+infer stage and its infer stage share the model from two
    executor threads. Two threads compiling new batch sizes of one oneDNN Graph module
    at once used to leave those sizes failing on every later call (review, 4 runs of 4):
    the runtime serialises calls, so every size still gives eager's logits."""
    import threading

    eager = load_model(ModelSettings(runtime="eager", channels_last=False)).module
    fused = load_model(ModelSettings(runtime="onednn"), warm_batches=2).module
    gen = torch.Generator().manual_seed(3)
    xs = {
        n: (torch.rand(n, 3, 224, 224, generator=gen) * 4 - 2).contiguous(
            memory_format=torch.channels_last
        )
        for n in (3, 4, 5, 6)
    }
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def run(order: list[int]) -> None:
        barrier.wait()
        try:
            for n in order:
                for _ in range(3):
                    with torch.inference_mode():
                        fused(xs[n])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(f"{n}: {exc}")

    threads = [threading.Thread(target=run, args=(o,)) for o in ([3, 4, 5, 6], [6, 5, 4, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with torch.inference_mode():
        for x in xs.values():
            torch.testing.assert_close(fused(x), eager(x.contiguous()), rtol=0, atol=1e-3)


def test_a_users_torchscript_model_runs_frozen_unless_asked(tmp_path: Path) -> None:
    """oneDNN's fused clamp maps NaN to a finite value, which would hide a user model's
    non-finite outputs: a TorchScript model defaults to the plain frozen graph."""
    files = {"torchscript_path": tmp_path / "m.pt", "labels_path": tmp_path / "labels.txt"}
    assert ModelSettings(kind="torchscript", **files).runtime == "frozen"
    chosen = ModelSettings(kind="torchscript", runtime="onednn", **files)
    assert chosen.runtime == "onednn"
    assert ModelSettings().runtime == "onednn"


def test_an_onednn_build_that_fails_falls_back_to_frozen(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default runtime must not stop a model the plain frozen graph serves: a
    failing oneDNN Graph build (here its warm-up raises) logs why and builds `frozen`."""
    from stream_app import runtime

    def broken(*args: object) -> float:
        raise RuntimeError("no partition for this op")

    monkeypatch.setattr(runtime, "_warm", broken)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU6(), torch.nn.Flatten())
    with caplog.at_level("WARNING", logger="stream_app.runtime"):
        built = build_runtime(net.eval(), "onednn", True, 8)
    assert "cannot build the onednn runtime: no partition" in caplog.text
    assert "building the frozen runtime instead" in caplog.text
    assert isinstance(built, Frozen) and not torch.jit.onednn_fusion_enabled()
    kinds = {n.kind() for n in built.graph.graph.nodes()}
    assert "prim::mkldnn_convolution" in kinds  # optimize_for_inference's graph


class _SamePadConv(torch.nn.Conv2d):
    """A convolution padded the way EfficientNet-Lite0's port pads ("SAME")."""

    def __init__(
        self,
        k: int | tuple[int, int],
        stride: int | tuple[int, int],
        pads: tuple[int, int, int, int],
        dilation: int = 1,
        groups: int = 2,
    ) -> None:
        super().__init__(2, 2, k, stride, dilation=dilation, groups=groups)
        self.static_padding = torch.nn.ZeroPad2d(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


def test_fold_padding_moves_the_padding_into_the_convolution_and_keeps_the_outputs() -> None:
    net = torch.nn.Sequential(
        _SamePadConv(3, 1, (1, 1, 1, 1)),  # stride 1: symmetric
        _SamePadConv(5, 2, (1, 2, 1, 2)),  # stride 2: one pixel wider at the end
        _SamePadConv(3, 2, (1, 0, 0, 1)),  # wider at the start in x, at the end in y
        _SamePadConv(3, 1, (2, 2, 2, 2), dilation=2),  # dilated: kept
    ).eval()
    folded, count = fold_padding(net)
    assert count == 3
    convs = [m for m in folded if isinstance(m, torch.nn.Conv2d)]
    assert [(tuple(m.padding), tuple(m.kernel_size)) for m in convs] == [
        ((1, 1), (3, 3)),
        ((2, 2), (6, 6)),
        ((1, 1), (4, 4)),
        ((0, 0), (3, 3)),
    ]
    assert not isinstance(convs[0].static_padding, torch.nn.ZeroPad2d)
    assert isinstance(convs[3].static_padding, torch.nn.ZeroPad2d)
    assert isinstance(net[1].static_padding, torch.nn.ZeroPad2d)  # the original is untouched
    assert tuple(net[1].kernel_size) == (5, 5)
    for size in (17, 24):
        x = torch.rand(3, 2, size, size) * 4 - 2
        with torch.inference_mode():
            want = net(x)
            got = folded(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    assert fold_padding(scripted) == (scripted, 0)


def test_fold_padding_keeps_the_outputs_over_random_strides_kernels_and_sizes() -> None:
    rng = np.random.default_rng(16)
    for _ in range(40):
        kh, kw = (int(v) for v in rng.integers(1, 6, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        left, right, top, bottom = (int(v) for v in rng.integers(0, 4, 4))
        conv = _SamePadConv(
            (kh, kw), (sh, sw), (left, right, top, bottom), groups=int(rng.integers(1, 3))
        )
        net = torch.nn.Sequential(conv).eval()
        folded, count = fold_padding(net)
        assert count == 1
        h, w = (int(v) for v in rng.integers(max(kh, kw) + 1, 20, 2))
        x = torch.rand(2, 2, h, w) * 4 - 2
        with torch.inference_mode():
            torch.testing.assert_close(folded(x), net(x), rtol=0, atol=1e-5)


def test_fold_padding_leaves_a_convolution_whose_forward_does_not_pad_first() -> None:
    class PadsAfter(_SamePadConv):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.static_padding(torch.nn.Conv2d.forward(self, x))

    net = torch.nn.Sequential(PadsAfter(3, 1, (1, 1, 1, 1))).eval()
    folded, count = fold_padding(net)
    assert count == 0 and isinstance(folded[0].static_padding, torch.nn.ZeroPad2d)
    assert tuple(folded[0].padding) == (0, 0)


def test_lite0_frozen_with_folded_padding_has_fewer_layout_round_trips() -> None:
    def graph_ops(settings: ModelSettings) -> tuple[dict[str, int], torch.nn.Module]:
        module = load_model(settings).module
        assert isinstance(module, Frozen)
        kinds = [n.kind() for n in module.graph.graph.nodes()]
        return {k: kinds.count(k) for k in ("aten::pad", "aten::to_dense")}, module

    plain, unfolded = graph_ops(ModelSettings(runtime="frozen", fold_padding=False))
    fewer, folded = graph_ops(ModelSettings(runtime="frozen"))
    assert plain["aten::pad"] > 0 and fewer["aten::pad"] == 0
    assert fewer["aten::to_dense"] < plain["aten::to_dense"]
    x = torch.rand(2, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), unfolded(x), rtol=0, atol=1e-5)


def test_unknown_runtime_and_a_model_that_cannot_be_traced_fail_at_load() -> None:
    net = torch.nn.Linear(3, 2).eval()
    with pytest.raises(ModelLoadError, match="unknown model runtime"):
        build_runtime(net, "compiled", False, 8)  # type: ignore[arg-type]

    class Branchy(torch.nn.Module):
        """Data-dependent control flow: a trace bakes in one branch."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([r * 2 if r.sum() > 0 else r * 3 for r in x]).flatten(1)

    with pytest.raises(ModelLoadError, match="differs from eager"):
        build_runtime(_FirstSample(Branchy()).eval(), "frozen", False, 4)


class _FirstSample(torch.nn.Module):
    """Traced on the probe, then asked about a batch whose rows take other branches."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        # The first call (eager reference) and the trace see different data.
        return self.inner(x if self.calls == 1 else -x)


def test_jpeg_draft_decodes_smaller_and_keeps_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    drafted: list[tuple[int, int]] = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int]) -> object:
        result = real(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = jpeg((2048, 1536))
    full = decode_image(data, LITE0_PREPROCESS, DecodeSettings())  # draft is off by default
    assert drafted == []
    for oversample, expected in ((1.0, (512, 384)), (2.0, (1024, 768))):
        img = decode_image(
            data,
            LITE0_PREPROCESS,
            DecodeSettings(jpeg_draft=True, jpeg_draft_oversample=oversample),
        )
        assert drafted[-1] == expected
        assert (img.width, img.height, img.pixels.shape) == (2048, 1536, (3, 224, 224))
        diff = np.abs(img.pixels.astype(int) - full.pixels.astype(int))
        assert diff.mean() < 3.0, diff.mean()
    # Too small for any scale that still covers the resize: decoded at full size.
    drafted.clear()
    decode_image(
        jpeg((500, 700)),
        LITE0_PREPROCESS,
        DecodeSettings(jpeg_draft=True, jpeg_draft_oversample=1.0),
    )
    assert drafted == []


def test_jpeg_draft_reports_the_rotated_original_size() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 2048 x 1536, shown 1536 x 2048
    img = decode_image(
        jpeg((2048, 1536), exif),
        LITE0_PREPROCESS,
        DecodeSettings(jpeg_draft=True, jpeg_draft_oversample=1.0),
    )
    assert (img.width, img.height) == (1536, 2048)


def test_sample_images_are_many_distinct_and_deterministic() -> None:
    first = agreement.sample_images()
    assert len(first) >= 500
    assert len({n for n, _ in first}) == len(first)
    assert len({b for _, b in first}) == len(first)
    assert first[:40] == agreement.sample_images()[:40]
    big_jpegs = [
        n for n, b in first if b[:2] == b"\xff\xd8" and min(Image.open(io.BytesIO(b)).size) >= 512
    ]
    assert len(big_jpegs) >= 100  # draft mode is exercised, not only the small photos


def test_agreement_lists_every_difference() -> None:
    images = agreement.sample_images()[:24]
    same = agreement.check_agreement(agreement.TODAY, images=images)
    assert (same.images, same.agreeing, same.differing) == (24, 24, [])
    # A model whose labels are reversed answers differently on every image.
    swapped = agreement._Path(agreement.TODAY)
    swapped.model.labels = list(reversed(swapped.model.labels))
    ref = agreement._Path(agreement.TODAY).answers(images)
    new = swapped.answers(images)
    assert all(a.label != b.label for a, b in zip(ref, new, strict=True))
    report = agreement.AgreementReport(images=24, agreeing=0, seconds=0.0)
    assert not report.meets_bar and report.fraction == 0.0
