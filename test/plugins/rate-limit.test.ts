import { randomBytes } from 'node:crypto'
import { test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { nameOfSecret } from '../../plugins/api-keys.js'
import { API_KEY, OTHER_API_KEY, REDIS_URL, build, issue, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'

type InjectResponse = import('light-my-request').Response

const MAX = '3'
const WRONG_KEY = 'wrong-api-key-0123456789abcdef'

function header (response: InjectResponse, name: string): string {
  const value = response.headers[name]
  if (value === undefined) return ''
  return Array.isArray(value) ? value.join(', ') : String(value)
}

function uniquePrefix (): string {
  return `rotor-test:rl-${randomBytes(6).toString('hex')}:`
}

interface From {
  remoteAddress?: string
  forwardedFor?: string
}

function fromHeaders (from: From, extra: Record<string, string> = {}): Record<string, string> {
  return from.forwardedFor === undefined ? extra : { ...extra, 'x-forwarded-for': from.forwardedFor }
}

/** A public request (refresh with a token that is simply refused: it counts all the same). */
async function refresh (app: FastifyInstance, from: From = {}): Promise<InjectResponse> {
  return app.inject({
    method: 'POST',
    url: '/v1/tokens/refresh',
    headers: fromHeaders(from),
    payload: { refresh_token: 'not-a-token' },
    ...(from.remoteAddress === undefined ? {} : { remoteAddress: from.remoteAddress })
  })
}

async function revoke (app: FastifyInstance, from: From = {}): Promise<InjectResponse> {
  return app.inject({
    method: 'POST',
    url: '/v1/tokens/revoke',
    headers: fromHeaders(from),
    payload: { token: 'not-a-token' },
    ...(from.remoteAddress === undefined ? {} : { remoteAddress: from.remoteAddress })
  })
}

async function issueWith (app: FastifyInstance, key: string, from: From = {}): Promise<InjectResponse> {
  return app.inject({
    method: 'POST',
    url: '/v1/tokens',
    headers: fromHeaders(from, { authorization: `Bearer ${key}` }),
    payload: { sub: 'alice' },
    ...(from.remoteAddress === undefined ? {} : { remoteAddress: from.remoteAddress })
  })
}

async function introspectWith (app: FastifyInstance, key: string): Promise<InjectResponse> {
  return app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${key}` }, payload: { token: 'not-a-token' } })
}

async function revokeSubjectWith (app: FastifyInstance, key: string): Promise<InjectResponse> {
  return app.inject({ method: 'POST', url: '/v1/subjects/alice/revoke', headers: { authorization: `Bearer ${key}` } })
}

/** Sends `count` public requests and returns their status codes. */
async function spend (app: FastifyInstance, count: number, from: From = {}): Promise<number[]> {
  const statuses: number[] = []
  for (let i = 0; i < count; i++) statuses.push((await refresh(app, from)).statusCode)
  return statuses
}

test('the request over RATE_LIMIT_MAX from one IP gets 429 rate_limited with Retry-After and x-ratelimit-* headers', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  t.same(await spend(app, 3), [401, 401, 401], 'the first three are served (and refused on their own merits)')
  const response = await refresh(app)
  t.equal(response.statusCode, 429)
  const body = response.json<Record<string, unknown>>()
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'])
  t.equal(body['statusCode'], 429)
  t.equal(body['code'], 'rate_limited')
  t.equal(body['error'], 'Too Many Requests')
  t.type(body['message'], 'string')
  t.ok((body['message'] as string).length > 0)
  const retryAfter = Number(header(response, 'retry-after'))
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `retry-after in seconds within the window: ${header(response, 'retry-after')}`)
  t.equal(header(response, 'x-ratelimit-limit'), '3')
  t.equal(header(response, 'x-ratelimit-remaining'), '0')
  t.ok(Number(header(response, 'x-ratelimit-reset')) >= 1, `x-ratelimit-reset: ${header(response, 'x-ratelimit-reset')}`)
  t.match(String(response.headers['content-type']), /application\/json/)
})

test('served public requests carry x-ratelimit-limit and a falling x-ratelimit-remaining', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  const remaining: string[] = []
  for (let i = 0; i < 3; i++) {
    const response = await refresh(app)
    t.equal(header(response, 'x-ratelimit-limit'), '3')
    remaining.push(header(response, 'x-ratelimit-remaining'))
  }
  t.same(remaining, ['2', '1', '0'])
})

test('a successful refresh counts against the per-IP budget like a refused one', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  // Four pairs, issued under two API keys so that issuing stays within each key's own budget.
  const pairs = [await issue(app), await issue(app), (await issueWith(app, OTHER_API_KEY)).json<Pair>(), (await issueWith(app, OTHER_API_KEY)).json<Pair>()]
  const statuses: number[] = []
  for (const pair of pairs) {
    statuses.push((await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: pair.refresh_token } })).statusCode)
  }
  t.same(statuses, [200, 200, 200, 429])
})

test('refresh and revoke share one per-IP budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  t.equal((await refresh(app)).statusCode, 401)
  t.equal((await refresh(app)).statusCode, 401)
  t.equal((await revoke(app)).statusCode, 200, 'revoke of an invalid token is 200 (RFC 7009)')
  const limited = await refresh(app)
  t.equal(limited.statusCode, 429, 'the refresh after 2 refreshes and 1 revoke is over the budget')
  t.equal(limited.json().code, 'rate_limited')
  const revokeLimited = await revoke(app)
  t.equal(revokeLimited.statusCode, 429, 'revoke is limited too once the budget is spent')
  t.equal(revokeLimited.json().code, 'rate_limited')
})

test('another client IP keeps its own budget when one IP is limited', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  await spend(app, 3, { remoteAddress: '10.0.0.1' })
  t.equal((await refresh(app, { remoteAddress: '10.0.0.1' })).statusCode, 429)
  t.equal((await refresh(app, { remoteAddress: '10.0.0.2' })).statusCode, 401, 'another IP still passes')
  t.equal((await revoke(app, { remoteAddress: '10.0.0.2' })).statusCode, 200)
})

test('preflight OPTIONS requests do not count against the per-IP budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  for (let i = 0; i < 10; i++) {
    const preflight = await app.inject({
      method: 'OPTIONS',
      url: i % 2 === 0 ? '/v1/tokens/refresh' : '/v1/tokens/revoke',
      headers: { origin: 'http://localhost:3000', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' }
    })
    t.equal(preflight.statusCode, 204, `preflight ${i + 1} is answered`)
  }
  const response = await refresh(app)
  t.equal(response.statusCode, 401, 'a POST after ten preflights still passes')
  t.equal(header(response, 'x-ratelimit-remaining'), '2', 'and it is only the first request counted')
})

test('health, JWKS, metrics and the docs are not rate limited', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1' })
  await spend(app, 2)
  for (const url of ['/health/live', '/health/ready', '/.well-known/jwks.json', '/metrics', '/openapi.json', '/docs/']) {
    for (let i = 0; i < 5; i++) {
      const response = await app.inject({ method: 'GET', url })
      t.equal(response.statusCode, 200, `${url} #${i + 1}`)
      t.equal(response.headers['x-ratelimit-limit'], undefined, `${url} carries no rate-limit headers`)
    }
  }
})

