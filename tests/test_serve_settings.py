"""`ServeSettings`, `ServeConfig` and `bind` refuse every bad serve setting themselves, with the one line `slm serve`
prints, and `slm serve` (whose options are ServeConfig's fields) refuses it through them before it binds a port or
loads a model."""

from __future__ import annotations

import dataclasses
import socket
import sys
from types import SimpleNamespace

import pytest

import slmkit.api
import slmkit.cli.serve
import slmkit.runtime
from slmkit.cli.main import main
from slmkit.errors import SlmError
from slmkit.server import ServeSettings
from slmkit.server.settings import ServeConfig
from slmkit.server.server import bind

ORIGIN_RULE = ("--cors-origin must be * or scheme://host[:port] as a browser sends it (lowercase, no path), "
               "e.g. http://localhost:3000; got ")
KEY_EDGES = ("--api-key has a space, tab or newline at an end or a control character inside; an HTTP header cannot "
             "carry it, so remove it (a key read from a file keeps its newline)")
HOST_RULE = "--host must be an address such as 127.0.0.1 (this machine) or 0.0.0.0 (the network), got "

BAD_SETTINGS = [
    (dict(name=""), "name (the model id clients send) must be a non-empty string, got ''"),
    (dict(name="  "), "name (the model id clients send) must be a non-empty string, got '  '"),
    (dict(name=None), "name (the model id clients send) must be a non-empty string, got None"),
    (dict(name=7), "name (the model id clients send) must be a non-empty string, got 7"),
    (dict(api_key=""), "--api-key is empty"),
    (dict(api_key=" \t"), "--api-key is empty"),
    (dict(api_key=1234), "--api-key must be a string, got int"),
    (dict(api_key=b"secret"), "--api-key must be a string, got bytes"),
    (dict(api_key="secret\n"), KEY_EDGES),
    (dict(api_key=" secret"), KEY_EDGES),
    (dict(api_key="sec\x00ret"), KEY_EDGES),
    (dict(max_concurrency=0), "--max-concurrency must be >= 1, got 0"),
    (dict(max_concurrency=-2), "--max-concurrency must be >= 1, got -2"),
    (dict(max_concurrency=True), "--max-concurrency must be a whole number, got bool True"),
    (dict(max_concurrency=2.5), "--max-concurrency must be a whole number, got float 2.5"),
    (dict(max_concurrency="8"), "--max-concurrency must be a whole number, got str '8'"),
    (dict(max_concurrency=None), "--max-concurrency must be a whole number, got NoneType None"),
    (dict(max_queue=0), "--max-queue must be >= 1, got 0"),
    (dict(max_queue=-1), "--max-queue must be >= 1, got -1"),
    (dict(max_queue=64.0), "--max-queue must be a whole number, got float 64.0"),
    (dict(max_queue="64"), "--max-queue must be a whole number, got str '64'"),
    (dict(ctx=15), "--ctx must be >= 16, got 15"),
    (dict(ctx=0), "--ctx must be >= 16, got 0"),
    (dict(ctx=-512), "--ctx must be >= 16, got -512"),
    (dict(ctx=True), "--ctx must be a whole number, got bool True"),
    (dict(ctx=512.0), "--ctx must be a whole number, got float 512.0"),
    (dict(ctx="512"), "--ctx must be a whole number, got str '512'"),
    (dict(timeout=0), "--timeout must be > 0 seconds, got 0"),
    (dict(timeout=-1.5), "--timeout must be > 0 seconds, got -1.5"),
    (dict(timeout=float("nan")), "--timeout must be > 0 seconds, got nan"),
    (dict(timeout=True), "--timeout must be a number of seconds, got bool True"),
    (dict(timeout="30"), "--timeout must be a number of seconds, got str '30'"),
    (dict(cors_origins="https://app.example"),
     "--cors-origin takes a list of origins, got str 'https://app.example'"),
    (dict(cors_origins=None), "--cors-origin takes a list of origins, got NoneType None"),
    (dict(cors_origins=[""]), ORIGIN_RULE + "''"),
    (dict(cors_origins=["app.example"]), ORIGIN_RULE + "'app.example'"),
    (dict(cors_origins=["https://app.example/"]), ORIGIN_RULE + "'https://app.example/'"),
    (dict(cors_origins=["https://app.example/chat"]), ORIGIN_RULE + "'https://app.example/chat'"),
    (dict(cors_origins=["https://App.example"]), ORIGIN_RULE + "'https://App.example'"),
    (dict(cors_origins=["https://*.example"]), ORIGIN_RULE + "'https://*.example'"),
    (dict(cors_origins=[" https://app.example"]), ORIGIN_RULE + "' https://app.example'"),
    (dict(cors_origins=["null"]), ORIGIN_RULE + "'null'"),
    (dict(cors_origins=["https://ok.example", 3]), ORIGIN_RULE + "3"),
]


