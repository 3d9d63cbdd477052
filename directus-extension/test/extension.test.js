// The extension's own logic, with node's test runner and no dependencies: a stand-in for
// Directus (node:http running the hook's middleware, then the endpoint's routes) and a stand-in
// for the bridge that records what it receives. `node --test directus-extension/test/`

import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import http from 'node:http';
import { after, before, beforeEach, describe, test } from 'node:test';

import extension, {
	MAX_BODY_BYTES,
	captureRawBody,
	endpoint,
	hook,
	readConfig,
	registerRoutes,
} from '../index.js';

const SERVICE_TOKEN = 'service-token-0123456789abcdef';
const silentLogger = { warn() {}, error() {}, info() {} };

function listen(handler) {
	return new Promise((resolve) => {
		const server = http.createServer(handler);
		server.listen(0, '127.0.0.1', () => resolve(server));
	});
}

function close(server) {
	return new Promise((resolve) => {
		server.closeAllConnections?.();
		server.close(() => resolve());
	});
}

const urlOf = (server) => `http://127.0.0.1:${server.address().port}`;

/** A tiny router with express's two methods and `:param` segments. */
function makeRouter() {
	const routes = [];
	const add = (method) => (path, handler) => {
		const names = [];
		const pattern = path.replace(/:(\w+)/g, (_, name) => {
			names.push(name);
			return '([^/?]+)';
		});
		routes.push({ method, regex: new RegExp(`^${pattern}/?$`), names, handler });
	};
	return {
		routes,
		get: add('GET'),
		post: add('POST'),
		match(method, path) {
			for (const route of routes) {
				const found = route.method === method && route.regex.exec(path);
				if (found) {
					const params = Object.fromEntries(
						route.names.map((name, i) => [name, decodeURIComponent(found[i + 1])]),
					);
					return { handler: route.handler, params };
				}
			}
			return null;
		},
	};
}

/** Directus as the extension sees it: hook middleware, then auth, then /ridendine routes. */
async function startDirectus({ env, withHook = true, fetchImpl }) {
	const router = makeRouter();
	registerRoutes(router, { env, logger: silentLogger, fetchImpl });
	return listen((req, res) => {
		const route = () => {
			// Directus's authenticate: a test header names the logged-in user.
			const user = req.headers['x-test-user'];
			delete req.headers['x-test-user'];
			req.accountability = { user: user ?? null };
			req.originalUrl = req.url;
			const path = req.url.split('?')[0];
			const found = path.startsWith('/ridendine/')
				? router.match(req.method, path.slice('/ridendine'.length))
				: null;
			if (!found) {
				res.statusCode = 404;
				return res.end();
			}
			req.params = found.params;
			found.handler(req, res);
		};
		if (withHook) return captureRawBody(req, res, route);
		// Without the hook: Directus's express.json() takes JSON bodies first.
		if ((req.headers['content-type'] ?? '').startsWith('application/json')) {
			const chunks = [];
			req.on('data', (c) => chunks.push(c));
			req.on('end', () => {
				req._body = true;
				req.body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
				route();
			});
			return;
		}
		route();
	});
}

