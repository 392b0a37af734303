// The console's shared behaviour: API calls, dialogs, field errors, live batch details.
"use strict";

const ota = {};

// The console calls the same /api/v1 as scripts do; its HttpOnly cookie authenticates it, and
// this header (which a cross-site page cannot send) shows the call comes from our own pages.
ota.headers = { "X-OTA-Console": "1" };

ota.api = async function (method, url, body) {
  if (body === undefined) return ota.send(method, url);
  return ota.send(method, url, "application/json", JSON.stringify(body));
};

// A body the caller has already encoded (the device import's CSV); the answer is JSON.
ota.send = async function (method, url, contentType, encoded) {
  const init = { method, headers: { ...ota.headers }, credentials: "same-origin" };
  if (contentType !== undefined) {
    init.headers["Content-Type"] = contentType;
    init.body = encoded;
  }
  const response = await fetch(url, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw ota.problem(response.status, data);
  return data;
};

ota.problem = function (status, data) {
  const problem = data && typeof data === "object" ? data : {};
  problem.status = problem.status || status;
  problem.detail = problem.detail || `request failed (${status})`;
  if (status === 401) problem.detail = "Your session ended: log in again.";
  return problem;
};

ota.clearErrors = function (form) {
  form.querySelectorAll(".field-error, .form-error").forEach((el) => (el.textContent = ""));
  form.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
};

// A problem's `errors` name fields: each message goes under its field, the rest on top.
ota.showProblem = function (form, problem) {
  ota.clearErrors(form);
  const errors = problem.errors && problem.errors.length ? problem.errors
    : [{ field: problem.field, detail: problem.detail }];
  const general = [];
  for (const e of errors) {
    const slot = e.field && form.querySelector(`[data-error-for="${CSS.escape(e.field)}"]`);
    if (slot && !slot.closest("[hidden]")) {
      slot.textContent = e.detail;
      const input = slot.closest(".field")?.querySelector("input, select, textarea, .checklist");
      if (input) input.classList.add("invalid");
    } else {
      general.push(e.field ? `${e.field}: ${e.detail}` : e.detail);
    }
  }
  const top = form.querySelector(".form-error");
  if (top) top.textContent = general.join(" ");
  if (problem.status === 401) window.location = "/login?next=" + encodeURIComponent(location.pathname);
};

ota.toast = function (text) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = text;
  el.hidden = false;
  clearTimeout(ota._toast);
  ota._toast = setTimeout(() => (el.hidden = true), 4000);
};

ota.open = function (id) {
  const dialog = document.getElementById(id);
  const form = dialog.querySelector("form");
  if (form) ota.clearErrors(form);
  dialog.showModal();
  return dialog;
};

ota.show = function (root, selector, visible) {
  root.querySelectorAll(selector).forEach((el) => (el.hidden = !visible));
};

// Checkbox lists stand in for the seed's multi-selects.
ota.fillChecklist = function (box, values, checked, empty) {
  box.textContent = "";
  if (!values.length) {
    box.innerHTML = `<span class="muted"></span>`;
    box.firstChild.textContent = empty;
    return;
  }
  for (const v of values) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = box.dataset.name;
    input.value = typeof v === "string" ? v : v.value;
    input.checked = checked.includes(input.value);
    label.append(input, " " + (typeof v === "string" ? v : v.label));
    box.append(label);
  }
};

ota.checked = (root, name) =>
  [...root.querySelectorAll(`input[name="${name}"]:checked`)].map((el) => el.value);

