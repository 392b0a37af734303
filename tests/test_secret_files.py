"""Secrets generated under OTA_HOME are private from their first byte, not chmod-ed after."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ota.api.auth import resolve_token
from ota.settings import Settings
from starter.dev import _api_token


@pytest.fixture
def modes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """With umask 0, the mode a file had each time it was chmod-ed or linked into place."""
    seen: list[tuple[str, int]] = []
    chmod, link = os.chmod, os.link

    def watched_chmod(path, mode, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("chmod", stat.S_IMODE(os.stat(path).st_mode)))
        chmod(path, mode, *args, **kwargs)

    def watched_link(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("link", stat.S_IMODE(os.stat(src).st_mode)))
        link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", watched_chmod)
    monkeypatch.setattr(os, "link", watched_link)
    umask = os.umask(0)
    try:
        yield seen
    finally:
        os.umask(umask)


def _settings(home: Path) -> Settings:
    return Settings(home=home, api_token=None, url_secret=None, key_encryption_secret=None)


MAKERS: dict[str, tuple[str, Callable[[Path], object]]] = {
    "url secret": ("url-secret", lambda home: _settings(home).resolved_url_secret),
    "key secret": ("key-secret", lambda home: _settings(home).resolved_key_encryption_secret),
    "api token": ("api-token", lambda home: resolve_token(_settings(home))),
    "ota dev's api token": (
        "api-token",
        lambda home: _api_token(SimpleNamespace(settings=_settings(home), home=home)),  # type: ignore[arg-type]
    ),
}


@pytest.mark.parametrize("which", MAKERS)
def test_a_secret_file_is_never_readable_by_others(tmp_path, modes, which):
    name, make = MAKERS[which]
    secret = make(tmp_path / "home")
    path = tmp_path / "home" / name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = secret.decode() if isinstance(secret, bytes) else secret
    assert len(text) >= 24 and path.read_text().strip() == text  # type: ignore[arg-type]
    # Never chmod-ed: created 0600 (even with umask 0), then linked into place whole.
    assert modes == [("link", 0o600)]
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left
    assert make(tmp_path / "home") == secret  # made once, read since
