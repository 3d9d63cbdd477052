// "approve or deny" Flow: the bridge did not record the decision; say why, in plain words, for
// the user's notification and the Flow's answer.
//
// data.send is what the request operation left: {status, data: <problem+json>} when the
// bridge answered with an error (403 for a user who is not an admin, 409 for a refund that is
// not waiting for approval), or an error object when it could not be reached at all.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

module.exports = async function explain(data) {
  const failure = (data && data.send) || {};
  const refundId = data && data.build ? data.build.refund_id : '';
  if (Number.isInteger(failure.status)) {
    const problem = failure.data && typeof failure.data === 'object' ? failure.data : {};
    const detail = typeof problem.detail === 'string' ? problem.detail : 'no reason given';
    const code = typeof problem.code === 'string' ? problem.code : 'error';
    return {
      ok: false,
      status: failure.status,
      code,
      refund_id: refundId,
      message: `refund-bridge did not record the decision: ${detail} (${code}, HTTP ${failure.status}).`,
    };
  }
  const reason = typeof failure.message === 'string' ? failure.message : 'no answer';
  return {
    ok: false,
    status: null,
    code: 'bridge_unreachable',
    refund_id: refundId,
    message: `refund-bridge could not be reached (${reason}); nothing was decided. Try again ` +
      'later, or ask whoever runs refund-bridge to check BRIDGE_PUBLIC_URL.',
  };
};
