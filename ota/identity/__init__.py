"""Device identity: each device's secret, its MQTT credentials, and the broker's users and ACLs.

Alibaba's model: a device is the triple ProductKey, DeviceName, DeviceSecret. The secret is made
when the device is registered, stored encrypted, and turned into MQTT connection parameters by
Alibaba's signing rule (`credentials`). The broker (Mosquitto's dynamic-security plugin) holds one
user per device, bound to the device's client id, with a role that lets it publish and subscribe
on its own topics only (`accounts`); our database is the source of truth and `sync` makes the
broker agree with it (`dynsec` speaks the plugin's control topic). See docs/security.md.
"""
