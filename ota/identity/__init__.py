"""Device identity: each device's secret, its MQTT credentials, and the broker's users and ACLs.

Alibaba's model: a device is the triple ProductKey, DeviceName, DeviceSecret. The secret is made
when the device is registered, stored encrypted, and turned into MQTT connection parameters by
Alibaba's signing rule (`credentials`). The broker holds one user per device that may publish and
subscribe on its own topics only (`accounts`): in our Mosquitto plugin ota_auth (`plugin/`,
`plugin_build`, `ota_auth`), which checks the signature at each connect, or in Mosquitto's
dynamic-security plugin (`dynsec`), the fallback. Our database is the source of truth and `sync`
makes the broker agree with it over the plugin's control topic (`control`). See
docs/security.md.
"""
