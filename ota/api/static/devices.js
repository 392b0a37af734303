// Devices: the device panel (its MQTT connection parameters, the DeviceSecret on demand) and
// Disable/Enable, Rotate secret and Delete, through the same /api/v1 routes the CLI's services back.
"use strict";

const devui = {};

devui.form = () => document.getElementById("device-form");

devui.url = function (name, tail = "") {
  const pk = document.getElementById("device-table").dataset.product;
  return `/api/v1/products/${encodeURIComponent(pk)}/devices/${encodeURIComponent(name)}${tail}`;
};

devui.row = (name) =>
  document.querySelector(`#device-table tr[data-device="${CSS.escape(name)}"]`);

// --- The panel: opened from a row, its address (#device=NAME) can be bookmarked ------------

devui.open = async function (name) {
  const dialog = ota.open("device-dialog");
  const form = devui.form();
  form.dataset.device = name;
  dialog.querySelector(".js-device-title").textContent = name;
  devui.clear(form);
  devui.confirm(null);
  const row = devui.row(name);
  if (row) devui.showEnabled(form, row.dataset.enabled === "yes");
  history.replaceState(null, "", `#device=${encodeURIComponent(name)}`);
  try {
    await devui.load(name);
  } catch (problem) {
    if (form.dataset.device !== name) return;
    ota.show(form, ".js-loading", false);
    ota.showProblem(form, problem);
  }
};

// The secret is fetched only now, never rendered into the list page.
devui.load = async function (name) {
  const creds = await ota.api("GET", devui.url(name, "/credentials"));
  const form = devui.form();
  if (form.dataset.device !== name || !form.closest("dialog").open) return; // opened another
  devui.fill(form, creds);
};

devui.fill = function (form, creds) {
  for (const el of form.querySelectorAll("[data-cred]")) {
    const value = creds[el.dataset.cred];
    const text = el.dataset.cred === "tls" ? (value ? "Yes (mqtts)" : "No") : String(value);
    if (el.tagName === "TEXTAREA") el.value = text;
    else el.textContent = text;
  }
  // Alibaba's one Copy for the whole set: what a device's MQTT client is configured with.
  const { host, port, tls, client_id, username, password } = creds;
  form.querySelector(".js-all-params").value =
    JSON.stringify({ host, port, tls, client_id, username, password }, null, 2);
  devui.mask(form, true);
  devui.showEnabled(form, creds.enabled);
  ota.show(form, ".js-loading", false);
  ota.show(form, ".js-creds", true);
};

// Secrets do not stay in the page after the panel closes.
devui.clear = function (form) {
  ota.clearErrors(form);
  form.querySelectorAll("[data-cred]").forEach((el) => {
    if (el.tagName === "TEXTAREA") el.value = "";
    else el.textContent = "";
  });
  form.querySelector(".js-all-params").value = "";
  devui.mask(form, true);
  ota.show(form, ".js-creds", false);
  ota.show(form, ".js-loading", true);
};

devui.mask = function (form, masked) {
  const shown = form.querySelector(".js-secret");
  const secret = form.querySelector('textarea[data-cred="device_secret"]').value;
  shown.dataset.masked = masked ? "yes" : "no";
  shown.textContent = masked ? "•".repeat(16) : secret;
  form.querySelector(".js-show-secret").textContent = masked ? "Show" : "Hide";
};

devui.close = function () {
  // The close event is queued: the panel may have been opened again before it runs.
  if (devui.form().closest("dialog").open) return;
  devui.clear(devui.form());
  history.replaceState(null, "", location.pathname + location.search);
};

// --- Disable / Enable -----------------------------------------------------------------------

devui.showEnabled = function (form, enabled) {
  form.dataset.enabled = enabled ? "yes" : "no";
  form.querySelector(".js-toggle-enabled").textContent = enabled ? "Disable" : "Enable";
  ota.show(form.closest("dialog"), "h2 .js-disabled", !enabled);
};

