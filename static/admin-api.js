// The dashboard's calls to the admin REST API, with the admin token kept in sessionStorage.

const TOKEN_KEY = "lorewire.admin";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  forget: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** A refused call: the answer's status, and its `message` when it has one. */
export class HttpError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
  }
}

/** The JSON answer of `method path` with the admin token (null for an empty body); throws HttpError. */
export async function api(method, path, body) {
  const headers = { authorization: `Bearer ${token.get() || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try {
    data = await resp.json();
  } catch {
    /* empty body */
  }
  if (!resp.ok) throw new HttpError(resp.status, data);
  return data;
}
