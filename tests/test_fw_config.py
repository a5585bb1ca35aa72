# Stall configuration: defaults, validation, schema version, secrets, remote changes, the file on flash.
import pytest

from tests.fw_helpers import STATION_KEY, MemFs, make_cfg

from stall import config  # noqa: I001


def test_missing_file_gives_defaults_unprovisioned():
    cfg = config.load(MemFs(), "config.json")
    assert cfg == config.defaults()
    assert not config.provisioned(cfg)
    assert cfg["schema"] == config.SCHEMA and cfg["tariff"] == config.DEFAULT_TARIFF


def test_round_trip_through_flash():
    fs = MemFs()
    cfg = make_cfg(mqtt_password="s3cret", sample_ms=200)
    config.save(fs, "config.json", cfg)
    assert config.load(fs, "config.json") == cfg
    assert "config.json.tmp" not in fs.files


def test_cut_rename_falls_back_to_the_tmp_file():
    fs = MemFs()
    cfg = make_cfg()
    config.save(fs, "config.json", cfg)
    fs.files["config.json.tmp"] = fs.files.pop("config.json")  # FAT rename cut after the remove
    assert config.load(fs, "config.json") == cfg


@pytest.mark.parametrize(
    "over, key",
    [
        ({"nope": 1}, "nope"),
        ({"sample_ms": "100"}, "sample_ms"),
        ({"sample_ms": 1}, "sample_ms"),
        ({"station": "st 01"}, "station"),
        ({"station_key": "abcd"}, "station_key"),
        ({"station_key": "zz" * 16}, "station_key"),
        ({"mqtt_tls": 1}, "mqtt_tls"),
        ({"tariff": {"id": "x", "version": 1}}, "tariff"),
        ({"i_idle_ma": 7000}, "connector"),
        ({"hardware": "fpga"}, "hardware"),
        ({"meter": "abb"}, "meter"),
        ({"schema": 2}, "schema"),
        ({"journal_soft": 10**6}, "journal_hard"),
        ({"pilot_div_den": 0}, "pilot_div_den"),
    ],
)
def test_bad_values_name_the_key(over, key):
    with pytest.raises(config.ConfigError) as info:
        make_cfg(**over)
    assert info.value.key == key


def test_broken_json_is_a_config_error():
    fs = MemFs({"config.json": bytearray(b"{not json")})
    with pytest.raises(config.ConfigError):
        config.load(fs, "config.json")


def test_secrets_are_masked():
    cfg = make_cfg(mqtt_password="s3cret", wifi_password="w", pin_hash="ab" * 32)
    pub = config.public(cfg)
    for k in ("station_key", "site_key", "mqtt_password", "wifi_password", "pin_hash"):
        assert pub[k] == "***"
    assert STATION_KEY.hex() not in repr(pub) and pub["station"] == "st-01"


def test_remote_changes_only_touch_remote_keys():
    cfg = make_cfg()
    new = config.apply_remote(cfg, {"resume_hold_ms": 20000, "occupancy_ttl_s": 60})
    assert new["resume_hold_ms"] == 20000 and cfg["resume_hold_ms"] == 30000
    for bad in ({"station": "x"}, {"mqtt_host": "evil"}, {"station_key": "00" * 32}, {}, {"unknown": 1}):
        with pytest.raises(config.ConfigError):
            config.apply_remote(cfg, bad)