devui.markRow = function (name, enabled) {
  const row = devui.row(name);
  if (!row) return;
  row.dataset.enabled = enabled ? "yes" : "no";
  row.querySelector(".js-disabled").hidden = enabled;
  if (!enabled && row.dataset.online === "yes") {
    // The broker has dropped it: the registry records it offline at once.
    row.dataset.online = "no";
    row.querySelector(".js-status").innerHTML = '<span class="dot"></span> Offline';
    devui.recount(0, -1);
  }
};

// The counts are the whole list's (the page shows only part of it): the server's, moved by
// what this page changed.
devui.recount = function (devices, online) {
  const counts = document.getElementById("device-counts");
  counts.dataset.devices = Number(counts.dataset.devices) + devices;
  counts.dataset.online = Number(counts.dataset.online) + online;
  counts.textContent = `${counts.dataset.devices} devices, ${counts.dataset.online} online`;
};

devui.toggleEnabled = async function () {
  const form = devui.form();
  const name = form.dataset.device;
  const enabled = form.dataset.enabled !== "yes";
  ota.clearErrors(form);
  try {
    const answer = await ota.api("PUT", devui.url(name, "/enabled"), { enabled });
    devui.showEnabled(form, answer.enabled);
    devui.markRow(name, answer.enabled);
    // "off": this installation's broker does not check identities, so nothing was dropped.
    const dropped = !answer.enabled && answer.broker === "synced" ? ": the broker dropped it" : "";
    ota.toast(`${name} ${answer.enabled ? "enabled" : "disabled"}${dropped}`);
  } catch (problem) {
    devui.failed(form, name, problem);
  }
};

// A 503 means the change was saved but the broker not told: show what the registry now holds.
devui.failed = async function (form, name, problem) {
  ota.showProblem(form, problem);
  try {
    await devui.load(name);
    devui.markRow(name, form.dataset.enabled === "yes");
  } catch {
    // the problem above already says what went wrong
  }
};

// --- Rotate secret and Delete: confirmed first ----------------------------------------------

const CONFIRM = {
  rotate: {
    text: (name) => `Rotate the DeviceSecret of ${name}? The old secret and password stop ` +
      "working at once: the broker drops the device, and it connects again only with the new " +
      "parameters shown next.",
    ok: "Rotate secret",
  },
  delete: {
    text: (name) => `Delete ${name}? The broker drops it at once and its finished tasks are ` +
      "forgotten. A device with an active update task is not deleted: cancel the task first.",
    ok: "Delete device",
  },
};

devui.confirm = function (action) {
  const form = devui.form();
  form.dataset.confirm = action || "";
  ota.clearErrors(form);
  ota.show(form, ".js-confirm", Boolean(action));
  ota.show(form, ".js-actions", !action);
  if (!action) return;
  form.querySelector(".js-confirm-text").textContent = CONFIRM[action].text(form.dataset.device);
  form.querySelector(".js-confirm-ok").textContent = CONFIRM[action].ok;
};

devui.submit = async function (event) {
  event.preventDefault();
  const form = event.target;
  const name = form.dataset.device;
  const action = form.dataset.confirm;
  if (!action) return;
  const ok = form.querySelector(".js-confirm-ok");
  ok.disabled = true;
  try {
    if (action === "rotate") await devui.rotate(form, name);
    else await devui.remove(form, name);
  } catch (problem) {
    if (action === "rotate") devui.failed(form, name, problem);
    else ota.showProblem(form, problem); // e.g. 409: an active task, in the API's words
  } finally {
    ok.disabled = false;
  }
};

devui.rotate = async function (form, name) {
  const creds = await ota.api("POST", devui.url(name, "/rotate-secret"));
  devui.confirm(null);
  devui.fill(form, creds);
  ota.toast(`${name}: new secret; give the device its new parameters`);
};