describe('the extension', () => {
	let bridge;
	let directus;
	let received;
	let answer;

	before(async () => {
		bridge = await listen((req, res) => {
			const chunks = [];
			req.on('data', (c) => chunks.push(c));
			req.on('end', () => {
				received.push({
					method: req.method,
					url: req.url,
					headers: req.headers,
					body: Buffer.concat(chunks),
				});
				answer(req, res);
			});
		});
		directus = await startDirectus({
			env: { BRIDGE_URL: urlOf(bridge) + '/', BRIDGE_SERVICE_TOKEN: SERVICE_TOKEN },
		});
	});

	after(async () => {
		await close(directus);
		await close(bridge);
	});

	beforeEach(() => {
		received = [];
		answer = (_req, res) => {
			res.statusCode = 202;
			res.setHeader('Content-Type', 'application/json');
			res.setHeader('Location', '/ridendine/refunds/rf_1');
			res.setHeader('X-Request-Id', 'req-1');
			res.setHeader('X-Internal', 'not for callers');
			res.end('{"refund": {"id": "rf_1"}}');
		};
	});

	test('a refund request reaches the bridge with the service token and the user id', async () => {
		const body = '{"order_id": "ord-1",  "reason": "chef_rejected", "requested_by": "admin"}';
		const response = await fetch(`${urlOf(directus)}/ridendine/refunds`, {
			method: 'POST',
			headers: {
				'Content-Type': 'application/json',
				'Idempotency-Key': 'key-1',
				Authorization: 'Bearer the-users-own-directus-token',
				'X-Directus-User-Id': 'someone-else',
				'X-Test-User': 'user-42',
			},
			body,
		});
		assert.equal(response.status, 202);
		assert.equal(response.headers.get('location'), '/ridendine/refunds/rf_1');
		assert.equal(response.headers.get('content-type'), 'application/json');
		assert.equal(response.headers.get('x-request-id'), 'req-1');
		assert.equal(response.headers.get('x-internal'), null);
		assert.equal(await response.text(), '{"refund": {"id": "rf_1"}}');

		assert.equal(received.length, 1);
		const [call] = received;
		assert.equal(call.method, 'POST');
		assert.equal(call.url, '/ridendine/refunds');
		assert.equal(call.headers.authorization, `Bearer ${SERVICE_TOKEN}`);
		assert.equal(call.headers['x-directus-user-id'], 'user-42');
		assert.equal(call.headers['idempotency-key'], 'key-1');
		assert.equal(call.headers['content-type'], 'application/json');
		assert.equal(call.body.toString('utf8'), body);
	});

	test('every GET route is forwarded whole: its path and its query string', async () => {
		answer = (_req, res) => {
			res.statusCode = 200;
			res.setHeader('Content-Type', 'application/json');
			res.end('{"refunds": []}');
		};
		const paths = [
			'/ridendine/refunds?order_id=ord%201&x=y',
			'/ridendine/refunds/rf%2F1',
			'/ridendine/refunds/rf_1?with=history',
			'/ridendine/refunds/stats?month=2020-01',
			'/ridendine/refunds/stats',
			'/ridendine/openapi.json?v=1',
		];
		for (const path of paths) {
			const response = await fetch(`${urlOf(directus)}${path}`, {
				headers: { 'X-Test-User': 'user-42' },
			});
			assert.equal(response.status, 200, path);
		}
		assert.deepEqual(
			received.map((r) => [r.method, r.url, r.headers['x-directus-user-id']]),
			paths.map((path) => ['GET', path, 'user-42']),
		);
		for (const call of received) {
			assert.equal(call.headers.authorization, `Bearer ${SERVICE_TOKEN}`);
		}
	});

	test('stats is its own route, registered before /refunds/:id', () => {
		const router = makeRouter();
		registerRoutes(router, { env: {}, logger: silentLogger });
		const gets = router.routes.filter((r) => r.method === 'GET');
		const stats = gets.findIndex((r) => r.regex.source.includes('stats'));
		const byId = gets.findIndex((r) => r.regex.source.includes('([^/?]+)'));
		assert.ok(stats !== -1 && byId !== -1 && stats < byId);
		assert.equal(router.match('GET', '/refunds/stats').handler, gets[stats].handler);
	});

	test('approve and deny reach the bridge with the service token, the user id and the body', async () => {
		answer = (_req, res) => {
			res.statusCode = 200;
			res.setHeader('Content-Type', 'application/json');
			res.end('{"refund": {"id": "rf_1", "status": "DENIED"}}');
		};
		const body = '{"comment":  "no, sorry"}';
		const denied = await fetch(`${urlOf(directus)}/ridendine/refunds/rf%2F1/deny`, {
			method: 'POST',
			headers: {
				'Content-Type': 'application/json',
				Authorization: 'Bearer the-users-own-directus-token',
				'X-Directus-User-Id': 'someone-else',
				'X-Test-User': 'admin-7',
			},
			body,
		});
		const approved = await fetch(`${urlOf(directus)}/ridendine/refunds/rf_2/approve`, {
			method: 'POST',
			headers: { 'X-Test-User': 'admin-7' },
		});
		assert.equal(denied.status, 200);
		assert.equal(await denied.text(), '{"refund": {"id": "rf_1", "status": "DENIED"}}');
		assert.equal(approved.status, 200);
		assert.deepEqual(
			received.map((r) => [r.method, r.url, r.headers['x-directus-user-id'], r.body.toString('utf8')]),
			[
				['POST', '/ridendine/refunds/rf%2F1/deny', 'admin-7', body],
				['POST', '/ridendine/refunds/rf_2/approve', 'admin-7', ''],
			],
		);
		assert.equal(received[0].headers.authorization, `Bearer ${SERVICE_TOKEN}`);
		assert.equal(received[0].headers['content-type'], 'application/json');
	});

	test('an anonymous decision gets 401 and the bridge is not called', async () => {
		for (const verb of ['approve', 'deny']) {
			const response = await fetch(`${urlOf(directus)}/ridendine/refunds/rf_1/${verb}`, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json' },
				body: '{}',
			});
			assert.equal(response.status, 401);
			assert.equal((await response.json()).code, 'not_authenticated');
		}
		assert.equal(received.length, 0);
	});

	test('an anonymous caller gets 401 problem+json and the bridge is not called', async () => {
		for (const [method, path] of [
			['POST', '/ridendine/refunds'],
			['GET', '/ridendine/refunds?order_id=1'],
			['GET', '/ridendine/refunds/rf_1'],
		]) {
			const response = await fetch(urlOf(directus) + path, {
				method,
				headers: { 'Content-Type': 'application/json' },
				body: method === 'POST' ? '{}' : undefined,
			});
			assert.equal(response.status, 401);
			assert.equal(response.headers.get('content-type'), 'application/problem+json');
			const problem = await response.json();
			assert.equal(problem.code, 'not_authenticated');
			assert.equal(problem.status, 401);
		}
		assert.equal(received.length, 0);
	});

	test('a webhook reaches the bridge byte for byte with its headers', async () => {
		answer = (_req, res) => {
			res.statusCode = 200;
			res.setHeader('Content-Type', 'application/json');
			res.end('{"status":"recorded"}');
		};
		const body = Buffer.from(
			'{ "refund_id" :"re_1",\n\t"amount_cents":5000 , "status":"REFUNDED",' +
				' "note":"café ☕ \\u00e9 \u{1F600}"  }\n',
			'utf8',
		);
		const headers = {
			'Content-Type': 'application/json; charset=utf-8',
			'webhook-id': 'msg_1',
			'webhook-timestamp': '1700000000',
			'webhook-signature': 'v1,abc= v1,def=',
			Authorization: 'Bearer partner-static-token',
		};
		const response = await fetch(`${urlOf(directus)}/ridendine/webhooks/refund-status`, {
			method: 'POST',
			headers,
			body,
		});
		assert.equal(response.status, 200);
		assert.equal(await response.text(), '{"status":"recorded"}');
		const [call] = received;
		assert.equal(call.url, '/ridendine/webhooks/refund-status');
		assert.ok(call.body.equals(body), 'the body arrives unchanged');
		assert.equal(call.headers['content-type'], 'application/json; charset=utf-8');
		assert.equal(call.headers['webhook-id'], 'msg_1');
		assert.equal(call.headers['webhook-timestamp'], '1700000000');
		assert.equal(call.headers['webhook-signature'], 'v1,abc= v1,def=');
		assert.equal(call.headers.authorization, 'Bearer partner-static-token');
		assert.equal(call.headers['x-directus-user-id'], undefined);
	});

	test("the bridge's errors are passed through unchanged", async () => {
		const problem = '{"type":"x","title":"Conflict","status":409,"code":"idempotency_key_reused"}';
		answer = (_req, res) => {
			res.statusCode = 409;
			res.setHeader('Content-Type', 'application/problem+json');
			res.end(problem);
		};
		const response = await fetch(`${urlOf(directus)}/ridendine/refunds`, {
			method: 'POST',
			headers: { 'Content-Type': 'application/json', 'X-Test-User': 'u' },
			body: '{}',
		});
		assert.equal(response.status, 409);
		assert.equal(response.headers.get('content-type'), 'application/problem+json');
		assert.equal(await response.text(), problem);
	});

	test('a body over 64 KiB is 413 problem+json and never forwarded', async () => {
		for (const path of ['/ridendine/refunds', '/ridendine/webhooks/refund-status']) {
			const response = await fetch(urlOf(directus) + path, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json', 'X-Test-User': 'u' },
				body: '"' + 'x'.repeat(MAX_BODY_BYTES) + '"',
			});
			assert.equal(response.status, 413);
			assert.equal((await response.json()).code, 'payload_too_large');
		}
		assert.equal(received.length, 0);
	});

	test('a chunked body over 64 KiB is cut off with 413', async () => {
		const chunk = Buffer.alloc(16 * 1024, 0x20);
		let sent = 0;
		const stream = new ReadableStream({
			pull(controller) {
				if (sent >= 8) return controller.close();
				sent += 1;
				controller.enqueue(chunk);
			},
		});
		const response = await fetch(`${urlOf(directus)}/ridendine/webhooks/refund-status`, {
			method: 'POST',
			headers: { 'Content-Type': 'application/json' },
			body: stream,
			duplex: 'half',
		}).catch((error) => error);
		// The answer may come before the client finished sending; either way nothing went on.
		if (!(response instanceof Error)) {
			assert.equal(response.status, 413);
			assert.equal((await response.json()).code, 'payload_too_large');
		}
		assert.equal(received.length, 0);
	});

	test('a slow bridge gives 503 problem+json after the timeout', async () => {
		const slow = await startDirectus({
			env: {
				BRIDGE_URL: urlOf(bridge),
				BRIDGE_SERVICE_TOKEN: SERVICE_TOKEN,
				BRIDGE_TIMEOUT_MS: 200,
			},
		});
		answer = (_req, res) => setTimeout(() => res.end('late'), 2000).unref();
		try {
			const started = Date.now();
			const response = await fetch(`${urlOf(slow)}/ridendine/webhooks/refund-status`, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json' },
				body: '{}',
			});
			assert.equal(response.status, 503);
			assert.ok(Date.now() - started < 1500);
			const problem = await response.json();
			assert.equal(problem.code, 'bridge_unavailable');
			assert.match(problem.detail, /timed out/);
		} finally {
			await close(slow);
		}
	});
});

