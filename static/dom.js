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
