// Calls to the coordinator's API with the browser session's bearer token (if any).
//
// The token is entered once per browser tab session and kept in sessionStorage; a coordinator
// without tokens (the embedded `spatiallock run`) never asks for one.

const KEY = 'spatiallock.token';

// The token when sessionStorage is unavailable (it then lasts until the page is left).
let memoryToken = '';

/** An error answer of the API: its status and the message of its JSON body. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token of this tab's session ('' when none was given). */
export function token() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

/** Keeps `value` as this session's token ('' forgets it). */
export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage off: kept in memoryToken only.
  }
  memoryToken = value;
}

function currentToken() {
  return token() || memoryToken;
}

/**
 * `fetch` of an API path. Resolves to the parsed JSON body (or the Response with `raw`);
 * rejects with an ApiError naming what went wrong (status 0 when unreachable).
 */
export async function api(path, { method = 'GET', body, raw = false } = {}) {
  const headers = { Accept: raw ? '*/*' : 'application/json' };
  const secret = currentToken();
  if (secret) headers.Authorization = `Bearer ${secret}`;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, `the coordinator did not answer (${e.message})`);
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const error = await response.json();
      if (error && typeof error.error === 'string') message = error.error;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new ApiError(response.status, message);
  }
  return raw ? response : response.json();
}

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);
