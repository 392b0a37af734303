// Firmware Update dialogs: Add Firmware (upload with progress), Validate Firmware, Batch Update.
"use strict";

const fwui = {};

fwui.productUrl = (pk, tail) => `/api/v1/products/${encodeURIComponent(pk)}/${tail}`;

fwui.versions = (pk, module) =>
  ota.api("GET", fwui.productUrl(pk, `versions?module=${encodeURIComponent(module)}`));

// The first devices only: a fleet can be 100,000, and a batch selects at most 100 by name.
fwui.DEVICES_SHOWN = 200;

fwui.devices = async function (pk, module, versions) {
  const query = new URLSearchParams({ module, limit: fwui.DEVICES_SHOWN });
  versions.forEach((v) => query.append("version", v));
  return (await ota.api("GET", fwui.productUrl(pk, `devices?${query}`))).items;
};

fwui.deviceChoices = (devices) =>
  devices.map((d) => ({ value: d.name, label: `${d.name} (${d.online ? "online" : "offline"})` }));

// --- Add Firmware ---------------------------------------------------------------------------

fwui.addForm = () => document.getElementById("add-form");

fwui.module = function (form) {
  const choice = form.module_choice.value;
  return choice === "__add__" ? form.module_new.value.trim() : choice;
};

fwui.loadProduct = async function () {
  const form = fwui.addForm();
  const pk = form.product_key.value;
  const select = form.module_choice;
  select.querySelectorAll("option:not([value='__add__'])").forEach((o) => o.remove());
  const modules = pk ? await ota.api("GET", fwui.productUrl(pk, "modules")) : ["default"];
  for (const m of modules.reverse()) select.prepend(new Option(m, m));
  select.value = modules.includes("default") ? "default" : modules[modules.length - 1];
  await fwui.loadAddVersions();
};

fwui.loadAddVersions = async function () {
  const form = fwui.addForm();
  const box = form.querySelector('[data-versions-for="add"]');
  form.module_new.hidden = form.module_choice.value !== "__add__";
  const pk = form.product_key.value;
  const module = fwui.module(form);
  const versions = pk && module && module !== "__add__" ? await fwui.versions(pk, module) : [];
  ota.fillChecklist(box, versions, [], pk ? "No device reports a version of this module yet."
    : "Select a product first.");
};

fwui.toggleType = function () {
  const form = fwui.addForm();
  const diff = form.querySelector('input[name="type"]:checked').value === "diff";
  ota.show(form, ".full-only", !diff);
  ota.show(form, ".diff-only", diff);
};

fwui.addFields = function (form) {
  const type = form.querySelector('input[name="type"]:checked').value;
  const fields = {
    type,
    name: form.name.value.trim(),
    product_key: form.product_key.value,
    module: fwui.module(form),
    sign_method: form.sign_method.value,
    description: form.description.value,
    ext_data: form.ext_data.value.trim(),
  };
  // The default is left out, so the check and the upload see it only when an operator chose.
  if (form.sign_with.value !== "current") fields.sign_with = form.sign_with.value;
  if (type === "full") fields.version = form.version.value.trim();
  else {
    fields.src_versions = ota.checked(form, "src_versions");
    fields.dest_version = form.dest_version.value.trim();
  }
  return fields;
};

fwui.submitAdd = async function (event) {
  event.preventDefault();
  const form = event.target;
  const fields = fwui.addFields(form);
  const file = form.file.files[0];
  ota.clearErrors(form);
  try {
    // Every rule is checked before a byte of a possibly 1,000 MB file is sent.
    await ota.api("POST", "/api/v1/firmware/check",
      { ...fields, file_name: file ? file.name : "", file_size: file ? file.size : null });
  } catch (problem) {
    if (problem.field === "file" && !file) problem.detail = "Choose a firmware file.";
    ota.showProblem(form, problem);
    return;
  }
  fwui.upload(form, fields, file);
};

fwui.upload = function (form, fields, file) {
  const data = new FormData();
  for (const [name, value] of Object.entries(fields)) {
    if (Array.isArray(value)) value.forEach((v) => data.append(name, v));
    else if (value !== "") data.append(name, value);
  }
  data.append("file", file); // last: the server checks the fields before reading the file
  const bar = form.querySelector("#upload-progress");
  const percent = form.querySelector("#upload-percent");
  const submit = form.querySelector('button[type="submit"]');
  form.querySelector(".upload").hidden = false;
  submit.disabled = true;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/v1/firmware");
  xhr.setRequestHeader("X-OTA-Console", "1");
  xhr.upload.onprogress = (e) => {
    if (!e.lengthComputable) return;
    bar.value = Math.round((100 * e.loaded) / e.total);
    percent.textContent = `${bar.value}%`;
  };
  xhr.onload = () => {
    submit.disabled = false;
    if (xhr.status === 201) {
      percent.textContent = "Uploaded";
      location.reload();
      return;
    }
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON: a proxy's page */ }
    ota.showProblem(form, ota.problem(xhr.status, body));
  };
  xhr.onerror = () => {
    submit.disabled = false;
    ota.showProblem(form, { detail: "The upload was interrupted: try again." });
  };
  xhr.send(data);
};

