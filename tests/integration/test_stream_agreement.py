"""Issue 16, same answers: the default model step (settings as shipped) against today's
fp32 eager path over >= 500 offline images; top-1 must agree on >= 99.5 %.

No servers; it is here rather than in tests/unit because two full passes over 576 images
take about a minute of CPU on the 2-core box (more when the box is shared)."""

from __future__ import annotations

from stream_app.agreement import AGREEMENT_BAR, check_agreement
from stream_app.settings import StreamSettings


def test_default_path_agrees_with_todays_eager_path() -> None:
    report = check_agreement(StreamSettings().stream)
    listed = "\n".join(
        f"  {d.image}: today {d.today.label} ({d.today.score:.3f}), "
        f"new {d.new.label} ({d.new.score:.3f})"
        for d in report.differing
    )
    assert report.images >= 500
    assert report.fraction >= AGREEMENT_BAR, (
        f"top-1 agrees on {report.agreeing}/{report.images}; differing:\n{listed}"
    )
