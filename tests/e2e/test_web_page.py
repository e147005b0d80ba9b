"""The live page in headless Chromium, on the real pipeline (session `pipeline` fixture).

Publishes the five sample photos and one corrupt file, waits until every id is stored or
rejected, starts the read API on the pipeline's run dir (so it finds the workers' health
ports from their service specs), and opens the page in Debian's `chromium` driven over
the DevTools protocol (aiohttp's websocket client; no extra dependency). The browser
trusts the API's certificate by its key's pin, not by ignoring TLS errors. Checks: the
three stages render with counts, at least one classified image shows its label and a
decoded thumbnail, rejections list a reason, and the console has no error; a screenshot
is saved under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e_harness import Pipeline, assert_accounted

from consumers.api.launch import Endpoint, wait_serving
from producers.samples import sample_items

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGE_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def api(pipeline: Pipeline) -> Iterator[Endpoint]:
    env = {
        **os.environ,
        **pipeline.env,
        "PIPELINE_RUN_DIR": str(pipeline.run_dir),
        "PIPELINE_API__PORT": str(_free_port()),
    }
    log = pipeline.run_dir / f"api-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "consumers", "api"],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        yield wait_serving(pipeline.run_dir, 60, pid=proc.pid)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from exc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _spki_pin(cert_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Browser:
    """Headless Chromium and one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path, pin: str) -> None:
        assert CHROMIUM
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--ignore-certificate-errors-spki-list={pin}",
                "--window-size=1280,1400",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.profile = profile
        self.events: list[dict[str, Any]] = []
        self._id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def open(self) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, f"chromium exited {self.proc.returncode}"
            assert time.monotonic() < deadline, "chromium wrote no DevToolsActivePort"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")

    async def _read(self) -> None:
        async for msg in self.ws:
            doc = json.loads(msg.data)
            if "id" in doc and doc["id"] in self._pending:
                self._pending.pop(doc["id"]).set_result(doc)
            elif "method" in doc:
                self.events.append(doc)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._id] = fut
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        doc = await asyncio.wait_for(fut, 30)
        assert "error" not in doc, doc
        return dict(doc["result"])

    async def eval(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return res["result"].get("value")

    def console_errors(self) -> list[str]:
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails", {}))[:500])
            elif ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "assert",
            ):
                out.append(json.dumps(p.get("args", []))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                out.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}"[:500])
        return out

    async def close(self) -> None:
        if hasattr(self, "reader"):
            self.reader.cancel()
            await self.ws.close()
            await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


RENDERED = """(() => {
  const stages = [...document.querySelectorAll('#stages tbody tr[data-stage]')].map(tr =>
      ({stage: tr.dataset.stage, cells: [...tr.cells].map(td => td.textContent)}));
  const cards = [...document.querySelectorAll('#latest .card')].map(c => {
      const img = c.querySelector('img');
      return {id: c.dataset.image, text: c.textContent,
              img: img ? {w: img.naturalWidth, done: img.complete} : null};
  });
  const rejections = [...document.querySelectorAll('#rejections tbody tr')].map(tr => tr.textContent);
  return {status: document.getElementById('status').textContent, stages, cards, rejections,
          totals: document.getElementById('totals').textContent,
          login: !document.getElementById('login').hidden};
})()"""


async def _render(
    url: str, pin: str, profile: Path, shot: Path
) -> tuple[dict[str, Any], list[str]]:
    browser = Browser(profile, pin)
    try:
        await browser.open()
        await browser.send("Page.navigate", url=url)
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            view = await browser.eval(RENDERED) or {}
            done_cards = [
                c
                for c in view.get("cards", [])
                if c["img"] and c["img"]["done"] and c["img"]["w"] > 0
            ]
            if len(view.get("stages", [])) >= 3 and done_cards and view.get("rejections"):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.5)  # one more poll cycle of the page: errors there count too
        view = await browser.eval(RENDERED) or view
        png = await browser.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        shot.write_bytes(base64.b64decode(png["data"]))
        return view, browser.console_errors()
    finally:
        await browser.close()


def _get_json(api: Endpoint, path: str) -> Any:
    import urllib.request

    req = urllib.request.Request(
        api.url.rstrip("/") + path, headers={"Authorization": f"Bearer {api.token()}"}
    )
    with urllib.request.urlopen(req, context=api.ssl_context(), timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (infra/setup-system.sh)"
)
def test_page_renders_stages_images_and_rejections(
    pipeline: Pipeline, api: Endpoint, tmp_path: Path
) -> None:
    res = pipeline.publish(sample_items(repeat=0, corrupt=1, seed=int(time.time())))
    ids = [i for i, _ in res.delivered]
    assert len(ids) == 6 and res.summary.failed == 0
    acc = pipeline.wait_accounted(ids)
    assert_accounted(acc, ids, pipeline.diagnose)
    assert acc.stored and acc.rejected

    assert api.ca_cert is not None
    pin = _spki_pin((api.ca_cert.parent / "api.crt").read_bytes())
    shot = tmp_path / "web-page.png"
    view, errors = asyncio.run(_render(api.page_url(), pin, tmp_path / "chromium", shot))

    assert not view.get("login"), f"the page asked for a token: {view}"
    assert [s["stage"] for s in view["stages"]] == ["decode", "infer", "postprocess"], view
    pipeline_view = _get_json(api, "/v1/pipeline")
    assert pipeline_view["workers_up"] == len(pipeline_view["workers"]) >= 2, pipeline_view
    assert f"workers up {pipeline_view['workers_up']}/" in view["totals"], view["totals"]
    decode = view["stages"][0]["cells"]
    assert int(decode[2]) >= len(ids), f"decode 'in' count below what was published: {decode}"
    labels = {acc.stored[i]["label"] for i in acc.stored}
    shown = [c for c in view["cards"] if c["img"] and c["img"]["w"] > 0]
    assert shown, f"no classified image with a thumbnail: {view['cards']}"
    assert any(lbl in c["text"] for c in shown for lbl in labels), (labels, shown)
    assert any(r["reason"] in "".join(view["rejections"]) for r in acc.rejected.values())
    assert errors == [], f"console errors: {errors}"
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
