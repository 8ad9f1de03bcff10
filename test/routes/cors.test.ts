import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, issue, listen } from '../support/app.js'

const NEXT_APP = 'http://localhost:3000'

type InjectResponse = import('light-my-request').Response

/** A response header as one lowercase-insensitive string ('' when absent). */
function header (response: InjectResponse, name: string): string {
  const value = response.headers[name]
  if (value === undefined) return ''
  return Array.isArray(value) ? value.join(', ') : String(value)
}

/** The comma-separated tokens of a header, lowercased. */
function tokens (response: InjectResponse, name: string): string[] {
  return header(response, name).split(',').map((item) => item.trim().toLowerCase()).filter((item) => item !== '')
}

async function refreshFrom (app: FastifyInstance, origin: string, payload: unknown): Promise<InjectResponse> {
  return app.inject({ method: 'POST', url: '/v1/tokens/refresh', headers: { origin }, payload: payload as Record<string, unknown> })
}

async function preflight (app: FastifyInstance, origin: string, url = '/v1/tokens/refresh'): Promise<InjectResponse> {
  return app.inject({
    method: 'OPTIONS',
    url,
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }
  })
}

test('an allowed origin gets its own origin back and Vary: Origin on a successful refresh', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await refreshFrom(app, NEXT_APP, { refresh_token: pair.refresh_token })
  t.equal(response.statusCode, 200)
  t.equal(header(response, 'access-control-allow-origin'), NEXT_APP)
  t.ok(tokens(response, 'vary').includes('origin'), `vary: ${header(response, 'vary')}`)
  t.notOk(response.headers['access-control-allow-credentials'], 'no credentials are asked for')
})

const ERROR_ANSWERS: Array<[string, Record<string, unknown>, number, string]> = [
  ['a 401 token_invalid, so the page can read the code', { refresh_token: 'not-a-token' }, 401, 'token_invalid'],
  ['a 400 invalid_request', { refresh: 'wrong field' }, 400, 'invalid_request']
]
for (const [label, body, status, code] of ERROR_ANSWERS) {
  test(`an allowed origin gets CORS headers on ${label}`, async (t) => {
    const app = await build(t)
    const response = await refreshFrom(app, NEXT_APP, body)
    t.equal(response.statusCode, status)
    t.equal(response.json().code, code)
    t.equal(header(response, 'access-control-allow-origin'), NEXT_APP)
    t.ok(tokens(response, 'vary').includes('origin'))
  })
}

test('an allowed origin gets CORS headers on a 429 rate_limited, with the rate-limit headers exposed', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1' })
  await refreshFrom(app, NEXT_APP, { refresh_token: 'not-a-token' })
  const response = await refreshFrom(app, NEXT_APP, { refresh_token: 'not-a-token' })
  t.equal(response.statusCode, 429)
  t.equal(response.json().code, 'rate_limited')
  t.equal(header(response, 'access-control-allow-origin'), NEXT_APP)
  t.ok(tokens(response, 'vary').includes('origin'))
  t.ok(header(response, 'retry-after') !== '', 'retry-after is sent')
  const exposed = tokens(response, 'access-control-expose-headers')
  for (const name of ['retry-after', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']) {
    t.ok(exposed.includes(name), `${name} is exposed`)
  }
})

test('the retry-after and x-ratelimit-* headers are exposed to an allowed origin on every answer', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await refreshFrom(app, NEXT_APP, { refresh_token: pair.refresh_token })
  t.equal(response.statusCode, 200)
  const exposed = tokens(response, 'access-control-expose-headers')
  t.same(
    ['retry-after', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset'].filter((name) => !exposed.includes(name)),
    [],
    `exposed: ${header(response, 'access-control-expose-headers')}`
  )
})

test('an origin not listed gets no Access-Control-Allow-Origin on a successful refresh', async (t) => {
  const app = await build(t)
  for (const origin of ['http://localhost:4000', 'http://evil.example']) {
    const pair = await issue(app)
    const response = await refreshFrom(app, origin, { refresh_token: pair.refresh_token })
    t.equal(response.statusCode, 200, `${origin}: the request itself is served (CORS is the browser's job)`)
    t.equal(response.headers['access-control-allow-origin'], undefined, `${origin}: no allow-origin`)
    t.equal(response.headers['access-control-allow-credentials'], undefined, `${origin}: no allow-credentials`)
  }
})

test('an origin not listed gets no Access-Control-Allow-Origin on an error answer either', async (t) => {
  const app = await build(t)
  const response = await refreshFrom(app, 'http://evil.example', { refresh_token: 'not-a-token' })
  t.equal(response.statusCode, 401)
  t.equal(response.headers['access-control-allow-origin'], undefined)
})

test('a preflight from an origin not listed gets no Access-Control-Allow-Origin and no allowed methods', async (t) => {
  const app = await build(t)
  for (const origin of ['http://localhost:4000', 'http://evil.example']) {
    const response = await preflight(app, origin)
    t.not(response.statusCode, 204, `${origin}: the preflight is not approved`)
    t.ok(response.statusCode < 500, `${origin}: no 5xx (${response.statusCode})`)
    t.equal(response.headers['access-control-allow-origin'], undefined, `${origin}: no allow-origin`)
    t.equal(response.headers['access-control-allow-methods'], undefined, `${origin}: no allow-methods`)
  }
})

