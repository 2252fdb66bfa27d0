"""`edgetune-operator`'s start, without a cluster: what it hands to kopf."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from edgetune_operator import main as operator_main

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "t"}}],
    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "x",
}


def test_kopf_gets_an_identity_so_a_uid_without_a_passwd_entry_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image runs as uid 65532, which has no passwd entry: kopf's own guess of an identity asks for the
    user name and fails with KeyError (found on kind: the operator pod crash-looped)."""

    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    monkeypatch.setenv("POD_NAME", "edgetune-operator-6898f6b49b-79gwt")
    seen: dict[str, Any] = {}

    async def fake_operator(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(kopf, "operator", fake_operator)
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump(KUBECONFIG))
    argv = ["--kubeconfig", str(config), "-n", "team", "--metrics-port", "0", "--health-port", "0"]
    assert operator_main.main(argv) == 0
    assert str(seen["identity"]).startswith("edgetune-operator-6898f6b49b-79gwt_")


def test_kopf_logs_in_with_the_bare_token_whatever_the_loader_wrote(tmp_path: Path) -> None:
    """A kubeconfig gives "Bearer <token>", the in-cluster loader "bearer <token>" (its token file read
    as is): kopf must get the token alone either way."""
    import kubernetes.client

    from edgetune_operator.handlers import connection_info

    for stored, prefix in [("bearer abc.def", None), ("abc.def", "Bearer"), ("Bearer abc.def", None)]:
        config = kubernetes.client.Configuration(host="https://10.96.0.1:443")
        config.api_key = {"BearerToken": stored}
        if prefix:
            config.api_key_prefix = {"BearerToken": prefix}
        assert connection_info(config).token == "abc.def", stored