describe('without a bridge', () => {
	test('a bridge that is down gives 503 problem+json without a trace', async () => {
		const gone = await listen(() => {});
		const goneUrl = urlOf(gone);
		await close(gone);
		const directus = await startDirectus({
			env: { BRIDGE_URL: goneUrl, BRIDGE_SERVICE_TOKEN: SERVICE_TOKEN },
		});
		try {
			for (const [path, user] of [
				['/ridendine/refunds', 'u'],
				['/ridendine/webhooks/refund-status', undefined],
			]) {
				const response = await fetch(urlOf(directus) + path, {
					method: 'POST',
					headers: { 'Content-Type': 'application/json', ...(user ? { 'X-Test-User': user } : {}) },
					body: '{}',
				});
				assert.equal(response.status, 503);
				assert.equal(response.headers.get('content-type'), 'application/problem+json');
				const text = await response.text();
				const problem = JSON.parse(text);
				assert.equal(problem.code, 'bridge_unavailable');
				assert.doesNotMatch(text, /ECONNREFUSED|at .*\.js|127\.0\.0\.1/);
			}
		} finally {
			await close(directus);
		}
	});

	test('without BRIDGE_URL or the service token it answers 503', async () => {
		const directus = await startDirectus({ env: { BRIDGE_URL: 'http://127.0.0.1:9' } });
		try {
			const response = await fetch(`${urlOf(directus)}/ridendine/refunds/rf_1`, {
				headers: { 'X-Test-User': 'u' },
			});
			assert.equal(response.status, 503);
			assert.match((await response.json()).detail, /not configured/);
		} finally {
			await close(directus);
		}
	});
});