test('a preflight from the allowed origin is 204 with POST, content-type and authorization allowed, and cached', async (t) => {
  const app = await build(t)
  const response = await preflight(app, NEXT_APP)
  t.equal(response.statusCode, 204)
  t.equal(header(response, 'access-control-allow-origin'), NEXT_APP)
  t.ok(tokens(response, 'access-control-allow-methods').includes('post'), `allow-methods: ${header(response, 'access-control-allow-methods')}`)
  const allowedHeaders = tokens(response, 'access-control-allow-headers')
  t.ok(allowedHeaders.includes('content-type'), `allow-headers: ${header(response, 'access-control-allow-headers')}`)
  t.ok(allowedHeaders.includes('authorization'))
  const maxAge = Number(header(response, 'access-control-max-age'))
  t.ok(Number.isInteger(maxAge) && maxAge > 0, `access-control-max-age: ${header(response, 'access-control-max-age')}`)
  t.not(header(response, 'access-control-allow-credentials'), 'true', 'no credentials are asked for')
  t.ok(tokens(response, 'vary').includes('origin'))
})

test('a preflight for the revoke route from the allowed origin is approved too', async (t) => {
  const app = await build(t)
  const response = await preflight(app, NEXT_APP, '/v1/tokens/revoke')
  t.equal(response.statusCode, 204)
  t.equal(header(response, 'access-control-allow-origin'), NEXT_APP)
  t.ok(tokens(response, 'access-control-allow-methods').includes('post'))
})

test('CORS_ORIGINS with two origins allows both of them', async (t) => {
  const app = await build(t, { CORS_ORIGINS: 'http://localhost:3000, https://app.example.com' })
  for (const origin of ['http://localhost:3000', 'https://app.example.com']) {
    const response = await refreshFrom(app, origin, { refresh_token: 'not-a-token' })
    t.equal(header(response, 'access-control-allow-origin'), origin, `${origin} is allowed`)
    const pre = await preflight(app, origin)
    t.equal(pre.statusCode, 204, `${origin}: preflight approved`)
    t.equal(header(pre, 'access-control-allow-origin'), origin)
  }
})

test('CORS_ORIGINS matches exact origins only: no prefix, suffix, scheme or port look-alikes', async (t) => {
  const app = await build(t, { CORS_ORIGINS: 'http://localhost:3000,https://app.example.com' })
  const lookAlikes = [
    'http://localhost:3000.evil.com',
    'https://localhost:3000',
    'http://localhost:30000',
    'http://localhost',
    'http://evil.localhost:3000',
    'https://app.example.com.evil.com',
    'https://evilapp.example.com',
    'http://app.example.com',
    'HTTP://LOCALHOST:3000x',
    'null'
  ]
  for (const origin of lookAlikes) {
    const response = await refreshFrom(app, origin, { refresh_token: 'not-a-token' })
    t.equal(response.headers['access-control-allow-origin'], undefined, `${origin} is refused`)
    const pre = await preflight(app, origin)
    t.equal(pre.headers['access-control-allow-origin'], undefined, `${origin}: preflight refused`)
  }
})

test('a CORS_ORIGINS that does not list the default refuses http://localhost:3000', async (t) => {
  const app = await build(t, { CORS_ORIGINS: 'https://app.example.com' })
  const response = await refreshFrom(app, NEXT_APP, { refresh_token: 'not-a-token' })
  t.equal(response.headers['access-control-allow-origin'], undefined)
})

test('a request without an Origin header gets no CORS allow-origin and is served normally', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: pair.refresh_token } })
  t.equal(response.statusCode, 200)
  t.equal(response.headers['access-control-allow-origin'], undefined)
})

test('over a real socket, a browser-like preflight and refresh from the allowed origin get CORS headers', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const pair = await issue(app)

  const pre = await fetch(`${base}/v1/tokens/refresh`, {
    method: 'OPTIONS',
    headers: { origin: NEXT_APP, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }
  })
  t.equal(pre.status, 204)
  t.equal(pre.headers.get('access-control-allow-origin'), NEXT_APP)
  t.match(pre.headers.get('access-control-allow-methods') ?? '', /\bPOST\b/i)
  t.match(pre.headers.get('access-control-allow-headers') ?? '', /content-type/i)
  t.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/i)
  t.ok(pre.headers.get('access-control-max-age'), 'preflight is cached')
  t.not(pre.headers.get('access-control-allow-credentials'), 'true')

  const response = await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST',
    headers: { origin: NEXT_APP, 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: pair.refresh_token })
  })
  t.equal(response.status, 200)
  t.equal(response.headers.get('access-control-allow-origin'), NEXT_APP)
  t.match(response.headers.get('vary') ?? '', /\borigin\b/i)
  const exposed = (response.headers.get('access-control-expose-headers') ?? '').toLowerCase()
  for (const name of ['retry-after', 'x-ratelimit-limit', 'x-ratelimit-remaining', 'x-ratelimit-reset']) {
    t.ok(exposed.includes(name), `${name} is exposed`)
  }
  const body = await response.json() as Record<string, unknown>
  t.type(body['access_token'], 'string')

  const denied = await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST',
    headers: { origin: 'http://evil.example', 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: 'not-a-token' })
  })
  t.equal(denied.status, 401)
  t.equal(denied.headers.get('access-control-allow-origin'), null, 'a refused origin gets nothing over the wire either')
  await denied.arrayBuffer()
})