// --- Validate Firmware and Batch Update: both start from a firmware row ----------------------

fwui.context = function (dialogId, button) {
  const dialog = ota.open(dialogId);
  const form = dialog.querySelector("form");
  Object.assign(form.dataset, button.dataset);
  dialog.querySelector(".js-fw-title").textContent =
    `${button.dataset.firmwareName} ${button.dataset.version}`;
  return form;
};

fwui.loadVersions = async function (form, preselect) {
  const d = form.dataset;
  let versions = (await fwui.versions(d.product, d.module)).filter((v) => v !== d.version);
  const sources = d.srcVersions ? d.srcVersions.split(",") : [];
  if (d.type === "diff") versions = sources; // a diff package applies to its sources only
  ota.fillChecklist(form.querySelector(".js-versions"), versions, preselect ? sources : [],
    "No device reports another version of this module.");
};

fwui.loadDevices = async function (form) {
  const box = form.querySelector(".js-devices");
  const versions = ota.checked(form, form.querySelector(".js-versions").dataset.name);
  if (form.id === "validate-form" && !versions.length) {
    ota.fillChecklist(box, [], [], "Select versions first.");
    return;
  }
  const devices = await fwui.devices(form.dataset.product, form.dataset.module, versions);
  ota.fillChecklist(box, fwui.deviceChoices(devices), [], "No devices on these versions.");
};

fwui.openValidate = async function (button) {
  const form = fwui.context("validate-dialog", button);
  form.reset();
  await fwui.loadVersions(form, false);
  await fwui.loadDevices(form);
};

fwui.submitValidate = async function (event) {
  event.preventDefault();
  const form = event.target;
  const body = {
    device_names: ota.checked(form, "device_names"),
    timeout_minutes: ota.int(form.timeout_minutes.value),
  };
  try {
    await ota.api("POST", `/api/v1/firmware/${form.dataset.firmwareId}/verifications`, body);
    form.closest("dialog").close();
    ota.toast("Validation started");
    setTimeout(() => location.reload(), 800);
  } catch (problem) {
    ota.showProblem(form, problem);
  }
};

fwui.openBatch = async function (button) {
  const form = fwui.context("batch-dialog", button);
  form.reset();
  form.querySelector(".js-preview").hidden = true;
  fwui.batchLayout();
  await fwui.loadVersions(form, true);
};

fwui.batchLayout = function () {
  const form = document.getElementById("batch-form");
  const dynamic = form.policy.value === "dynamic";
  if (dynamic) form.querySelector('input[name="target"][value="all"]').checked = true;
  ota.show(form, ".static-only", !dynamic);
  const target = form.querySelector('input[name="target"]:checked').value;
  ota.show(form, ".phased-only", target === "phased");
  ota.show(form, ".selected-only", target === "selected");
  const scheduled = !dynamic && form.querySelector('input[name="when"]:checked').value !== "now";
  ota.show(form, ".scheduled-only", scheduled);
  if (scheduled && !form.scheduled_at.value) {
    const soon = new Date(Date.now() + 60 * 60 * 1000 - new Date().getTimezoneOffset() * 60000);
    form.scheduled_at.value = soon.toISOString().slice(0, 16);
  }
};

fwui.batchBody = function (form) {
  const target = form.querySelector('input[name="target"]:checked').value;
  const dynamic = form.policy.value === "dynamic";
  const body = {
    policy: form.policy.value,
    src_versions: ota.checked(form, "src_versions"),
    target,
  };
  // The options the form renders from the model (ota/api/batch_form.py), under their API names.
  form.querySelectorAll("[data-option]").forEach((el) => {
    const kind = el.dataset.option;
    if (kind === "json") body[el.name] = JSON.parse(el.value);
    else if (kind === "text") body[el.name] = el.value.trim() || null;
    else body[el.name] = ota.number(el.value);
  });
  if (target === "phased") body.percent = ota.int(form.percent.value);
  if (target === "selected") body.device_names = ota.checked(form, "device_names");
  const when = form.querySelector('input[name="when"]:checked').value;
  if (!dynamic && when === "scheduled") {
    const local = form.scheduled_at.value;
    const at = new Date(local);
    body.scheduled_at = local && !isNaN(at) ? at.toISOString() : local;
  }
  return body;
};

