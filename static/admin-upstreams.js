// The dashboard's upstreams (PROTOCOL §7): each one's tier, weight, circuit, last error, calls,
// failures and latency, with a button that closes its circuit (and unparks it). Keys never come back.
import { $, el, fmtTime } from "./dom.js";
import { api } from "./admin-api.js";

function circuitCell(u) {
  const parts = [u.circuit.state.replace("_", "-")];
  if (u.circuit.failures) parts.push(`${u.circuit.failures} in window`);
  if (u.circuit.resets_at) parts.push(`half-opens ${fmtTime(u.circuit.resets_at)}`);
  if (u.retry_after_until) parts.push(`held back until ${fmtTime(u.retry_after_until)}`);
  return el("td", { dataset: { state: u.circuit.state } }, parts.join(" · "));
}

function latency(u) {
  return u.latency_ms == null ? "no call yet" : `${u.latency_ms.toFixed(1)} ms a call`;
}

function row(u) {
  const reset = el("button", { type: "button", class: "small" }, "Reset");
  reset.addEventListener("click", async () => {
    reset.disabled = true;
    try {
      await api("POST", `/admin/api/upstreams/${u.id}/circuit/reset`);
    } catch (err) {
      reset.textContent = err.message;
    }
    loadUpstreams();
  });
  const key = u.api_key_set ? `…${u.api_key_last4 || ""}` : "no key";
  return el(
    "tr",
    { dataset: { upstream: u.id } },
    el("td", {}, u.id),
    el("td", {}, `${u.provider} · ${u.model}`, el("br"), el("span", { class: "muted" }, `${u.base_url} · ${key}`)),
    el("td", {}, `${u.priority} / ${u.weight}${u.enabled ? "" : " (disabled)"}`),
    circuitCell(u),
    el("td", {}, `${u.calls} / ${u.failures}`, el("br"), el("span", { class: "muted" }, latency(u))),
    el("td", {}, u.last_error || "none"),
    el("td", {}, reset),
  );
}

/** Every upstream, by priority. */
export async function loadUpstreams() {
  const { upstreams } = await api("GET", "/admin/api/upstreams");
  const head = el("tr", {}, ...["id", "provider · model", "priority / weight", "circuit", "calls / failures", "last error", ""].map((h) => el("th", {}, h)));
  $("upstreams").replaceChildren(el("table", {}, el("thead", {}, head), el("tbody", {}, ...upstreams.map(row))));
}