@pytest.mark.parametrize("bad, message", BAD_SETTINGS, ids=[repr(bad) for bad, _ in BAD_SETTINGS])
def test_serve_settings_refuse_every_bad_value_themselves(bad, message):
    with pytest.raises(SlmError) as refused:
        ServeSettings(**{"name": "tiny", **bad})
    assert str(refused.value) == message


@pytest.mark.parametrize("bad, message", [case for case in BAD_SETTINGS if "name" not in case[0]],
                         ids=[repr(bad) for bad, _ in BAD_SETTINGS if "name" not in bad])
def test_the_serve_config_refuses_them_as_it_is_made(bad, message):
    with pytest.raises(SlmError) as refused:
        ServeConfig(**bad)
    assert str(refused.value) == message


def test_the_serve_config_makes_the_settings_it_was_given():
    config = ServeConfig(api_key="k", max_concurrency=2, max_queue=3, ctx=32, timeout=5, cors_origins=["*"],
                         host="0.0.0.0", port=0, device="cpu")
    assert config.serve_settings("tiny") == ServeSettings("tiny", api_key="k", max_concurrency=2, max_queue=3, ctx=32,
                                                          timeout=5, cors_origins=["*"])
    assert ServeConfig().serve_settings("tiny") == ServeSettings("tiny")
    with pytest.raises(SlmError, match=r"^name \(the model id clients send\) must be a non-empty string, got ''$"):
        config.serve_settings("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1


def test_good_settings_are_kept_as_given_and_cannot_change_after_the_checks():
    assert ServeSettings("tiny") == ServeSettings(name="tiny", api_key=None, max_concurrency=8, max_queue=64, ctx=None,
                                                  timeout=None, cors_origins=[])
    origins = ("*", "http://localhost:3000", "https://app.example", "http://[::1]:8080", "chrome-extension://abcdef")
    edge = ServeSettings(name="my model", api_key="s3cret key", max_concurrency=1, max_queue=1, ctx=16, timeout=1,
                         cors_origins=origins)
    assert (edge.api_key, edge.max_concurrency, edge.max_queue, edge.ctx, edge.timeout, edge.cors_origins) == \
        ("s3cret key", 1, 1, 16, 1, origins)
    assert ServeSettings("tiny", timeout=0.25).timeout == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        edge.max_concurrency = 0
    assert ServeSettings("tiny", cors_origins=["*"]).cors_origins == ("*",)  # a list given is not kept to change


@pytest.mark.parametrize("host, port, message", [
    ("127.0.0.1", -1, "--port must be 0..65535, got -1"),
    ("127.0.0.1", 65536, "--port must be 0..65535, got 65536"),
    ("127.0.0.1", True, "--port must be a whole number, got bool True"),
    ("127.0.0.1", "8000", "--port must be a whole number, got str '8000'"),
    ("127.0.0.1", 8000.0, "--port must be a whole number, got float 8000.0"),
    ("", 8000, HOST_RULE + "''"),
    ("  ", 8000, HOST_RULE + "'  '"),
    (None, 8000, HOST_RULE + "None"),
])
def test_bind_refuses_a_bad_host_or_port_before_making_a_socket(monkeypatch, host, port, message):
    monkeypatch.setattr(socket, "socket", lambda *a, **k: pytest.fail("a socket was made before refusing"))
    with pytest.raises(SlmError) as refused:
        bind(host, port)
    assert str(refused.value) == message


@pytest.fixture
def nothing_starts(monkeypatch):
    """`slm serve` as a user runs it, with binding, loading and serving made to fail the test if reached."""
    monkeypatch.setattr(socket, "socket", lambda *a, **k: pytest.fail("bound a socket before refusing"))
    monkeypatch.setattr(slmkit.cli.serve, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    monkeypatch.setattr(slmkit.api, "serve", lambda *a, **k: pytest.fail("served before refusing"))


@pytest.mark.parametrize("flags, message", [
    (["--max-concurrency", "0"], "--max-concurrency must be >= 1, got 0"),
    (["--max-queue", "0"], "--max-queue must be >= 1, got 0"),
    (["--ctx", "15"], "--ctx must be >= 16, got 15"),
    (["--timeout", "0"], "--timeout must be > 0 seconds, got 0.0"),
    (["--timeout", "nan"], "--timeout must be > 0 seconds, got nan"),
    (["--api-key", " "], "--api-key is empty"),
    (["--api-key", "secret\n"], KEY_EDGES),
    (["--cors-origin", "https://app.example", "--cors-origin", "https://app.example/"],
     ORIGIN_RULE + "'https://app.example/'"),
    (["--port", "70000"], "--port must be 0..65535, got 70000"),
    (["--host", ""], HOST_RULE + "''"),
])
def test_slm_serve_prints_the_settings_line_before_binding_or_loading(nothing_starts, monkeypatch, capsys, flags,
                                                                      message):
    monkeypatch.setattr(sys, "argv", ["slm", "serve", "some-model", *flags])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


@pytest.fixture
def served(monkeypatch):
    """`slm serve` with binding, loading and serving recorded instead of done."""
    served = {}
    monkeypatch.setattr(slmkit.cli.serve, "bind", lambda host, port: served.update(bind=(host, port)) or "sock")
    monkeypatch.setattr(slmkit.runtime, "choose_backend", lambda spec, backend: "torch")
    monkeypatch.setattr(slmkit.cli.serve, "load_model",
                        lambda spec, **options: served.update(load=options) or SimpleNamespace(backend="torch"))
    monkeypatch.setattr(slmkit.api, "serve", lambda lm, settings, **options: served.update(settings=settings))
    return served


def slm_serve(*args):
    from typer.testing import CliRunner

    from slmkit.cli.main import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 0, result.output
    return result


def test_slm_serve_hands_its_flags_to_the_library_unchanged(served, monkeypatch, tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    monkeypatch.chdir(model)
    slm_serve(".", "--host", "0.0.0.0", "--port", "0", "--max-concurrency", "3", "--max-queue", "5", "--ctx", "64",
              "--timeout", "2.5", "--api-key", "k", "--cors-origin", "http://localhost:3000", "--device", "cpu",
              "--weights", "int8", "--allow-pickle")
    assert served == {"bind": ("0.0.0.0", 0), "settings": ServeSettings(
        name="my-model", api_key="k", max_concurrency=3, max_queue=5, ctx=64, timeout=2.5,
        cors_origins=["http://localhost:3000"]), "load": dict(backend="auto", device="cpu", dtype="auto",
                                                              weights="int8", allow_pickle=True,
                                                              trust_remote_code=False)}


def test_slm_serve_reads_the_key_from_slm_api_key(served, monkeypatch):
    monkeypatch.setenv("SLM_API_KEY", "from-env")
    slm_serve("some-model")
    assert served["settings"] == ServeSettings("some-model", api_key="from-env")
    slm_serve("some-model", "--api-key", "flag")
    assert served["settings"].api_key == "flag"  # the flag wins
    assert "SLM_API_KEY" in slm_serve("--help").stdout