// Preview: the same request with ?dry_run=true. The API checks it as it would the batch and
// answers the counts; nothing is created until OK.
fwui.previewBatch = async function (form) {
  const out = form.querySelector(".js-preview");
  out.hidden = true;
  try {
    const p = await ota.api("POST",
      `/api/v1/firmware/${form.dataset.firmwareId}/batches?dry_run=true`, fwui.batchBody(form));
    ota.clearErrors(form);
    const versions = Object.entries(p.by_source_version).map(([v, n]) => `${v}: ${n}`);
    const lines = [
      `Would update ${p.targets} devices` +
        (p.percent ? ` (${p.percent}% of ${p.matching} matching)` : "") +
        (versions.length ? `; from ${versions.join(", ")}` : ""),
      `Skipped (already on ${p.target_version}): ${p.skipped}. Offline (pushed when they ` +
        `come online): ${p.offline}. In another batch (would fail busy): ${p.busy}.`,
    ];
    if (p.phases.length) {
      lines.push("Phases (devices started by each, cumulative): " +
        p.phases.map((ph) => `${ph.percent}%: ${ph.devices} (+${ph.added})`).join(", ") + ".");
    }
    // The ETA's line and notes come from the API (ota/services/rollout_eta.py), in UTC.
    if (p.rate_per_minute === null) {
      lines.push("No rate: pushed as fast as they can be started" + (p.windows
        ? `, the first when the window opens (${new Date(p.first_push_at).toLocaleString()}).`
        : "."));
    } else {
      lines.push(`Pushes at ${p.rate_per_minute} devices per minute: ${p.eta}.`);
    }
    // Without an ETA the first note says why: said already (unthrottled, or in the line).
    const notes = p.last_push_at === null ? p.eta_notes.slice(1) : p.eta_notes;
    lines.push(...notes.map((note) => `Note: ${note}.`));
    out.replaceChildren(...lines.map((text) => {
      const line = document.createElement("p");
      line.textContent = text;
      return line;
    }));
    out.hidden = false;
  } catch (problem) {
    ota.showProblem(form, problem);
  }
};

fwui.submitBatch = async function (event) {
  event.preventDefault();
  const form = event.target;
  try {
    const batch = await ota.api("POST", `/api/v1/firmware/${form.dataset.firmwareId}/batches`,
      fwui.batchBody(form));
    location = `/batches/${encodeURIComponent(batch.id)}`;
  } catch (problem) {
    ota.showProblem(form, problem);
  }
};

// --- Delete: confirmed first; a refusal (an active batch) is shown in the dialog -------------

fwui.openDelete = function (button) {
  const dialog = ota.open("delete-firmware-dialog");
  const form = dialog.querySelector("form");
  form.dataset.firmwareId = button.dataset.firmwareId;
  dialog.querySelector(".js-fw-title").textContent =
    `${button.dataset.firmwareName} (ID ${button.dataset.firmwareId})`;
};

fwui.submitDelete = async function (event) {
  event.preventDefault();
  const form = event.target;
  const id = form.dataset.firmwareId;
  const ok = form.querySelector('button[type="submit"]');
  ok.disabled = true;
  try {
    await ota.api("DELETE", `/api/v1/firmware/${encodeURIComponent(id)}`);
    form.closest("dialog").close();
    const table = document.getElementById("firmware-table");
    // On its own page (no list): that page is gone with it, back to the list.
    if (!table) {
      location.assign("/firmware");
      return;
    }
    table.querySelector(`tr[data-firmware-id="${CSS.escape(id)}"]`)?.remove();
    if (!table.querySelector("tbody tr")) location.reload(); // the list's empty-state text
    ota.toast(`Firmware ${id} deleted`);
  } catch (problem) {
    ota.showProblem(form, problem);
  } finally {
    ok.disabled = false;
  }
};

// While a firmware is being validated its row changes by itself: refresh, unless a dialog is open.
fwui.refreshWhileVerifying = function () {
  if (!document.querySelector('#firmware-table tr[data-state="verifying"]')) return;
  setInterval(() => {
    if (!document.querySelector("dialog[open]")) location.reload();
  }, 3000);
};

document.addEventListener("DOMContentLoaded", () => {
  const add = fwui.addForm();
  if (add) {
    add.addEventListener("submit", fwui.submitAdd);
    add.product_key.addEventListener("change", fwui.loadProduct);
    add.module_choice.addEventListener("change", fwui.loadAddVersions);
    add.querySelectorAll('input[name="type"]').forEach((r) =>
      r.addEventListener("change", fwui.toggleType));
  }
  const validate = document.getElementById("validate-form");
  validate?.addEventListener("submit", fwui.submitValidate);
  validate?.querySelector(".js-versions").addEventListener("change", () =>
    fwui.loadDevices(validate));
  const batch = document.getElementById("batch-form");
  if (batch) {
    batch.addEventListener("submit", fwui.submitBatch);
    batch.querySelector(".js-preview-batch").addEventListener("click", () =>
      fwui.previewBatch(batch));
    batch.addEventListener("change", (e) => {
      batch.querySelector(".js-preview").hidden = true; // its numbers are for the old choices
      fwui.batchLayout();
      if (e.target.name === "src_versions" || e.target.value === "selected") {
        fwui.loadDevices(batch);
      }
    });
  }
  document.getElementById("delete-firmware-form")?.addEventListener("submit", fwui.submitDelete);
  document.addEventListener("click", (e) => {
    const d = e.target.closest(".js-delete-firmware");
    if (d) fwui.openDelete(d);
    const v = e.target.closest(".js-validate");
    if (v) fwui.openValidate(v);
    const b = e.target.closest(".js-batch");
    if (b) fwui.openBatch(b);
  });
  fwui.refreshWhileVerifying();
});