test('a route added without a word about limits spends the per-IP budget; one that opts out spends none', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  app.post('/v1/added-later', async () => ({}))
  app.get('/v1/added-later/open', { config: { rateLimit: false } }, async () => ({}))
  const statuses: number[] = []
  for (let i = 0; i < 4; i++) statuses.push((await app.inject({ method: 'POST', url: '/v1/added-later', payload: {} })).statusCode)
  t.same(statuses, [200, 200, 200, 429], 'limited by default')
  t.equal((await refresh(app)).statusCode, 429, 'and in the same budget as the other public routes')
  const open = await app.inject({ method: 'GET', url: '/v1/added-later/open' })
  t.equal(open.statusCode, 200, 'the route that opted out is served')
  t.equal(open.headers['x-ratelimit-limit'], undefined)
})

test('an unknown route is answered 404 without spending the budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  for (let i = 0; i < 5; i++) t.equal((await app.inject({ method: 'GET', url: '/nope' })).statusCode, 404)
  t.equal(header(await refresh(app), 'x-ratelimit-remaining'), '2')
})

test('the backend budget is per API key: one key exhausted does not affect another', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  for (let i = 0; i < 3; i++) t.equal((await issueWith(app, API_KEY)).statusCode, 200)
  const limited = await issueWith(app, API_KEY)
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'rate_limited')
  t.ok(header(limited, 'retry-after') !== '', 'retry-after on the backend 429 too')
  t.equal(header(limited, 'x-ratelimit-limit'), '3')
  t.equal((await issueWith(app, OTHER_API_KEY)).statusCode, 200, 'the other key, from the same IP, still issues')
})

