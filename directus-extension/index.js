// COOCO's refund URLs in Directus, forwarded to refund-bridge (docs/directus-extension.md).
//
// A bundle of two entries, because an endpoint alone cannot forward a webhook byte for byte:
// Directus 11 runs express.json() on every request before any endpoint, keeps no raw body, and
// its authenticate middleware refuses an `Authorization: Bearer` token it does not know (the
// partner's bearer mode). So:
// - the hook `ridendine-raw-body` adds a middleware at `middlewares.before` (ahead of the JSON
//   parser and of authentication) that reads the raw body of POSTs to /ridendine/* into
//   `req.rawBody` and, on the webhook path only, moves `Authorization` aside;
// - the endpoint `ridendine` forwards to BRIDGE_URL: refund requests with the service token and
//   the Directus user's id, webhooks with their raw body and signature headers unchanged.
// A third entry, the operation `refund-bridge-mail`, is the "refund result" Flow's e-mail step
// (docs/flows.md): Directus's own `mail` operation does not wait for the mail server.

import { Buffer } from 'node:buffer';

export const MAX_BODY_BYTES = 64 * 1024;
export const DEFAULT_TIMEOUT_MS = 10_000;
const PROBLEM_TYPE_BASE = 'https://cooco.example.com/problems/';
const WEBHOOK_PATH = /^\/ridendine\/webhooks\/refund-status\/?$/;
const RAW_BODY_PATH =
	/^\/ridendine\/(?:refunds|refunds\/[^/?]+\/(?:approve|deny)|webhooks\/refund-status)\/?$/;
// The bridge's answer headers that matter to callers; others (hop-by-hop, server) stay behind.
const PASSED_RESPONSE_HEADERS = [
	'content-type',
	'location',
	'retry-after',
	'www-authenticate',
	'allow',
	'x-request-id',
];
const WEBHOOK_HEADERS = ['webhook-id', 'webhook-timestamp', 'webhook-signature', 'content-type'];
const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Answer RFC 9457 problem details, the bridge's error shape. */
export function sendProblem(res, status, code, title, detail) {
	if (res.headersSent) return;
	const body = JSON.stringify({ type: PROBLEM_TYPE_BASE + code, title, status, detail, code });
	res.statusCode = status;
	res.setHeader('Content-Type', 'application/problem+json');
	if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="cooco"');
	res.end(body);
}

function pathOf(url) {
	const query = url.indexOf('?');
	return query === -1 ? url : url.slice(0, query);
}

function queryOf(url) {
	const query = url.indexOf('?');
	return query === -1 ? '' : url.slice(query);
}

/**
 * Read the request's body as it arrived (at most MAX_BODY_BYTES). Resolves a Buffer, or null
 * after answering 413 itself.
 */
export function readRawBody(req, res) {
	return new Promise((resolve, reject) => {
		const declared = Number(req.headers['content-length']);
		const tooLarge = () => {
			res.setHeader('Connection', 'close');
			sendProblem(
				res,
				413,
				'payload_too_large',
				'Payload too large',
				`The body must be at most ${MAX_BODY_BYTES} bytes.`,
			);
			req.resume(); // drop the rest; the connection closes after the answer
			resolve(null);
		};
		if (Number.isFinite(declared) && declared > MAX_BODY_BYTES) {
			tooLarge();
			return;
		}
		const chunks = [];
		let size = 0;
		let done = false;
		req.on('data', (chunk) => {
			if (done) return;
			size += chunk.length;
			if (size > MAX_BODY_BYTES) {
				done = true;
				tooLarge();
				return;
			}
			chunks.push(chunk);
		});
		req.on('end', () => {
			if (done) return;
			done = true;
			resolve(Buffer.concat(chunks));
		});
		req.on('error', (error) => {
			if (done) return;
			done = true;
			reject(error);
		});
	});
}

/**
 * The hook's middleware: keeps the raw body of POSTs to /ridendine/* and tells Directus's JSON
 * parser the body is taken (`req._body`); moves the webhook's Authorization aside.
 */
export function captureRawBody(req, res, next) {
	const path = pathOf(req.url ?? '');
	if (req.method !== 'POST' || !RAW_BODY_PATH.test(path)) return next();
	if (WEBHOOK_PATH.test(path) && req.headers.authorization !== undefined) {
		// Bearer mode: this token is the partner's, not a Directus token.
		req.ridendineAuthorization = req.headers.authorization;
		delete req.headers.authorization;
	}
	readRawBody(req, res).then(
		(raw) => {
			if (raw === null) return; // answered 413
			req.rawBody = raw;
			req._body = true; // body-parser's flag: express.json() leaves the request alone
			req.body = {};
			next();
		},
		() => {
			// The client went away mid-body: nothing to answer.
			if (!res.headersSent) res.destroy();
		},
	);
}

