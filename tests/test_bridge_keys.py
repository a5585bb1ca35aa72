# Tests for `overstay keys` and host_tools/bridge/keys.py: registration, rotation grace, revocation, secrets shown once.
import pytest

from host_tools import cli
from host_tools.bridge import db as dbmod
from host_tools.bridge import keys
from host_tools.errors import UserError
from tests.bridge_helpers import sqlite_url


@pytest.fixture
def url(tmp_path):
    return sqlite_url(tmp_path / "b.db")


def _run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_add_prints_the_secret_once_and_list_never_does(url, capsys):
    rc, out, err = _run(capsys, "keys", "add", "st-01", "--site", "lot-a", "--connectors", "2", "--db", url)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("station st-01 secret ") and lines[1].startswith("site lot-a secret ")
    secret = bytes.fromhex(lines[0].split()[-1])
    site_secret = bytes.fromhex(lines[1].split()[-1])
    assert len(secret) == 32 and len(site_secret) == 32
    assert secret.hex() not in err
    db = dbmod.open_db(url)
    assert keys.key_for(db, "st-01") == [secret]
    assert keys.site_key(db, "lot-a") == site_secret
    db.close()

    # A second station on the same site: no new site key.
    rc, out, _ = _run(capsys, "keys", "add", "st-02", "--site", "lot-a", "--db", url)
    assert rc == 0 and "site lot-a" not in out

    rc, out, _ = _run(capsys, "keys", "list", "--db", url)
    assert rc == 0 and "st-01" in out and "st-02" in out and "valid" in out
    assert secret.hex() not in out and secret.hex()[:12] not in out

    # Registering twice is a one-line error, exit 2.
    rc, _, err = _run(capsys, "keys", "add", "st-01", "--site", "lot-a", "--db", url)
    assert rc == 2 and err.startswith("overstay: error: station st-01 is already registered") and err.count("\n") == 1


def test_rotate_keeps_the_old_key_for_the_grace_window(url, capsys):
    _run(capsys, "keys", "add", "st-01", "--site", "lot-a", "--db", url)
    db = dbmod.open_db(url)
    old = keys.key_for(db, "st-01")
    rc, out, err = _run(capsys, "keys", "rotate", "st-01", "--grace", "1h", "--db", url)
    assert rc == 0
    new = bytes.fromhex(out.split()[-1])
    assert keys.key_for(db, "st-01") == [new] + old  # newest first
    import time

    later = int(time.time()) + 3601
    assert keys.key_for(db, "st-01", now=later) == [new]
    rows = keys.list_keys(db, "st-01")
    assert [r["status"] for r in rows] == ["expiring", "valid"]
    db.close()


def test_revoke_ends_keys(url, capsys):
    _run(capsys, "keys", "add", "st-01", "--site", "lot-a", "--db", url)
    _run(capsys, "keys", "rotate", "st-01", "--db", url)
    rc, _, err = _run(capsys, "keys", "revoke", "st-01", "--key-id", "1", "--db", url)
    assert rc == 0 and "revoked 1" in err
    db = dbmod.open_db(url)
    assert len(keys.key_for(db, "st-01")) == 1
    rc, _, err = _run(capsys, "keys", "revoke", "st-01", "--db", url)
    assert rc == 0
    assert keys.key_for(db, "st-01") == []
    db.close()
    rc, _, err = _run(capsys, "keys", "revoke", "st-01", "--db", url)
    assert rc == 2 and "no valid key" in err
    rc, _, err = _run(capsys, "keys", "rotate", "nope", "--db", url)
    assert rc == 2 and "not registered" in err
    rc, _, err = _run(capsys, "keys", "revoke", "st-01", "--site", "other", "--db", url)
    assert rc == 2 and "is on site lot-a" in err


def test_register_station_api_for_the_flashing_tool(url):
    db = dbmod.open_db(url)
    secret = b"\x01" * 32
    out = keys.register_station(db, "st-09", "lot-z", secret, connectors=4)
    assert out["key_id"] >= 1 and out["site_created"] and len(out["site_secret"]) == 32
    assert keys.key_for(db, "st-09") == [secret]
    with pytest.raises(UserError, match="at least 16 bytes"):
        keys.register_station(db, "st-10", "lot-z", b"short")
    with pytest.raises(UserError, match="station must be"):
        keys.register_station(db, "bad/id", "lot-z")
    db.close()


def test_acl_lists_each_station_on_its_site(url, capsys):
    _run(capsys, "keys", "add", "st-01", "--site", "lot-a", "--db", url)
    _run(capsys, "keys", "add", "st-02", "--site", "lot-b", "--db", url)
    rc, out, _ = _run(capsys, "keys", "acl", "--db", url)
    assert rc == 0
    assert "user st-01\ntopic write overstay/v1/lot-a/st-01/state" in out
    assert "topic read overstay/v1/lot-b/tariff" in out
    assert "user overstay-bridge" in out