test('issue, introspect and subject revoke share one budget per API key', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  t.equal((await issueWith(app, API_KEY)).statusCode, 200)
  t.equal((await introspectWith(app, API_KEY)).statusCode, 200)
  t.equal((await revokeSubjectWith(app, API_KEY)).statusCode, 200)
  t.equal((await issueWith(app, API_KEY)).statusCode, 429)
  t.equal((await introspectWith(app, API_KEY)).statusCode, 429)
  t.equal((await revokeSubjectWith(app, API_KEY)).statusCode, 429)
})

test('the backend budget of an API key is separate from the public per-IP budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  await spend(app, 4)
  t.equal((await refresh(app)).statusCode, 429, 'the IP is limited on the public routes')
  t.equal((await issueWith(app, API_KEY)).statusCode, 200, 'a backend on the same IP still issues with its key')
})

test('a wrong API key gets 401 invalid_client until the per-IP budget is spent, then 429', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  for (let i = 0; i < 3; i++) {
    const response = await issueWith(app, WRONG_KEY, { remoteAddress: '10.0.1.1' })
    t.equal(response.statusCode, 401)
    t.equal(response.json().code, 'invalid_client')
  }
  const limited = await issueWith(app, WRONG_KEY, { remoteAddress: '10.0.1.1' })
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'rate_limited')
  const noKey = await app.inject({ method: 'POST', url: '/v1/tokens/introspect', payload: { token: 'x' }, remoteAddress: '10.0.1.1' })
  t.equal(noKey.statusCode, 429, 'a request with no key at all from that IP is in the same budget')
  const elsewhere = await issueWith(app, WRONG_KEY, { remoteAddress: '10.0.1.2' })
  t.equal(elsewhere.statusCode, 401, 'a wrong key from another IP is still answered 401')
  t.equal(elsewhere.json().code, 'invalid_client')
  t.equal((await issueWith(app, API_KEY, { remoteAddress: '10.0.1.1' })).statusCode, 200, 'a valid key from the limited IP is not affected')
})

// Requests without a valid key are counted per address too, but under `anon:<address>`, not the
// public budget's `ip:<address>`: in Redis and in memory alike.
test('wrong API keys do not spend the public per-IP budget of that address (Redis)', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  for (let i = 0; i < 3; i++) t.equal((await issueWith(app, WRONG_KEY)).statusCode, 401)
  const response = await refresh(app)
  t.equal(response.statusCode, 401, 'refresh from that address is not limited by failed backend calls')
  t.equal(header(response, 'x-ratelimit-remaining'), '2', 'the public budget is untouched')
})

test('wrong API keys do not spend the public per-IP budget of that address (in-process store)', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, REDIS_URL: '' })
  t.equal(app.redis, null)
  for (let i = 0; i < 3; i++) t.equal((await issueWith(app, WRONG_KEY)).statusCode, 401)
  const response = await refresh(app)
  t.equal(response.statusCode, 401)
  t.equal(header(response, 'x-ratelimit-remaining'), '2')
})

test('RATE_LIMIT_ALLOW exempts that client address from the per-IP budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, RATE_LIMIT_ALLOW: '1.2.3.4' })
  const statuses = await spend(app, 10, { remoteAddress: '1.2.3.4' })
  t.same(statuses, Array(10).fill(401), 'ten requests from the allowed address are all served')
  await spend(app, 3, { remoteAddress: '5.6.7.8' })
  t.equal((await refresh(app, { remoteAddress: '5.6.7.8' })).statusCode, 429, 'another address is still limited')
})

// Behind a dual-stack listener (HOST=::), Node reports an IPv4 client as ::ffff:a.b.c.d.
test('RATE_LIMIT_ALLOW exempts an IPv4 address also when the socket reports it IPv4-mapped', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, RATE_LIMIT_ALLOW: '1.2.3.4' })
  const statuses = await spend(app, 5, { remoteAddress: '::ffff:1.2.3.4' })
  t.same(statuses, Array(5).fill(401), 'the allowed client is exempt however the socket spells its address')
})

