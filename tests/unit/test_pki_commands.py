"""``novacron ca ...`` and ``novacron cert ...`` through the CLI's own entry point, on
real files: both spellings of the CA directory on every command, and each refusal a
clean ``invalid_params`` (exit 1), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from novacron.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_ca_command_takes_either_spelling_of_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(tmp_path / "ca")
    out = str(tmp_path / "certs")
    code, shown, _ = run(capsys, "--json", "ca", "init", "--ca-dir", ca, "--name", "Test CA")
    assert code == 0 and json.loads(shown)["certificate"] == f"{ca}/ca.crt"
    assert run(capsys, "ca", "crl", "--ca-dir", ca)[0] == 0
    assert run(capsys, "ca", "crl", "--dir", ca)[0] == 0
    for name, flag in (("alice", "--ca-dir"), ("bob", "--dir")):
        code, shown, err = run(
            capsys, "--json", "cert", "issue", flag, ca, "--name", name, "--role", "viewer",
            "--out", out,
        )  # fmt: skip
        assert code == 0, err
        assert json.loads(shown)["certificate"] == f"{out}/{name}.crt"
        assert "PRIVATE KEY" not in shown + err
    code, shown, _ = run(capsys, "--json", "cert", "list", "--dir", ca)
    assert [c["name"] for c in json.loads(shown)] == ["alice", "bob"]
    code, shown, _ = run(capsys, "--json", "cert", "revoke", "--dir", ca, "--name", "bob")
    assert code == 0 and len(json.loads(shown)["revoked"]) == 1
    code, shown, _ = run(capsys, "--json", "cert", "list", "--ca-dir", ca)
    assert [c["revoked_at"] is not None for c in json.loads(shown)] == [False, True]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ca", "crl"], "no CA in"),
        (["cert", "list"], "no CA in"),
        (["ca", "init", "--days", "0"], "days must be 1 to 36500"),
        (["cert", "issue", "--name", "Bad Name/x", "--role", "viewer"], "is not a valid name"),
        (["cert", "issue", "--name", "ok", "--role", "viewer", "--days", "0"], "days must be"),
        (["cert", "issue", "--name", "ok", "--role", "admin", "--node"], "have role node"),
        (
            ["cert", "issue", "--name", "n1", "--role", "node", "--node", "--address", "a b"],
            "neither an IP address nor a DNS name",
        ),
        (["cert", "revoke", "--name", "ghost"], "no live certificate for ghost"),
        (["cert", "revoke", "--serial", "0x12"], "no live certificate for serial 0x12"),
    ],
)
def test_refusals_are_clean_errors_that_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    ca = tmp_path / "ca"
    if argv[:2] not in (["ca", "crl"], ["cert", "list"], ["ca", "init"]):
        assert run(capsys, "ca", "init", "--dir", str(ca))[0] == 0
    out = tmp_path / "certs"
    extra = ["--out", str(out)] if argv[:2] == ["cert", "issue"] else []
    code, _, err = run(capsys, *argv, "--ca-dir", str(ca), *extra)
    assert code == 1, err
    assert err.startswith("error: invalid_params: ") and needle in " ".join(err.split()), err
    assert not out.exists() or not any(out.iterdir())
