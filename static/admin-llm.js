// The dashboard's LLM settings (the key is write-only: only whether one is set, and its last
// four characters) and the circuit breaker with its reset button.
import { $, fmtTime } from "./dom.js";
import { api } from "./admin-api.js";

let formDirty = false;
for (const id of ["llm-provider", "llm-model", "llm-base-url", "llm-key"]) $(id).addEventListener("input", () => (formDirty = true));

/** Reads the settings into the form (unless the admin is editing it) and the circuit. */
export async function loadLlm() {
  const llm = await api("GET", "/admin/api/llm");
  if (!formDirty) {
    $("llm-provider").value = llm.provider;
    $("llm-model").value = llm.model;
    $("llm-base-url").value = llm.base_url;
  }
  $("llm-key-state").textContent = llm.api_key_set ? `a key is set${llm.api_key_last4 ? `, ending in …${llm.api_key_last4}` : ""}` : "no key set";
  $("llm-key-state").dataset.set = llm.api_key_set;
  $("llm-last-error").textContent = llm.last_error || "none";
  $("llm-notice").textContent = llm.notice || "";
  $("llm-notice").hidden = !llm.notice;
  renderCircuit(llm.circuit);
  return llm;
}

/** The circuit breaker's state and when it opened or half-opens. */
export function renderCircuit(c) {
  const state = $("circuit-state");
  state.dataset.state = c.state;
  state.textContent = c.state.replace("_", "-");
  const parts = [`failures in window: ${c.failures}`];
  if (c.opened_at) parts.push(`opened ${fmtTime(c.opened_at)}`);
  if (c.resets_at) parts.push(`half-opens ${fmtTime(c.resets_at)}`);
  $("circuit-detail").textContent = parts.join(" · ");
}

$("circuit-reset").addEventListener("click", async () => {
  try {
    const reply = await api("POST", "/admin/api/llm/circuit/reset");
    renderCircuit(reply.circuit);
    $("circuit-msg").textContent = "circuit closed";
  } catch (err) {
    $("circuit-msg").textContent = err.message;
  }
});

$("llm-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("llm-error").textContent = "";
  const body = { provider: $("llm-provider").value, model: $("llm-model").value.trim(), base_url: $("llm-base-url").value.trim() };
  const key = $("llm-key").value.trim();
  if (key) body.api_key = key;
  await saveLlm(body);
});

$("llm-key-clear").addEventListener("click", () => saveLlm({ api_key: null }));

async function saveLlm(body) {
  try {
    await api("PUT", "/admin/api/llm", body);
    $("llm-key").value = "";
    formDirty = false;
    await loadLlm();
    $("llm-saved").textContent = "saved";
    setTimeout(() => ($("llm-saved").textContent = ""), 2500);
  } catch (err) {
    $("llm-error").textContent = err.message;
  }
}
