// "request refund" Flow: the bridge accepted the request; say so in plain words, with the amount
// as money (15.00 EUR, never raw cents), for the notification of the user who pressed the button.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

const STATUS_WORDS = {
  PENDING: 'sent to RideNDine',
  REQUESTED: 'waiting for an admin to approve it',
  REFUNDED: 'refunded',
  FAILED: 'failed',
  DENIED: 'denied',
};

function money(cents, currency) {
  if (!Number.isSafeInteger(cents)) return 'an unknown amount';
  const sign = cents < 0 ? '-' : '';
  const whole = Math.floor(Math.abs(cents) / 100);
  const part = String(Math.abs(cents) % 100).padStart(2, '0');
  return `${sign}${whole}.${part} ${currency || ''}`.trim();
}

module.exports = async function accepted(data) {
  const refund = (data && data.send && data.send.data && data.send.data.refund) || {};
  const status = STATUS_WORDS[refund.status] || String(refund.status || 'recorded');
  return {
    message: `refund-bridge accepted a refund of ${money(refund.amount_cents, refund.currency)} ` +
      `(${status}; refund ${refund.id}). The customer, the chef and the admins get an e-mail ` +
      'when RideNDine reports the result.',
  };
};