/** Directus casts env values (numbers, comma lists); the settings are strings here. */
function envString(value) {
	if (value === undefined || value === null) return '';
	if (Array.isArray(value)) return value.join(',');
	return String(value).trim();
}

export function readConfig(env = {}) {
	const timeout = Number(envString(env.BRIDGE_TIMEOUT_MS));
	return {
		bridgeUrl: envString(env.BRIDGE_URL).replace(/\/+$/, ''),
		serviceToken: envString(env.BRIDGE_SERVICE_TOKEN),
		timeoutMs: Number.isFinite(timeout) && timeout > 0 ? timeout : DEFAULT_TIMEOUT_MS,
	};
}

const unavailable = (res, detail) =>
	sendProblem(res, 503, 'bridge_unavailable', 'The refund service is unavailable', detail);

/** Send the request to the bridge and relay its answer, or answer 503 when it cannot. */
async function relay(res, { config, fetchImpl, logger, method, path, headers, body }) {
	let response;
	let payload;
	try {
		response = await fetchImpl(config.bridgeUrl + path, {
			method,
			headers,
			body,
			redirect: 'manual',
			signal: AbortSignal.timeout(config.timeoutMs),
		});
		payload = Buffer.from(await response.arrayBuffer());
	} catch (error) {
		const reason = error?.name === 'TimeoutError' ? 'timed out' : 'could not be reached';
		logger.warn(`ridendine: the bridge ${reason} (${method} ${pathOf(path)})`);
		return unavailable(res, `The refund service ${reason}; try again later.`);
	}
	res.statusCode = response.status;
	for (const name of PASSED_RESPONSE_HEADERS) {
		const value = response.headers.get(name);
		if (value !== null) res.setHeader(name, value);
	}
	res.end(payload);
}

/** The request's body to forward: the raw bytes the hook kept, or what is left to read. */
async function bodyToForward(req, res) {
	if (Buffer.isBuffer(req.rawBody)) return req.rawBody;
	if (!req._body) return readRawBody(req, res); // the hook is off, and no parser took it
	return undefined; // parsed by Directus: the raw bytes are gone
}

function requestIdHeader(req) {
	const given = req.headers['x-request-id'];
	return typeof given === 'string' && SAFE_REQUEST_ID.test(given) ? { 'X-Request-Id': given } : {};
}

