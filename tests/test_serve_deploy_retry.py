"""``serve_app.deploy.deploy`` asks Serve to start again when a loaded machine made the first
start fail while Serve carried on (a proxy replaced, or none ready within Serve's 60 s)."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import ActorDiedError

import serve_app.deploy as deploy_mod
from ingest.core.config import Settings


class _Serve:
    """Stands in for ``ray.serve``: ``start`` fails as told, then succeeds."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.starts = 0
        self.runs = 0

    def start(self, **kwargs: Any) -> None:
        self.starts += 1
        if self.failures:
            raise self.failures.pop(0)

    def run(self, *args: Any, **kwargs: Any) -> None:
        self.runs += 1


@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(failures: list[BaseException]) -> _Serve:
        fake = _Serve(failures)
        monkeypatch.setattr(deploy_mod, "serve", fake)
        monkeypatch.setattr(deploy_mod, "ensure_coordinator", lambda settings: None)
        monkeypatch.setattr(deploy_mod, "require_leadership", lambda coord: None)
        monkeypatch.setattr(deploy_mod, "build", lambda settings: object())
        return fake

    return install


@pytest.mark.parametrize("failure", [ActorDiedError(), TimeoutError("HTTP proxies not available after 60s.")])
def test_a_start_that_failed_while_serve_carried_on_is_asked_again(
    fake_serve: Any, failure: BaseException
) -> None:
    fake = fake_serve([failure])
    out = deploy_mod.deploy(Settings())
    assert fake.starts == 2 and fake.runs == 1
    assert out["api"].startswith("http://")


def test_three_failed_starts_are_an_error(fake_serve: Any) -> None:
    fake = fake_serve([TimeoutError("one"), TimeoutError("two"), TimeoutError("three")])
    with pytest.raises(TimeoutError, match="three"):
        deploy_mod.deploy(Settings())
    assert fake.starts == 3 and fake.runs == 0
