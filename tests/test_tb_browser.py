"""A real browser on the serve_tb.sh tunnel: Debian's chromium, driven by Playwright for Python.

Playwright launches /usr/bin/chromium through `executable_path`, so no browser is downloaded. The test
opens the GRAPHS tab through the tunnel, checks that the model's node is drawn, and saves a screenshot
to test-artifacts/ (or $TEST_ARTIFACTS) for people to look at.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.remote_fixtures import (
    CHROMIUM,
    ROOT,
    Served,
    processes_mentioning,
    require,
    serve_args,
    sshd,  # noqa: F401 (a fixture)
    training_run,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class NotTensorBoard(BaseHTTPRequestHandler):
    """Another program's web page."""

    def do_GET(self):
        body = b"<html><head><title>someone else's server</title></head><body>not TensorBoard</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class HTTPServerOnIPv6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def model_node(url: str, run: str) -> str:
    """The model's top-level node in the graph TensorBoard serves (the traced module's class name)."""
    query = urllib.parse.urlencode(
        {"run": run, "limit_attr_size": 1024, "large_attrs_key": "_too_large_attrs"}
    )
    with urllib.request.urlopen(f"{url}/data/plugin/graphs/graph?{query}", timeout=30) as response:
        names = re.findall(r'name: "([^"]+)"', response.read().decode())
    scopes = {name.split("/")[0] for name in names if "/" in name} - {"input", "output"}
    assert len(scopes) == 1, f"expected one model scope in the graph, got {scopes}"
    return scopes.pop()


def test_graphs_tab_draws_the_model_through_the_tunnel(sshd, training_run, tmp_path):  # noqa: F811
    require(CHROMIUM.exists(), f"Chromium ({CHROMIUM})")
    require(
        importlib.util.find_spec("playwright") is not None, "Playwright for Python (pip install playwright)"
    )
    from playwright.sync_api import expect, sync_playwright

    project = tmp_path / "project"
    shutil.copytree(training_run, project / "outputs" / "run1")
    # Another program on [::1] at the local port that the tunnel takes on 127.0.0.1: the URL printed must
    # reach the tunnel, not it (a browser tries "localhost" on [::1] first).
    other = HTTPServerOnIPv6(("::1", 0), NotTensorBoard)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    local_port = other.server_address[1]
    served = Served(serve_args(sshd, project, "--local-port", str(local_port)), tmp_path)
    try:
        url = served.wait_for_url()
        assert served.local_port == local_port
        node = model_node(url, "run1/tb")
        artifacts = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(f"{url}/#graphs", wait_until="domcontentloaded")
                expect(page).to_have_title("TensorBoard", timeout=30_000)  # not the program on [::1]
                label = page.locator("text.nodelabel", has_text=re.compile(rf"^{re.escape(node)}"))
                expect(label.first).to_be_visible(timeout=90_000)
                expect(page.locator("text.nodelabel", has_text="input").first).to_be_visible()
                # The graph zooms to fit in an animation (labels start ~10 px tall, end ~19 px); wait until
                # the model's node is drawn at a readable size, so the screenshot shows what a person sees.
                for _ in range(60):
                    box = label.first.bounding_box()
                    if box and box["height"] >= 15:
                        break
                    page.wait_for_timeout(250)
                else:
                    pytest.fail(f"the {node} node never reached a readable size: {box}")
                page.screenshot(path=str(artifacts / "tensorboard_graphs.png"))
            finally:
                browser.close()
        assert (artifacts / "tensorboard_graphs.png").stat().st_size > 0
    finally:
        assert served.stop(signal.SIGINT) == 130, served.output
        other.shutdown()
        other.server_close()
    assert not {pid for pid, cmd in processes_mentioning(str(project)).items() if "--logdir" in cmd}


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))])
def test_every_mention_of_the_graphs_tab_says_how_to_fill_it(page):
    # The default run logs no graph: a paragraph (or table row) that promises the GRAPHS tab must say
    # that it takes logging.graph=true, or the user looks at an empty tab.
    default = yaml.safe_load((ROOT / "conf" / "logging" / "default.yaml").read_text())["graph"]
    if default:
        pytest.skip("the graph is logged by default")
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    for paragraph in re.split(r"\n\s*\n|\n(?=\|)", path.read_text()):
        if "GRAPHS" in paragraph:
            assert "graph=true" in paragraph or "graph: true" in paragraph, f"{page}: {paragraph}"
