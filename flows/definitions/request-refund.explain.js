// "request refund" Flow: the bridge did not accept the request; say why, in plain words, for
// the admin's notification and the Flow's answer.
//
// data.send is what the request operation left: {status, data: <problem+json>} when the
// bridge answered with an error, or an error object when it could not be reached at all.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

module.exports = async function explain(data) {
  const failure = (data && data.send) || {};
  const orderId = data && data.build && data.build.request ? data.build.request.order_id : '';
  if (Number.isInteger(failure.status)) {
    const problem = failure.data && typeof failure.data === 'object' ? failure.data : {};
    const detail = typeof problem.detail === 'string' ? problem.detail : 'no reason given';
    const code = typeof problem.code === 'string' ? problem.code : 'error';
    return {
      ok: false,
      status: failure.status,
      code,
      order_id: orderId,
      message: `refund-bridge refused the refund: ${detail} (${code}, HTTP ${failure.status}).`,
    };
  }
  const reason = typeof failure.message === 'string' ? failure.message : 'no answer';
  return {
    ok: false,
    status: null,
    code: 'bridge_unreachable',
    order_id: orderId,
    message: `refund-bridge could not be reached (${reason}); nothing was refunded. Try again ` +
      'later, or ask whoever runs refund-bridge to check BRIDGE_PUBLIC_URL.',
  };
};
