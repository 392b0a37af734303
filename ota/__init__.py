"""ota: over-the-air firmware updates for MQTT device fleets, orchestrated by Temporal."""