devui.remove = async function (form, name) {
  await ota.api("DELETE", devui.url(name));
  form.closest("dialog").close();
  const row = devui.row(name);
  if (row) {
    row.remove();
    devui.recount(-1, row.dataset.online === "yes" ? -1 : 0);
  }
  ota.toast(`${name} deleted`);
};

// --- Import Devices: a CSV, all or none, as `ota device import` ------------------------------

devui.openImport = function () {
  const dialog = ota.open("import-dialog");
  const form = dialog.querySelector("form");
  form.reset();
  delete form.dataset.imported;
  ota.show(form, ".js-choose", true);
  ota.show(form, ".js-imported", false);
  ota.show(form, ".js-import-ok", true);
};

devui.submitImport = async function (event) {
  event.preventDefault();
  const form = event.target;
  ota.clearErrors(form);
  const file = form.file.files[0];
  if (!file) {
    ota.showProblem(form, { field: "file", detail: "choose a CSV file" });
    return;
  }
  const pk = document.getElementById("device-table").dataset.product;
  const ok = form.querySelector(".js-import-ok");
  ok.disabled = true;
  try {
    const answer = await ota.send("POST",
      `/api/v1/products/${encodeURIComponent(pk)}/devices/import`, "text/csv", await file.text());
    devui.showImported(form, pk, answer);
  } catch (problem) {
    ota.showProblem(form, problem); // "line 3: ..." under the file
  } finally {
    ok.disabled = false;
  }
};

devui.showImported = function (form, pk, answer) {
  form.dataset.imported = "yes";
  const noun = answer.added === 1 ? "device" : "devices";
  form.querySelector(".js-imported-text").textContent = `Imported ${answer.added} ${noun}.`;
  const lines = ["name,secret", ...answer.devices.map((d) => `${d.name},${d.secret}`)];
  const link = form.querySelector(".js-secrets");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.download = `${pk}-devices.csv`;
  ota.show(form, ".js-choose", false);
  ota.show(form, ".js-import-ok", false);
  ota.show(form, ".js-imported", true);
};

// --- Wiring ---------------------------------------------------------------------------------

document.addEventListener("click", (event) => {
  const link = event.target.closest(".js-device");
  if (link) {
    event.preventDefault();
    devui.open(link.closest("tr").dataset.device);
    return;
  }
  const form = event.target.closest("#device-form");
  if (!form) return;
  if (event.target.closest(".js-show-secret")) {
    devui.mask(form, form.querySelector(".js-secret").dataset.masked !== "yes");
  } else if (event.target.closest(".js-toggle-enabled")) devui.toggleEnabled();
  else if (event.target.closest(".js-rotate")) devui.confirm("rotate");
  else if (event.target.closest(".js-delete")) devui.confirm("delete");
  else if (event.target.closest(".js-confirm-back")) devui.confirm(null);
});

// A bookmarked or pasted #device=NAME opens its panel (our own links only replace the address).
// A hashchange reads the address it went to: a panel's pending close event may have cleared
// location.hash in between.
devui.fromHash = function (event) {
  const hash = event && event.newURL ? new URL(event.newURL).hash : location.hash;
  const linked = hash.match(/^#device=(.+)$/);
  if (linked && !devui.form().closest("dialog").open) devui.open(decodeURIComponent(linked[1]));
};

document.addEventListener("DOMContentLoaded", () => {
  const imports = document.getElementById("import-form");
  if (imports) {
    imports.addEventListener("submit", devui.submitImport);
    document.getElementById("import-devices").addEventListener("click", devui.openImport);
    // The list shows the new devices once the dialog is closed.
    imports.closest("dialog").addEventListener("close", () => {
      if (imports.dataset.imported) location.reload();
    });
  }
  const form = devui.form();
  if (!form) return;
  form.addEventListener("submit", devui.submit);
  form.closest("dialog").addEventListener("close", devui.close);
  window.addEventListener("hashchange", devui.fromHash);
  devui.fromHash();
});
