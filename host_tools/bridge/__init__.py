# The billing bridge: verified, exactly-once ingest of station messages from MQTT into SQLite or PostgreSQL (docs/bridge.md).
