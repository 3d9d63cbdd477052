// "request refund" Flow, first operation: turn the confirmation dialog into the bridge's
// POST /ridendine/refunds body, its Idempotency-Key, and the user the Flow acts for.
//
// Directus lets any signed-in user trigger a manual Flow, whatever their role, so nothing here
// decides who may refund: the request carries the user who pressed the button
// (X-Directus-User-Id) and no `requested_by`, and the bridge applies that user's own rights
// (docs/directus.md, "The request refund Flow").
//
// Runs in Directus's "Run Script" sandbox (isolated-vm): no require, no network, no crypto.
// The key is the same for the same admin, order, amount, reason and comments within a
// ten-minute window, so a double click (or a second run of the same dialog) returns the first
// refund instead of starting another; the bridge answers 409 if a key is ever reused for a
// different body.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

const WINDOW_MS = 10 * 60 * 1000;
const MAX_COMMENTS = 500;

// 64-bit FNV-1a over the UTF-16 code units, as 16 hex digits. Not a secret, only a short and
// stable name for the request: a collision can at worst make the bridge answer 409.
function fnv1a64(input) {
  let hash = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  for (let i = 0; i < input.length; i += 1) {
    hash ^= BigInt(input.charCodeAt(i));
    hash = (hash * prime) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, '0');
}

function fail(error) {
  return { ok: false, error, request: null, idempotency_key: null, acting_user: null };
}

// "15.5" or "15.50" in the order's currency -> 1550 cents, by string arithmetic (no floats).
function centsOf(text) {
  const match = /^([0-9]+)(?:[.,]([0-9]{1,2}))?$/.exec(text);
  if (!match) return null;
  const cents = Number(match[1]) * 100 + Number((match[2] || '0').padEnd(2, '0'));
  return Number.isSafeInteger(cents) && cents >= 1 ? cents : null;
}

function present(value) {
  return value !== undefined && value !== null && String(value).trim() !== '';
}

module.exports = async function build(data) {
  const body = (data && data.$trigger && data.$trigger.body) || {};
  const accountability = (data && data.$accountability) || {};
  const keys = Array.isArray(body.keys) ? body.keys : [];
  if (keys.length !== 1) return fail('Select exactly one order.');
  const orderId = String(keys[0]);
  const user = accountability.user ? String(accountability.user) : null;
  if (!user) return fail('Only a signed-in Directus user can request a refund.');

  const request = { order_id: orderId, reason: body.reason };
  if (present(body.amount)) {
    const cents = centsOf(String(body.amount).trim());
    if (cents === null) return fail('The amount must be money, e.g. 15.50 (at least 0.01).');
    request.amount_cents = cents;
  } else if (present(body.amount_cents)) {
    // Callers of POST /flows/trigger may send whole cents instead of the dialog's amount.
    const text = String(body.amount_cents).trim();
    if (!/^[0-9]+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text))) {
      return fail('The amount must be a whole number of cents, at least 1.');
    }
    request.amount_cents = Number(text);
  }
  if (typeof body.reason !== 'string' || !body.reason) return fail('Choose a reason.');
  if (typeof body.comments === 'string' && body.comments.trim()) {
    request.reason_comments = body.comments.trim().slice(0, MAX_COMMENTS);
  }

  const window = Math.floor(Date.now() / WINDOW_MS);
  const fingerprint = JSON.stringify([user, orderId, request.amount_cents || null,
    request.reason, request.reason_comments || null, window]);
  return {
    ok: true,
    error: null,
    request,
    idempotency_key: 'directus-flow-request-refund-' + fnv1a64(fingerprint),
    acting_user: user,
  };
};
