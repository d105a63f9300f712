// dom.js: the helpers both pages share (the client at / and the dashboard at /admin): element
// lookup and construction, and how times, shares and money are shown.

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/** A new element: `class`, `dataset` and attributes from `attrs`; text or nodes as children. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

/** Hours and minutes of an RFC 3339 time; "" when it is not one. */
export function timeOf(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** Date and time of an RFC 3339 time; "—" when there is none. */
export const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
/** A share as a percentage; "n/a" when there is none. */
export const pct = (x) => (x == null ? "n/a" : `${(x * 100).toFixed(1)}%`);
/** Dollars to four places. */
export const usd = (x) => `$${Number(x || 0).toFixed(4)}`;

/** What to show of a failure: its message, else its type. */
export function errorText(err) {
  return (err && (err.message || err.type)) || "something went wrong";
}

const LIMIT_HEADLINES = {
  player: "You've reached today's limit",
  project: "This project has reached its budget",
  studio: "The game has reached today's limit",
};

/**
 * What a usage limit's refusal (`error:budget_exceeded` with its `level`, `error:rate_limited`)
 * tells the player: a notice with a headline and the server's message; null for other errors.
 */
export function limitNotice(err) {
  const type = err && err.type;
  let headline;
  if (type === "error:budget_exceeded") {
    headline = LIMIT_HEADLINES[err.level] || "A usage limit was reached";
  } else if (type === "error:rate_limited") {
    const wait = /try again in ([\d.]+) ?s/.exec(err.message || "");
    headline = wait ? `Slow down: try again in ${Math.max(1, Math.ceil(Number(wait[1])))} s` : "Slow down";
  } else {
    return null;
  }
  const dataset = { code: type.slice("error:".length), ...(err.level ? { level: err.level } : {}) };
  return el("div", { class: "limit-notice", role: "status", dataset }, el("b", {}, headline), " — ", err.message || "");
}
