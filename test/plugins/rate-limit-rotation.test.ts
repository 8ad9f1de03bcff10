import { test, type Test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { OTHER_API_KEY, build, issue, refreshWith, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { DJANGO_SECRET, simpleJwtRefresh } from '../support/simplejwt.js'

// POST /v1/tokens/refresh counts its request in the rotation's own script (plugins/rate-limit.ts,
// DeferredBudget): the same budget, headers and 429 as the plugin's counting, in one round trip.

type InjectResponse = import('light-my-request').Response

function limitHeadersOf (response: InjectResponse): Record<string, string | undefined> {
  const pick = (name: string): string | undefined => response.headers[name] === undefined ? undefined : String(response.headers[name])
  return { limit: pick('x-ratelimit-limit'), remaining: pick('x-ratelimit-remaining'), reset: pick('x-ratelimit-reset'), retryAfter: pick('retry-after') }
}

/** Pairs issued under two API keys, so that issuing stays within each key's own budget of `max`. */
async function pairs (app: FastifyInstance, count: number, max: number): Promise<Pair[]> {
  const issued: Pair[] = []
  for (let i = 0; i < count; i++) {
    if (i < max) {
      issued.push(await issue(app, { sub: `user-${i}` }))
    } else {
      const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${OTHER_API_KEY}` }, payload: { sub: `user-${i}` } })
      issued.push(response.json<Pair>())
    }
  }
  return issued
}

/** Every command Redis runs from now on, as MONITOR prints it. */
async function monitor (t: Test, url: string): Promise<string[]> {
  const client = new Redis(url)
  t.teardown(() => { client.disconnect() })
  const seen: string[] = []
  const feed = await client.monitor()
  feed.on('monitor', (_time: string, args: string[]) => { seen.push(args.join(' ')) })
  t.teardown(() => { feed.disconnect() })
  return seen
}

test('a refresh is counted by its rotation: one command both counts the budget and rotates, none other touches the budget', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: '10' })
  const [pair] = await pairs(app, 1, 10)
  const seen = await monitor(t, redis.url)
  const response = await refreshWith(app, pair!.refresh_token)
  t.equal(response.statusCode, 200)
  await new Promise((resolve) => setTimeout(resolve, 100))
  const budget = `${app.config.redisKeyPrefix}rl:ip:127.0.0.1`
  // MONITOR shows a script's own commands after it (INCR, PEXPIRE): the scripts are what was sent.
  const sent = seen.filter((command) => /^(evalsha|eval) /i.test(command) && command.includes(budget))
  t.equal(sent.length, 1, 'one script names the budget')
  t.ok(sent[0]?.includes(':j:'), 'the rotation\'s: it names the rotated token\'s record too')
  t.equal(await app.redis!.get(budget), '1', 'the request is counted once')
  t.same(limitHeadersOf(response), { limit: '10', remaining: '9', reset: '60', retryAfter: undefined }, 'the plugin\'s headers')
})

test('within the budget refreshes rotate with falling x-ratelimit-remaining; the one over it is 429 and rotates nothing', async (t) => {
  // No grace window: a token presented again after its rotation is a reuse, so a 200 later proves it was never rotated.
  const app = await build(t, { RATE_LIMIT_MAX: '2', RATE_LIMIT_WINDOW: '1s', REFRESH_REUSE_GRACE: '0' })
  const [a, b, c] = await pairs(app, 3, 2)
  const first = await refreshWith(app, a!.refresh_token)
  const second = await refreshWith(app, b!.refresh_token)
  t.same([first.statusCode, second.statusCode], [200, 200])
  t.same([limitHeadersOf(first).remaining, limitHeadersOf(second).remaining], ['1', '0'])
  const limited = await refreshWith(app, c!.refresh_token)
  t.equal(limited.statusCode, 429)
  t.equal(limited.json().code, 'rate_limited')
  t.same(limitHeadersOf(limited), { limit: '2', remaining: '0', reset: '1', retryAfter: '1' })
  await new Promise((resolve) => setTimeout(resolve, 1200))
  const later = await refreshWith(app, c!.refresh_token)
  t.equal(later.statusCode, 200, 'in the next window the refused token is still unused: the 429 rotated nothing')
  t.equal((await refreshWith(app, a!.refresh_token)).json().code, 'token_reused', 'while the first one was rotated')
})

test('the budget is one per address across routes and instances: spent by revokes on another instance, a valid refresh gets 429', async (t) => {
  const prefix = `rotor-test:rlr-${Date.now()}-${process.pid}:`
  const a = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: '3' })
  const b = await build(t, { REDIS_KEY_PREFIX: prefix, RATE_LIMIT_MAX: '3' })
  const [pair, other] = await pairs(a, 2, 3)
  const revoked = await b.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: 'not-a-token' } })
  t.equal(revoked.statusCode, 200)
  t.equal(limitHeadersOf(revoked).remaining, '2', 'the plugin counted the revoke')
  const refreshed = await refreshWith(a, pair!.refresh_token)
  t.equal(refreshed.statusCode, 200)
  t.equal(limitHeadersOf(refreshed).remaining, '1', 'the rotation counted the refresh in the same budget')
  t.equal((await b.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: 'not-a-token' } })).statusCode, 200)
  const limited = await refreshWith(b, other!.refresh_token)
  t.equal(limited.statusCode, 429, 'the fourth request of the address, a valid refresh on the other instance')
  const limitedRevoke = await a.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: 'not-a-token' } })
  t.equal(limitedRevoke.statusCode, 429, 'and the refresh the rotation refused was counted too')
})

test('refreshes that never reach a rotation are counted before their answer: bad JSON, a bad body, a refused token, then 429', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '3' })
  const [pair] = await pairs(app, 1, 3)
  const badJson = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '{"refresh_token":' })
  const badBody = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh: 'a SimpleJWT field on the /v1 route' } })
  const refused = await refreshWith(app, 'not-a-token')
  t.same([badJson.statusCode, badBody.statusCode, refused.statusCode], [400, 400, 401], 'each answered on its merits')
  t.same([badJson, badBody, refused].map((response) => limitHeadersOf(response).remaining), ['2', '1', '0'], 'each counted, in order')
  const limited = await refreshWith(app, pair!.refresh_token)
  t.equal(limited.statusCode, 429)
  const alsoLimited = await refreshWith(app, 'not-a-token')
  t.equal(alsoLimited.statusCode, 429, 'over the budget a refused token is 429 too, as when the plugin counted first')
  t.equal(alsoLimited.json().code, 'rate_limited')
  t.equal(limitHeadersOf(alsoLimited).retryAfter, '60')
})

test('a legacy SimpleJWT token exchanged on /v1/tokens/refresh is counted before the exchange', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1', LEGACY_SIMPLEJWT_SIGNING_KEY: DJANGO_SECRET })
  const exchanged = await refreshWith(app, simpleJwtRefresh(7))
  t.equal(exchanged.statusCode, 200)
  t.equal(limitHeadersOf(exchanged).remaining, '0')
  const limited = await refreshWith(app, simpleJwtRefresh(8))
  t.equal(limited.statusCode, 429)
  const listed = await app.inject({ method: 'GET', url: '/v1/subjects/8/sessions', headers: { authorization: `Bearer ${OTHER_API_KEY}` } })
  t.same(listed.json(), { sessions: [] }, 'the refused exchange made no session')
})

test('with Redis down, a refused refresh is answered on its merits and a valid one 503, neither 429, promptly', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: '1' })
  const [pair] = await pairs(app, 1, 1)
  await redis.stop()
  for (const [token, status] of [['not-a-token', 401], ['not-a-token', 401], [pair!.refresh_token, 503]] as const) {
    const started = Date.now()
    const response = await refreshWith(app, token)
    t.equal(response.statusCode, status)
    t.ok(Date.now() - started < 2000, `within the contract's 2 s (${Date.now() - started} ms)`)
    t.equal(response.headers['x-ratelimit-remaining'], undefined, 'no count to report')
  }
})

test('the SimpleJWT and OAuth refresh routes count the same way, each in its own error shape over the budget', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, RATE_LIMIT_MAX: '3' })
  const [a, b, c] = await pairs(app, 3, 3)
  const budget = `${app.config.redisKeyPrefix}rl:ip:127.0.0.1`
  const seen = await monitor(t, redis.url)
  const simple = async (body: Record<string, unknown>): Promise<InjectResponse> => await app.inject({ method: 'POST', url: '/api/auth/token/refresh/', payload: body })
  const oauth = async (token: string): Promise<InjectResponse> => await app.inject({
    method: 'POST', url: '/oauth2/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: `grant_type=refresh_token&refresh_token=${token}`
  })
  const viaSimple = await simple({ refresh: a!.refresh_token })
  const viaOAuth = await oauth(b!.refresh_token)
  const missing = await simple({})
  t.same([viaSimple.statusCode, viaOAuth.statusCode, missing.statusCode], [200, 200, 400])
  t.same(missing.json(), { refresh: ['This field is required.'] }, 'DRF\'s shape, counted first')
  t.same([viaSimple, viaOAuth, missing].map((response) => limitHeadersOf(response).remaining), ['2', '1', '0'])
  await new Promise((resolve) => setTimeout(resolve, 100))
  const sent = seen.filter((command) => /^(evalsha|eval) /i.test(command) && command.includes(budget))
  t.equal(sent.length, 3, 'one script per request names the budget')
  t.equal(sent.filter((command) => command.includes(':j:')).length, 2, 'the two refreshes\' own rotations')
  const overSimple = await simple({ refresh: c!.refresh_token })
  t.equal(overSimple.statusCode, 429)
  t.equal(overSimple.json().code, 'rate_limited')
  const overOAuth = await oauth(c!.refresh_token)
  t.equal(overOAuth.statusCode, 429)
  t.equal(overOAuth.json().error, 'temporarily_unavailable', 'RFC 6749\'s shape')
  t.equal(limitHeadersOf(overOAuth).retryAfter, '60')
  t.equal((await refreshWith(app, c!.refresh_token)).statusCode, 429, 'and /v1 over the same budget')
})