describe('with the raw-body hook disabled', () => {
	test('refund requests still go through, re-encoded; webhooks are refused', async () => {
		const received = [];
		const bridge = await listen((req, res) => {
			const chunks = [];
			req.on('data', (c) => chunks.push(c));
			req.on('end', () => {
				received.push(Buffer.concat(chunks).toString('utf8'));
				res.end('{}');
			});
		});
		const directus = await startDirectus({
			env: { BRIDGE_URL: urlOf(bridge), BRIDGE_SERVICE_TOKEN: SERVICE_TOKEN },
			withHook: false,
		});
		try {
			const refund = await fetch(`${urlOf(directus)}/ridendine/refunds`, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json', 'X-Test-User': 'u' },
				body: '{ "order_id" : "ord-1" }',
			});
			assert.equal(refund.status, 200);
			assert.deepEqual(received, ['{"order_id":"ord-1"}']);
			const webhook = await fetch(`${urlOf(directus)}/ridendine/webhooks/refund-status`, {
				method: 'POST',
				headers: { 'Content-Type': 'application/json' },
				body: '{}',
			});
			assert.equal(webhook.status, 500);
			assert.equal((await webhook.json()).code, 'raw_body_unavailable');
			assert.equal(received.length, 1);
		} finally {
			await close(directus);
			await close(bridge);
		}
	});
});

