// "refund result" Flow, first operation: authorise the call, then plan its e-mails.
//
// Runs in Directus's "Run Script" sandbox (isolated-vm): no require, no network. The trigger
// URL is public, so nothing is planned unless body.secret equals the bridge's
// BRIDGE_FLOW_SECRET, which `refund-bridge flows sync` writes into EXPECTED_SECRET below
// (left as the placeholder, the script refuses every call). The answer never carries the
// request: the Flow's last operation returns only {ok, kind, sent, error}.
//
// Directus renders double-brace placeholders in operation options, this code included:
// never write two opening braces in a row here.
'use strict';

const EXPECTED_SECRET = "@param:flow_secret";
const MIN_SECRET_LENGTH = 16;
const EMAIL = /^[^\s@,;:<>()"'[\]\\]+@[^\s@,;:<>()"'[\]\\]+\.[^\s@,;:<>()"'[\]\\]+$/;

function sameSecret(expected, given) {
  // No early exit: the time taken does not tell how much of the secret was right.
  let diff = expected.length ^ given.length;
  for (let i = 0; i < expected.length; i += 1) {
    diff |= expected.charCodeAt(i) ^ (given.charCodeAt(i % Math.max(given.length, 1)) || 0);
  }
  return diff === 0;
}

function authorised(body) {
  const given = typeof body.secret === 'string' ? body.secret : '';
  const configured =
    EXPECTED_SECRET.length >= MIN_SECRET_LENGTH && !EXPECTED_SECRET.startsWith('@param:');
  return configured && sameSecret(EXPECTED_SECRET, given);
}

function text(value, max) {
  if (value === null || value === undefined) return '';
  return String(value).slice(0, max);
}

function oneLine(value, max) {
  return text(value, max).replace(/[\r\n\t]+/g, ' ').trim();
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function html(value) {
  return String(value).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);
}

function address(value) {
  if (typeof value !== 'string') return null;
  const trimmed = value.trim();
  return trimmed.length <= 254 && EMAIL.test(trimmed) ? trimmed : null;
}

function addresses(values) {
  const list = (Array.isArray(values) ? values : [values]).map(address).filter(Boolean);
  return Array.from(new Set(list));
}

function mail(to, subject, paragraphs) {
  return {
    to,
    subject: oneLine(subject, 250),
    body: paragraphs.map((p) => '<p>' + p + '</p>').join('\n'),
  };
}

function amountDisplay(body, refund) {
  if (typeof body.amount_display === 'string' && body.amount_display.trim()) {
    return oneLine(body.amount_display, 64);
  }
  const cents =
    refund.status === 'REFUNDED' && Number.isInteger(refund.refunded_amount_cents)
      ? refund.refunded_amount_cents
      : refund.amount_cents;
  if (!Number.isInteger(cents)) return 'the requested amount';
  const currency = typeof refund.currency === 'string' ? ' ' + oneLine(refund.currency, 8) : '';
  return (cents / 100).toFixed(2) + currency;
}

function plan(kind) {
  return { authorized: true, ok: true, kind, error: null, customer: null, chef: null, admins: null };
}

function invalid(kind, error) {
  return Object.assign(plan(kind), { ok: false, error: 'invalid_request: ' + error });
}

function refundResult(body) {
  const refund = body.refund && typeof body.refund === 'object' ? body.refund : {};
  const order = body.order && typeof body.order === 'object' ? body.order : {};
  const recipients = body.recipients && typeof body.recipients === 'object' ? body.recipients : {};
  const status = refund.status;
  if (status !== 'REFUNDED' && status !== 'FAILED') {
    return invalid('refund_result', 'refund.status must be REFUNDED or FAILED');
  }
  const orderId = oneLine(order.id || refund.order_id, 255);
  if (!orderId) return invalid('refund_result', 'order.id is required');
  const amount = amountDisplay(body, refund);
  const refunded = status === 'REFUNDED';
  const o = html(orderId);
  const a = html(amount);
  const result = plan('refund_result');

  const customer = address(recipients.customer);
  if (customer) {
    result.customer = refunded
      ? mail(customer, `Your refund of ${amount} for order ${orderId}`, [
          'Hello,',
          `we have refunded <strong>${a}</strong> for your order <strong>${o}</strong>.`,
          'The money goes back to the card or account you paid with; depending on your bank it ' +
            'can take a few business days to show.',
          'Thank you for ordering with COOCO.',
        ])
      : mail(customer, `Your refund for order ${orderId} did not go through`, [
          'Hello,',
          `the refund of <strong>${a}</strong> for your order <strong>${o}</strong> ` +
            'did not go through.',
          'Our support team has been told and will follow up with you shortly; there is ' +
            'nothing you need to do now.',
          'We are sorry for the trouble.',
        ]);
  }

  const chef = address(recipients.chef);
  if (chef) {
    result.chef = refunded
      ? mail(chef, `Order ${orderId}: ${amount} refunded to the customer`, [
          'Hello,',
          `the customer of order <strong>${o}</strong> has been refunded <strong>${a}</strong>.`,
          'Reason: ' + html(oneLine(refund.reason, 100) || 'not given') + '.',
        ])
      : mail(chef, `Order ${orderId}: the refund of ${amount} did not go through`, [
          'Hello,',
          `the refund of <strong>${a}</strong> for order <strong>${o}</strong> did not go ` +
            'through. COOCO support is looking into it.',
        ]);
  }

  const admins = addresses(recipients.admins);
  if (admins.length) {
    const lines = [
      `Order: <strong>${o}</strong>` +
        (order.ridendine_order_id
          ? ' (RideNDine order ' + html(oneLine(order.ridendine_order_id, 255)) + ')'
          : ''),
      'Refund: ' + html(oneLine(refund.id, 255) || 'unknown'),
      `Result: <strong>${refunded ? 'REFUNDED' : 'FAILED'}</strong>, amount <strong>${a}</strong>`,
      'Reason: ' + html(oneLine(refund.reason, 100) || 'not given'),
    ];
    if (!refunded && refund.failure_reason) {
      lines.push('Failure: ' + html(text(refund.failure_reason, 1000)));
    }
    if (refund.needs_review) {
      lines.push(
        '<strong>Needs review</strong>: ' + html(text(refund.review_reason, 1000) || 'yes'),
      );
    }
    if (order.status || order.payment_status) {
      lines.push(
        'Order now: status ' +
          html(oneLine(order.status, 64) || '?') +
          ', payment ' +
          html(oneLine(order.payment_status, 64) || '?'),
      );
    }
    result.admins = mail(
      admins,
      `[refund-bridge] Order ${orderId}: refund ${refunded ? 'REFUNDED' : 'FAILED'} (${amount})` +
        (refund.needs_review ? ', needs review' : ''),
      lines,
    );
  }
  return result;
}