ota.int = function (value) {
  if (value === "" || value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isInteger(n) ? n : value; // not a number: the API names the field
};

ota.number = function (value) {
  if (value === "" || value === null || value === undefined) return null;
  const n = Number(value);
  return Number.isFinite(n) ? n : value; // not a number: the API names the field
};

document.addEventListener("click", (event) => {
  const opener = event.target.closest("[data-open]");
  if (opener) ota.open(opener.dataset.open);
  const closer = event.target.closest("[data-close]");
  if (closer) closer.closest("dialog").close();
  const copy = event.target.closest(".js-copy");
  if (copy) ota.copy(copy);
  const cancel = event.target.closest(".js-cancel");
  if (cancel) ota.openCancel(cancel);
  const signal = event.target.closest(".js-batch-signal");
  if (signal) ota.signalBatch(signal);
});

// --- Pause / resume / promote a batch: one click, the state follows once the workflow has it --

ota.signalSent = { pause: "Pause sent", resume: "Resume sent", promote: "Promote sent" };

ota.signalBatch = async function (button) {
  const action = button.dataset.signal; // pause | resume | promote
  try {
    const receipt = await ota.api(
      "POST", `/api/v1/batches/${encodeURIComponent(button.dataset.batchId)}/${action}`);
    // A promote no worker could check: the batch opens its gate only if it waits at one.
    ota.toast(receipt.at_gate === false
      ? "Promote sent: no worker answered whether the batch waits at a phase gate"
      : ota.signalSent[action]);
    setTimeout(() => location.reload(), 1000);
  } catch (problem) {
    ota.toast(problem.detail);
  }
};

// --- Secure Update: the switch and the public key -------------------------------------------

ota.copy = async function (button) {
  const text = button.parentElement.querySelector(".copy-source").value;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = button.parentElement.querySelector(".copy-source");
    area.hidden = false;
    area.select();
    document.execCommand("copy");
    area.hidden = true;
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy"), 1500);
};

document.addEventListener("change", async (event) => {
  const toggle = event.target.closest(".js-secure");
  if (!toggle) return;
  const pk = toggle.dataset.product;
  const slot = document.querySelector(`[data-error-for="secure-${CSS.escape(pk)}"]`);
  slot.textContent = "";
  try {
    await ota.api("PUT", `/api/v1/products/${encodeURIComponent(pk)}/secure-update`,
      { enabled: toggle.checked });
    location.reload();
  } catch (problem) {
    toggle.checked = !toggle.checked;
    slot.textContent = problem.detail;
  }
});

// --- Cancel a batch: the seed's two choices -------------------------------------------------

ota.openCancel = function (button) {
  const dialog = ota.open("cancel-dialog");
  const form = dialog.querySelector("form");
  form.dataset.batchId = button.dataset.batchId;
  dialog.querySelector(".js-batch-title").textContent = button.dataset.batchId;
  const dynamic = button.dataset.kind === "dynamic";
  ota.show(dialog, ".static-text", !dynamic);
  ota.show(dialog, ".dynamic-text", dynamic);
  form.querySelector('input[value="scheduled"]').checked = true;
};

ota.submitCancel = async function (event) {
  event.preventDefault();
  const form = event.target;
  const scope = form.querySelector('input[name="scope"]:checked').value;
  try {
    await ota.api("POST", `/api/v1/batches/${encodeURIComponent(form.dataset.batchId)}/cancel`,
      { scope });
    form.closest("dialog").close();
    ota.toast(`Cancel (${scope}) sent`);
    setTimeout(() => location.reload(), 1000);
  } catch (problem) {
    ota.showProblem(form, problem);
  }
};

// --- Batch Details: poll the live part while the batch runs ---------------------------------

ota.pollLive = function () {
  const live = document.getElementById("live");
  if (!live) return;
  const tick = async () => {
    if (live.querySelector(".live-state")?.dataset.live !== "yes") return;
    try {
      const response = await fetch(live.dataset.src, { headers: ota.headers });
      if (response.ok) live.innerHTML = await response.text();
      // Finished: reload once, so the header (its Cancel button) matches the state.
      if (live.querySelector(".live-state")?.dataset.live !== "yes") location.reload();
    } catch {
      // the server restarts now and then; the next tick tries again
    }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
  const filters = document.getElementById("task-filters");
  filters?.addEventListener("change", () => filters.submit());
};

// --- Products -------------------------------------------------------------------------------

ota.submitProduct = async function (event) {
  event.preventDefault();
  const form = event.target;
  try {
    await ota.api("POST", "/api/v1/products",
      { product_key: form.product_key.value.trim(), name: form.name.value });
    location.reload();
  } catch (problem) {
    ota.showProblem(form, problem);
  }
};

// A message stays until its field is edited.
document.addEventListener("input", (event) => {
  const field = event.target.closest(".field");
  if (!field) return;
  field.querySelectorAll(".field-error").forEach((el) => (el.textContent = ""));
  field.querySelectorAll(".invalid").forEach((el) => el.classList.remove("invalid"));
});

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("cancel-form")?.addEventListener("submit", ota.submitCancel);
  document.getElementById("product-form")?.addEventListener("submit", ota.submitProduct);
  ota.pollLive();
});