// One IPv6 host normally owns a whole /64: a per-address budget is one fresh budget per request.
test('addresses of one IPv6 /64 share one budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  t.same(await spend(app, 3, { remoteAddress: '2001:db8:1:2::1' }), [401, 401, 401])
  t.equal((await refresh(app, { remoteAddress: '2001:db8:1:2::2' })).statusCode, 429, 'the next address of the same /64 is limited')
  t.equal((await refresh(app, { remoteAddress: '2001:db8:1:3::1' })).statusCode, 401, 'another /64 keeps its own budget')
})

test('with TRUST_PROXY, X-Forwarded-For from that proxy decides the client IP: two forwarded IPs, two budgets', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, TRUST_PROXY: '127.0.0.1' })
  const proxy = { remoteAddress: '127.0.0.1' }
  t.same(await spend(app, 3, { ...proxy, forwardedFor: '203.0.113.1' }), [401, 401, 401])
  t.equal((await refresh(app, { ...proxy, forwardedFor: '203.0.113.1' })).statusCode, 429, 'the first forwarded client is limited')
  t.equal((await refresh(app, { ...proxy, forwardedFor: '203.0.113.2' })).statusCode, 401, 'the second forwarded client has its own budget')
  t.equal((await refresh(app, proxy)).statusCode, 401, 'the proxy itself is not charged for its clients')
})

test('with TRUST_PROXY, X-Forwarded-For from an address that is not the proxy is ignored', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, TRUST_PROXY: '127.0.0.1' })
  await spend(app, 3, { remoteAddress: '198.51.100.7', forwardedFor: '203.0.113.1' })
  t.equal((await refresh(app, { remoteAddress: '198.51.100.7', forwardedFor: '203.0.113.2' })).statusCode, 429, 'a client cannot pick a new budget by forging the header')
})

test('with TRUST_PROXY, a forged address in front of the real one does not change the budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, TRUST_PROXY: '127.0.0.1' })
  const proxy = { remoteAddress: '127.0.0.1' }
  await spend(app, 3, { ...proxy, forwardedFor: '192.0.2.1, 203.0.113.9' })
  t.equal((await refresh(app, { ...proxy, forwardedFor: '192.0.2.2, 203.0.113.9' })).statusCode, 429, 'only the address the trusted proxy saw counts')
})

test('with TRUST_PROXY, RATE_LIMIT_ALLOW applies to the forwarded client address', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, TRUST_PROXY: '127.0.0.1', RATE_LIMIT_ALLOW: '1.2.3.4' })
  const statuses = await spend(app, 6, { remoteAddress: '127.0.0.1', forwardedFor: '1.2.3.4' })
  t.same(statuses, Array(6).fill(401), 'the allowed client behind the proxy is exempt')
  await spend(app, 3, { remoteAddress: '198.51.100.8', forwardedFor: '1.2.3.4' })
  t.equal((await refresh(app, { remoteAddress: '198.51.100.8', forwardedFor: '1.2.3.4' })).statusCode, 429, 'a forged header from elsewhere does not buy the exemption')
})

test('without TRUST_PROXY, X-Forwarded-For is ignored: every forwarded IP is in the socket address budget', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX })
  await refresh(app, { forwardedFor: '203.0.113.1' })
  await refresh(app, { forwardedFor: '203.0.113.2' })
  await refresh(app, { forwardedFor: '203.0.113.3' })
  t.equal((await refresh(app, { forwardedFor: '203.0.113.4' })).statusCode, 429)
  t.equal((await refresh(app)).statusCode, 429, 'the socket address is the client')
})

test('without TRUST_PROXY, a forged X-Forwarded-For does not buy the RATE_LIMIT_ALLOW exemption', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, RATE_LIMIT_ALLOW: '1.2.3.4' })
  await spend(app, 3, { forwardedFor: '1.2.3.4' })
  t.equal((await refresh(app, { forwardedFor: '1.2.3.4' })).statusCode, 429)
})

