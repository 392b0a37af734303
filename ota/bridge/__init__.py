"""The bridge: the one service that listens to devices over MQTT (design.md, "Who writes what").

Rules it follows:

- Delivery: MQTT v5, QoS 1, shared subscriptions `$share/{bridge_share_group}/...` (several
  bridges split the load), a persistent session (fixed client id, clean_start False, a session
  expiry) so the broker queues reports while a bridge restarts. Messages are acked only after
  their effects are committed and their signals sent: at-least-once, so every write is idempotent.
  With MQTT 3.1.1 (the embedded broker) it subscribes without `$share` and runs alone.
  `products=[...]` limits a bridge to some products' devices (tests on a shared broker do so).
- Memory: at most 2 x `max_batch` messages wait in the bridge (`inbox.py`); beyond that it stops
  reading and the broker holds the rest, so a fleet's connection storm costs no more memory
  than a busy minute.
- Batching: messages are gathered for `bridge_flush_seconds` (or up to `max_batch`) and written in
  ONE transaction: devices' online/last_seen, reported versions per module (upsert), each task's
  latest progress, and the guarded moves to `in_upgrade` (first progress) and `updated` (target
  version reported while pushed/in_upgrade).
- Signals, after the commit: `report(updated)`; `report(failed, reason)` for progress -1..-4 or a
  version `judge_version_report` calls failed (the bridge writes no failure: the workflow decides
  between retry and failed); `online` when an offline device with a waiting `to_be_pushed` task
  shows up; `devices_arrived` to a dynamic batch (one per flush) when devices report a version
  it updates from and have no task in it (`arrivals.py`). Intermediate percentages are never
  signalled; a missing workflow is logged, not fatal.
  While Temporal is unreachable a flush waits for its signals (retrying, up to every 30 s) before
  acking its messages: the inbox fills and stops reading, the broker keeps the rest, and a
  bridge that dies meanwhile gets them again (`signals.py`, counted in `signal_retries`).
- Presence: any message from a device means online. Our SDK publishes a retained "online" to
  `protocol.status_topic` on connect and has the broker publish "offline" (its last will) when it
  goes away. Devices on other SDKs are seen online by their reports and never marked offline.
- firmware/get is answered with the device's pending push data (fresh URL), or `{}`.
- Unregistered devices are not auto-registered (a device must be provisioned, as on Alibaba's
  platform): their messages are logged and counted in `stats["unknown_device"]`.
- A malformed message, or one reporting a version or module the API would refuse
  (ota.domain's rules), is counted in `stats["rejected"]`, logged and acked when parsed, so it
  never reaches the flush's transaction; a message the database still refuses is isolated and
  dropped; a lost broker or database means reconnecting with backoff, and redelivery.
- Lost session: when the broker says (CONNACK session present = 0) it had no session for the
  bridge, device reports may have been dropped; every task in flight is pushed again, paced and
  in the background, so finished devices report their version again (`reconcile.py`).
"""

from ota.bridge.service import Bridge

__all__ = ["Bridge"]