/** Register the endpoint's routes on `router` (mounted by Directus at /ridendine). */
export function registerRoutes(router, { env, logger = console, fetchImpl = globalThis.fetch } = {}) {
	const config = readConfig(env);
	if (!config.bridgeUrl || !config.serviceToken) {
		logger.error('ridendine: BRIDGE_URL and BRIDGE_SERVICE_TOKEN must be set; answering 503');
	}
	const configured = (res) => {
		if (config.bridgeUrl && config.serviceToken) return true;
		unavailable(res, 'The refund service is not configured in Directus.');
		return false;
	};

	// Refund requests: a logged-in Directus user only; the bridge gets the service token and the
	// user's id (never the user's own token), and checks that user's access in Directus itself.
	const asUser = (handler) => async (req, res) => {
		try {
			const user = req.accountability?.user;
			if (!user) {
				return sendProblem(
					res,
					401,
					'not_authenticated',
					'Not authenticated',
					'Log in to Directus (or send a Directus token) to use refunds.',
				);
			}
			if (!configured(res)) return;
			const headers = {
				Authorization: `Bearer ${config.serviceToken}`,
				'X-Directus-User-Id': String(user),
				Accept: 'application/json',
				...requestIdHeader(req),
			};
			await handler(req, res, headers);
		} catch (error) {
			logger.error(`ridendine: unexpected ${error?.name ?? 'error'} in ${req.method} refunds`);
			sendProblem(res, 500, 'internal_error', 'Internal error', 'An unexpected error occurred.');
		}
	};

	router.post(
		'/refunds',
		asUser(async (req, res, headers) => {
			let body = await bodyToForward(req, res);
			if (body === null) return; // answered 413
			if (body === undefined) {
				// Only when the hook is disabled: Directus parsed the JSON; send it re-encoded.
				body = Buffer.from(JSON.stringify(req.body ?? {}));
				headers['Content-Type'] = 'application/json';
			} else if (req.headers['content-type']) {
				headers['Content-Type'] = req.headers['content-type'];
			}
			const key = req.headers['idempotency-key'];
			if (typeof key === 'string') headers['Idempotency-Key'] = key;
			await relay(res, {
				config,
				fetchImpl,
				logger,
				method: 'POST',
				path: '/ridendine/refunds',
				headers,
				body,
			});
		}),
	);

	// An admin's approve or deny of a waiting refund (docs/refunds.md): the bridge checks that
	// the user is an admin; the body (an optional comment) goes as it came.
	for (const decision of ['approve', 'deny']) {
		router.post(
			`/refunds/:id/${decision}`,
			asUser(async (req, res, headers) => {
				let body = await bodyToForward(req, res);
				if (body === null) return; // answered 413
				if (body === undefined) {
					body = Buffer.from(JSON.stringify(req.body ?? {}));
					headers['Content-Type'] = 'application/json';
				} else if (req.headers['content-type']) {
					headers['Content-Type'] = req.headers['content-type'];
				}
				await relay(res, {
					config,
					fetchImpl,
					logger,
					method: 'POST',
					path: `/ridendine/refunds/${encodeURIComponent(req.params.id)}/${decision}`,
					headers,
					body,
				});
			}),
		);
	}

	// The GET routes go to the bridge whole: the same path and the caller's query string
	// (`stats?month=`, `?order_id=`). `stats` is registered before `:id`, which would catch it.
	const forwardGet = (bridgePath) =>
		asUser((req, res, headers) =>
			relay(res, {
				config,
				fetchImpl,
				logger,
				method: 'GET',
				path: bridgePath(req) + queryOf(req.originalUrl ?? req.url ?? ''),
				headers,
			}),
		);
	router.get(
		'/refunds',
		forwardGet(() => '/ridendine/refunds'),
	);
	router.get(
		'/refunds/stats',
		forwardGet(() => '/ridendine/refunds/stats'),
	);
	router.get(
		'/refunds/:id',
		forwardGet((req) => '/ridendine/refunds/' + encodeURIComponent(req.params.id)),
	);
	router.get(
		'/openapi.json',
		forwardGet(() => '/ridendine/openapi.json'),
	);

	// RideNDine's result webhook: no Directus user; the bridge checks the signature over the
	// exact bytes, so body and signature headers go through untouched.
	router.post('/webhooks/refund-status', async (req, res) => {
		try {
			if (!configured(res)) return;
			const body = await bodyToForward(req, res);
			if (body === null) return; // answered 413
			if (body === undefined) {
				logger.error('ridendine: the raw-body hook is disabled; webhooks cannot be verified');
				return sendProblem(
					res,
					500,
					'raw_body_unavailable',
					'Internal error',
					'The webhook body could not be forwarded as received.',
				);
			}
			const headers = { ...requestIdHeader(req) };
			for (const name of WEBHOOK_HEADERS) {
				const value = req.headers[name];
				if (typeof value === 'string') headers[name] = value;
			}
			const authorization = req.ridendineAuthorization ?? req.headers.authorization;
			if (typeof authorization === 'string') headers.authorization = authorization;
			await relay(res, {
				config,
				fetchImpl,
				logger,
				method: 'POST',
				path: '/ridendine/webhooks/refund-status',
				headers,
				body,
			});
		} catch (error) {
			logger.error(`ridendine: unexpected ${error?.name ?? 'error'} in the webhook`);
			sendProblem(res, 500, 'internal_error', 'Internal error', 'An unexpected error occurred.');
		}
	});
}

export const endpoint = {
	id: 'ridendine',
	handler: (router, context) => registerRoutes(router, context),
};

/**
 * The Flow operation `refund-bridge-mail`: one e-mail, finished only when the mail server has
 * taken it. Directus 11's own `mail` operation starts sending and moves on, so a Flow answered
 * "sent" while its e-mails were still under way, and a Directus stopped or restarted right after
 * lost them for good: the bridge had recorded the notification as sent (docs/reliability.md).
 * A failure throws, which sends the Flow down its reject path (an answer with ok false, retried
 * by the bridge).
 */
export const mailOperation = {
	id: 'refund-bridge-mail',
	handler: async ({ to, subject, body }, { services, database, getSchema, accountability }) => {
		const mailService = new services.MailService({
			schema: await getSchema({ database }),
			accountability,
			knex: database,
		});
		const html = typeof body === 'string' ? body : JSON.stringify(body ?? '');
		// Resolves once the transport has handed the e-mail over (SMTP: the server's 250 after
		// DATA); rejects when it could not (server down, every recipient refused).
		await mailService.send({ to, subject, html });
		return { sent: true };
	},
};

export const hook = ({ init }) => {
	init('middlewares.before', ({ app }) => {
		app.use(captureRawBody);
	});
};

// The bundle's API entry, as Directus 11 loads it.
export default {
	endpoints: [{ name: 'ridendine', config: endpoint }],
	hooks: [{ name: 'ridendine-raw-body', config: hook }],
	operations: [{ name: 'refund-bridge-mail', config: mailOperation }],
};