test('two instances on one Redis share one per-IP budget', async (t) => {
  const prefix = uniquePrefix()
  const a = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: MAX })
  const b = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: MAX })
  t.equal((await refresh(a)).statusCode, 401)
  t.equal((await revoke(b)).statusCode, 200)
  t.equal((await refresh(a)).statusCode, 401)
  const limited = await refresh(b)
  t.equal(limited.statusCode, 429, 'the fourth request, on the other instance, is over the shared budget')
  t.equal(limited.json().code, 'rate_limited')
})

test('two instances on one Redis share one budget per API key', async (t) => {
  const prefix = uniquePrefix()
  const a = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: MAX })
  const b = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: MAX })
  t.equal((await issueWith(a, API_KEY)).statusCode, 200)
  t.equal((await issueWith(b, API_KEY)).statusCode, 200)
  t.equal((await issueWith(a, API_KEY)).statusCode, 200)
  t.equal((await issueWith(b, API_KEY)).statusCode, 429)
})

test('instances with different key prefixes keep separate budgets', async (t) => {
  const a = await build(t, { RATE_LIMIT_MAX: MAX })
  const b = await build(t, { RATE_LIMIT_MAX: MAX })
  await spend(a, 4)
  t.equal((await refresh(b)).statusCode, 401)
})

test('rate-limit counters in Redis are named for their budget, live under REDIS_KEY_PREFIX and expire with the window', async (t) => {
  const prefix = uniquePrefix()
  const app = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: MAX, RATE_LIMIT_WINDOW: '30s' })
  await refresh(app)
  t.equal((await issueWith(app, API_KEY)).statusCode, 200)
  await issueWith(app, WRONG_KEY)
  const redis = new Redis(REDIS_URL)
  t.teardown(() => { redis.disconnect() })
  // Rate-limit counters only (the denylist's store marker and the issued session's index live as long as its tokens).
  const keys = (await redis.keys(`${prefix}*`)).filter((key) => !key.endsWith(':store:epoch') && !key.includes('}:sessions')).sort()
  t.same(keys, [`${prefix}rl:anon:127.0.0.1`, `${prefix}rl:ip:127.0.0.1`, `${prefix}rl:key:${nameOfSecret(API_KEY)}`].sort(),
    'one counter per budget: the address, the API key, the address of calls without a valid key')
  for (const key of keys) {
    const ttl = await redis.pttl(key)
    t.ok(ttl > 0 && ttl <= 30_000, `${key} expires within the window (pttl ${ttl})`)
  }
  t.notOk(keys.some((key) => key.includes(API_KEY)), 'the API key itself is never part of a Redis key')
})

test('the budget comes back once RATE_LIMIT_WINDOW has passed', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, RATE_LIMIT_WINDOW: '1s' })
  await spend(app, 3)
  const limited = await refresh(app)
  t.equal(limited.statusCode, 429)
  t.equal(header(limited, 'retry-after'), '1')
  await new Promise((resolve) => setTimeout(resolve, 1200))
  t.equal((await refresh(app)).statusCode, 401, 'served again in the next window')
})

test('without Redis, the limit works in-process: the request over the budget gets 429', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: MAX, REDIS_URL: '' })
  t.equal(app.redis, null, 'the in-process store is used')
  t.equal((await refresh(app)).statusCode, 401)
  t.equal((await revoke(app)).statusCode, 200)
  t.equal((await refresh(app)).statusCode, 401)
  const limited = await refresh(app)
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'rate_limited')
  t.ok(header(limited, 'retry-after') !== '')
  t.equal((await refresh(app, { remoteAddress: '10.0.3.1' })).statusCode, 401, 'another IP passes')
  for (let i = 0; i < 3; i++) t.equal((await issueWith(app, API_KEY)).statusCode, 200)
  t.equal((await issueWith(app, API_KEY)).statusCode, 429, 'the per-key budget works in-process too')
  t.equal((await issueWith(app, OTHER_API_KEY)).statusCode, 200)
})

test('when Redis is down the rate limit lets requests through, and issuing keeps working', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: '1' })
  await redis.stop()
  for (let i = 0; i < 3; i++) {
    const started = Date.now()
    const response = await issueWith(app, API_KEY)
    t.equal(response.statusCode, 200, `issue #${i + 1} is served`)
    t.ok(Date.now() - started < 2000, 'and promptly')
  }
  const response = await refresh(app)
  t.not(response.statusCode, 429, 'a public request is not refused as rate limited')
  t.not(response.statusCode, 500)
})