describe('registration', () => {
	test('the bundle exports the endpoint `ridendine` and the raw-body hook', () => {
		assert.deepEqual(
			extension.endpoints.map((e) => [e.name, e.config.id]),
			[['ridendine', 'ridendine']],
		);
		assert.equal(extension.endpoints[0].config, endpoint);
		assert.deepEqual(
			extension.hooks.map((h) => h.name),
			['ridendine-raw-body'],
		);
		const registered = [];
		hook({ init: (event, handler) => registered.push([event, handler]) });
		assert.equal(registered.length, 1);
		assert.equal(registered[0][0], 'middlewares.before');
		const used = [];
		registered[0][1]({ app: { use: (fn) => used.push(fn) } });
		assert.deepEqual(used, [captureRawBody]);
	});

	test('the hook leaves other requests alone', () => {
		let called = 0;
		const req = { method: 'POST', url: '/items/orders', headers: { authorization: 'Bearer t' } };
		captureRawBody(req, {}, () => called++);
		captureRawBody({ ...req, method: 'GET', url: '/ridendine/refunds' }, {}, () => called++);
		assert.equal(called, 2);
		assert.equal(req.headers.authorization, 'Bearer t');
		assert.equal(req.rawBody, undefined);
	});

	test("Directus's env casting is undone", () => {
		assert.deepEqual(
			readConfig({ BRIDGE_URL: 'http://b:1///', BRIDGE_SERVICE_TOKEN: ['a', 'b'], BRIDGE_TIMEOUT_MS: 2500 }),
			{ bridgeUrl: 'http://b:1', serviceToken: 'a,b', timeoutMs: 2500 },
		);
		assert.equal(readConfig({ BRIDGE_SERVICE_TOKEN: 12345 }).serviceToken, '12345');
		assert.equal(readConfig({ BRIDGE_TIMEOUT_MS: 'soon' }).timeoutMs, 10_000);
	});
});
