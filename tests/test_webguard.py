"""The app over its websocket (issue 24, class 8): only its own page may drive it (a forged Origin is closed before
viser answers), the prior is a choice, GUI values are clamped, and an address it cannot listen on is exit 6 at once."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("viser", reason="the app extra (viser) is not installed")

import viser  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from dreammapping import train as T  # noqa: E402
from dreammapping.app import App, RunQueue, RunRequest, clamp, cli_app  # noqa: E402
from dreammapping.errors import EXIT_OUTPUT, EXIT_USAGE, ConfigError, OutputError  # noqa: E402
from dreammapping.webguard import check_listen_address, origin_allowed  # noqa: E402


def test_origin_rules():
    assert origin_allowed(None, "127.0.0.1:7860", "127.0.0.1")  # no Origin: not a browser
    assert origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860", "127.0.0.1")
    assert origin_allowed("http://localhost:7860", "localhost:7860", "127.0.0.1")
    assert not origin_allowed("https://evil.example", "127.0.0.1:7860", "127.0.0.1")  # another site's page
    assert not origin_allowed("http://127.0.0.1:9999", "127.0.0.1:7860", "127.0.0.1")  # another local page
    assert not origin_allowed("null", "127.0.0.1:7860", "127.0.0.1")  # a file:// page, a sandboxed frame
    # DNS rebinding: evil.example resolved to 127.0.0.1, so Origin and Host agree, but the name is not ours
    assert not origin_allowed("http://evil.example:7860", "evil.example:7860", "127.0.0.1")
    assert origin_allowed("http://myhost:7860", "myhost:7860", "0.0.0.0")  # --host 0.0.0.0: the user's choice


@pytest.fixture
def app(tmp_path):
    app = App(host="127.0.0.1", port=0, runs_root=tmp_path / "runs", priors=("embedded", "my-prior"))
    yield app
    app.close()


def open_socket(app, origin: str | None):
    url = f"ws://127.0.0.1:{app.server.get_port()}"
    return connect(url, origin=origin, subprotocols=[f"viser-v{viser.__version__}"], open_timeout=10)


def test_a_forged_origin_is_closed_before_it_learns_or_does_anything(app):
    submitted = []
    app.queue.submit = lambda request: submitted.append(request)
    with open_socket(app, "https://evil.example") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(1000):  # nothing of the page's state arrives, only the close
                message = ws.recv(timeout=10)
                assert b"dreammapping" not in (message if isinstance(message, bytes) else message.encode())
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with open_socket(app, f"http://127.0.0.1:{app.server.get_port()}") as ws:  # the app's own page: served
        assert ws.recv(timeout=10)
    assert submitted == []


def test_gui_values_are_clamped_and_the_prior_is_a_choice(app, tmp_path):
    assert clamp(1e30, "seed") == 2**31 - 1 and clamp(float("nan"), "seed") == 0 and clamp("x", "iterations") == 1
    assert clamp(-5, "guidance_scale") == 0.01 and clamp(2.5, "iterations") == 2
    app.seed.value, app.iterations.value = 1e30, -3.0  # what a forged update would store
    request = app.request()
    assert request.seed == 2**31 - 1 and request.iterations == 1
    app.prior.value = "/etc"  # not offered: the dropdown cannot send it, a forged message can
    job = app.queue.submit(app.request())
    assert job.state.value == "failed" and "not one this app offers" in job.message
    queue = RunQueue(tmp_path / "q", runner=lambda *a: None, evaluate=None, priors=("embedded",))
    assert queue.submit(RunRequest("a red cube", prior="../../etc")).state.value == "failed"
    queue.close()


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"], ids=["not-an-address", "not-this-machine"])
def test_an_address_it_cannot_listen_on_is_exit_6_at_once(host, capsys):
    start = time.perf_counter()
    assert cli_app(["--host", host, "--port", "0"]) == EXIT_OUTPUT
    err = capsys.readouterr().err.strip()
    assert time.perf_counter() - start < 10 and "\n" not in err and "cannot listen" in err
    assert cli_app(["--port", "70000"]) == EXIT_USAGE
    assert "--port" in capsys.readouterr().err


def test_generate_viewer_with_a_bad_port_is_exit_2(tmp_path, capsys):
    code = T.cli_generate(["a red cube", "--out", str(tmp_path / "run"), "--viewer", "--port", "70000"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "--port" in err and "Traceback" not in err
    with pytest.raises(ConfigError):
        check_listen_address("127.0.0.1", -1)
    with pytest.raises(OutputError):
        check_listen_address("999.1.1.1", 0)
