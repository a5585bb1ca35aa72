# Shared pytest fixtures: a real Mosquitto per test that wants one.
import pytest

from tests.broker import Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh broker on a free loopback port; the test may kill/restart it."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.kill()
