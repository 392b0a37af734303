"""A device on Alibaba's own Python SDK (aliyun-iot-linkkit 1.2.13), used as its docs show.

Runs in a venv of its own (LinkKit needs paho-mqtt<2). Writes what happens as JSON lines to
EVENTS and exits after reporting its new version (or on a timeout).

    python device.py PK DN PORT VERSION WORKDIR EVENTS push|query|connect

Credentials come from the environment: OTA_LK_USERNAME, OTA_LK_CLIENT_ID and OTA_LK_PASSWORD
(LinkKit's "direct" mode, the parameters `ota device credentials` shows, as Alibaba's console
does), else OTA_LK_SECRET (its triple mode: it signs a password with a fresh timestamp at every
connect). `connect` only records whether the broker let it in, then exits.
"""

import json
import os
import sys
import threading
import time

from linkkit import linkkit

pk, dn, port, version, workdir, events_path, mode = sys.argv[1:8]
done = threading.Event()
updates_left = int(os.environ.get("OTA_LK_UPDATES", "1"))
updates_lock = threading.Lock()


def event(kind, **fields):
    with open(events_path, "a") as f:
        f.write(json.dumps({"event": kind, **fields}) + "\n")


direct = {
    key: os.environ.get(f"OTA_LK_{key.upper()}") for key in ("username", "client_id", "password")
}
if all(direct.values()):
    lk = linkkit.LinkKit(
        host_name="127.0.0.1", product_key=pk, device_name=dn, device_secret="", **direct
    )
else:  # an anonymous broker takes any credentials; LinkKit signs them with HMAC-SHA1
    secret = os.environ.get("OTA_LK_SECRET", "s3cr3t")
    lk = linkkit.LinkKit(
        host_name="127.0.0.1", product_key=pk, device_name=dn, device_secret=secret
    )
lk.config_mqtt(port=int(port), secure="")  # "": plain TCP, securemode=3 in the client id
upgrade_topic = f"/ota/device/upgrade/{pk}/{dn}"
reply_topic = f"/sys/{pk}/{dn}/thing/ota/firmware/get_reply"
progress_topic = f"/ota/device/progress/{pk}/{dn}"


def on_connect(session_flag, rc, userdata):
    event("connected", rc=rc)
    if mode == "connect" or rc != 0:
        os._exit(0 if rc == 0 else 3)
    # Alibaba's broker subscribes devices to these by itself; Mosquitto does not.
    lk.subscribe_topic([(upgrade_topic, 1), (reply_topic, 1)])


def on_subscribe_topic(mid, granted_qos, userdata):
    lk.ota_report_version(None, version)
    event("subscribed")
    if mode == "query":
        lk.query_ota_firmware()


def report(step, desc):
    payload = json.dumps({"id": str(int(time.time())), "params": {"step": str(step), "desc": desc}})
    lk.publish_topic(progress_topic, payload, 1)


def on_ota_message_arrived(
    ota_notice_type, new_version, size, url, sign_method, sign, module, extra
):
    event("ota", notice=ota_notice_type, version=new_version, size=size, sign_method=sign_method)
    threading.Thread(
        target=update, args=(new_version, size, url, sign_method, sign, module)
    ).start()


def finish_one():
    global updates_left
    with updates_lock:
        updates_left -= 1
        if updates_left <= 0:
            done.set()


def update(new_version, size, url, sign_method, sign, module):
    report(10, "downloading")
    path = os.path.join(workdir, "firmware.bin")
    rc = lk.download_ota_firmware(url, path, sign_method, sign)
    ok = rc == linkkit.LinkKit.ErrorCode.SUCCESS
    event("downloaded", ok=ok, rc=str(rc), bytes=os.path.getsize(path), size=size)
    if not ok:
        report(-3 if rc == linkkit.LinkKit.ErrorCode.OTA_DIGEST_MISMATCH else -2, "failed")
        finish_one()
        return
    report(100, "installed")
    lk.ota_report_version(None if module == "default" else module, new_version)
    event("reported", version=new_version)
    finish_one()


lk.on_connect = on_connect
lk.on_subscribe_topic = on_subscribe_topic
lk.on_ota_message_arrived = on_ota_message_arrived
lk.connect_async()
finished = done.wait(8 if mode == "connect" else 60)
time.sleep(1)  # let the last QoS 0 report leave
lk.disconnect()
event("exit", finished=finished)
sys.exit(0 if finished else 1)