// The refund policy (docs/refunds.md): a customer's request waiting for an admin, a reminder
// of one still waiting, and an admin's denial.
function approvalNotice(kind, body) {
  const refund = body.refund && typeof body.refund === 'object' ? body.refund : {};
  const order = body.order && typeof body.order === 'object' ? body.order : {};
  const recipients = body.recipients && typeof body.recipients === 'object' ? body.recipients : {};
  const decision = body.decision && typeof body.decision === 'object' ? body.decision : {};
  const wanted = kind === 'refund_denied' ? 'DENIED' : 'REQUESTED';
  if (refund.status !== wanted) return invalid(kind, 'refund.status must be ' + wanted);
  const orderId = oneLine(order.id || refund.order_id, 255);
  if (!orderId) return invalid(kind, 'order.id is required');
  const amount = amountDisplay(body, refund);
  const o = html(orderId);
  const a = html(amount);
  const result = plan(kind);

  const customer = address(recipients.customer);
  if (customer && kind === 'refund_requested') {
    result.customer = mail(customer, `Your refund request for order ${orderId} is being reviewed`, [
      'Hello,',
      `we have received your request to refund <strong>${a}</strong> for your order ` +
        `<strong>${o}</strong>. Our team is reviewing it.`,
      'You will hear from us as soon as it is decided; there is nothing you need to do now.',
    ]);
  }
  if (customer && kind === 'refund_denied') {
    const comment = text(decision.comment || refund.decision_comment, 500).trim();
    result.customer = mail(customer, `Your refund request for order ${orderId} was not approved`, [
      'Hello,',
      `we have reviewed your request to refund <strong>${a}</strong> for your order ` +
        `<strong>${o}</strong>, and we cannot approve it.`,
      comment ? 'Our team wrote: <em>' + html(comment) + '</em>' : 'No comment was given.',
      'If you have questions, reply to this e-mail or contact COOCO support.',
    ]);
  }

  const admins = kind === 'refund_denied' ? [] : addresses(recipients.admins);
  if (admins.length) {
    const link = typeof body.link === 'string' && /^https?:\/\//.test(body.link) ? body.link : '';
    const lines = [
      `A customer asked for a refund of <strong>${a}</strong> on order <strong>${o}</strong>` +
        ' (reason ' + html(oneLine(refund.reason, 100) || 'not given') + ').',
      'Refund: ' + html(oneLine(refund.id, 255) || 'unknown') + ', requested ' +
        html(oneLine(refund.created_at, 40) || '?') + '.',
      'It is not sent to RideNDine until an admin approves it: open the refund in Directus and ' +
        'run <strong>approve or deny</strong>.',
    ];
    if (refund.reason_comments) {
      lines.push('The customer wrote: <em>' + html(text(refund.reason_comments, 500)) + '</em>');
    }
    if (link) lines.push('<a href="' + html(link) + '">' + html(link) + '</a>');
    result.admins = mail(
      admins,
      `[refund-bridge] Order ${orderId}: refund of ${amount} ` +
        (kind === 'approval_reminder' ? 'still waits for approval' : 'waits for approval'),
      lines,
    );
  }
  return result;
}

function adminAlert(body) {
  const admins = addresses(body.recipients && body.recipients.admins);
  if (!admins.length) return invalid('admin_alert', 'recipients.admins is empty');
  const subject = oneLine(body.subject, 200) || 'an alert';
  const message = html(text(body.message, 5000)).replace(/\r?\n/g, '<br>\n');
  const result = plan('admin_alert');
  result.admins = mail(admins, '[refund-bridge] ' + subject, [message || html(subject)]);
  return result;
}

module.exports = async function authorize(data) {
  const trigger = (data && data.$trigger) || {};
  const body = trigger.body && typeof trigger.body === 'object' ? trigger.body : {};
  if (!authorised(body)) {
    return { authorized: false, ok: false, kind: null, error: 'forbidden' };
  }
  let result;
  if (body.kind === 'refund_result') result = refundResult(body);
  else if (body.kind === 'admin_alert') result = adminAlert(body);
  else if (['refund_requested', 'approval_reminder', 'refund_denied'].includes(body.kind)) {
    result = approvalNotice(body.kind, body);
  } else if (body.kind === 'ping') result = plan('ping');
  else {
    result = invalid(
      null,
      'kind must be refund_result, admin_alert, refund_requested, approval_reminder, ' +
        'refund_denied or ping',
    );
  }
  result.sent = ['customer', 'chef', 'admins'].filter((who) => result[who] !== null);
  return result;
};
