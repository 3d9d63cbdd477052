// "approve or deny" Flow, first operation: turn the confirmation dialog into the bridge's
// POST /ridendine/refunds/<id>/approve (or /deny) path and body.
//
// Runs in Directus's "Run Script" sandbox (isolated-vm): no require, no network. Who may decide
// is NOT checked here: any signed-in user can trigger a manual Flow, so the request operation
// sends the user's id (X-Directus-User-Id: $accountability.user) and refund-bridge applies that
// user's rights (only admins may decide; docs/directus.md). A repeated decision changes nothing:
// the bridge answers 409 refund_not_awaiting_approval.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

const MAX_COMMENT = 500;
const DECISIONS = { approve: 'approved', deny: 'denied' };

function fail(error) {
  return { ok: false, error, path: null, body: null, refund_id: null, done: 'decided' };
}

module.exports = async function build(data) {
  const body = (data && data.$trigger && data.$trigger.body) || {};
  const accountability = (data && data.$accountability) || {};
  const keys = Array.isArray(body.keys) ? body.keys : [];
  if (keys.length !== 1) return fail('Select exactly one refund.');
  const refundId = String(keys[0]);
  if (!accountability.user) return fail('Only a signed-in Directus user can decide a refund.');
  const decision = typeof body.decision === 'string' ? body.decision : '';
  if (!Object.prototype.hasOwnProperty.call(DECISIONS, decision)) {
    return fail('Choose approve or deny.');
  }
  const request = {};
  if (typeof body.comment === 'string' && body.comment.trim()) {
    request.comment = body.comment.trim().slice(0, MAX_COMMENT);
  }
  return {
    ok: true,
    error: null,
    refund_id: refundId,
    path: '/ridendine/refunds/' + encodeURIComponent(refundId) + '/' + decision,
    body: request,
    done: DECISIONS[decision],
  };
};
