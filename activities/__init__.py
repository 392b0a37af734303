"""Activities: one class per outside dependency, holding its client (database, MQTT, Temporal)."""
