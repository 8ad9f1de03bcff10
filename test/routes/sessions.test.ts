import { test, type Test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import type { Response } from 'light-my-request'
import { mintAccessToken, sessionOf } from '../../src/minting.js'
import type { SessionView } from '../../src/sessions.js'
import { API_KEY, build, decodeJwt, introspectToken, listen, LogCapture, REDIS_URL, refreshWith, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { sample, scrape } from '../support/metrics.js'

/*
 * The session routes (contract, "Sessions"): backends list and end a subject's sessions with an
 * API key of the `sessions` scope; end users list and end their own with their access token.
 */

/** A listed session; the end-user list adds `current`. */
type Listed = SessionView & { current?: boolean }

const ISSUER = 'issuer:issuer-secret-0123456789:issue'
const SUPPORT_SECRET = 'support-secret-0123456789'
const KEYS = { API_KEYS: `${API_KEY},${ISSUER},support:${SUPPORT_SECRET}:sessions` }

async function issueAs (app: FastifyInstance, body: Record<string, unknown>, secret = 'issuer-secret-0123456789'): Promise<Pair> {
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${secret}` }, payload: body })
  if (response.statusCode !== 200) throw new Error(`issue answered ${response.statusCode} ${response.body}`)
  return response.json<Pair>()
}

async function listOf (app: FastifyInstance, sub: string): Promise<Listed[]> {
  const response = await app.inject({ method: 'GET', url: `/v1/subjects/${encodeURIComponent(sub)}/sessions`, headers: { authorization: `Bearer ${SUPPORT_SECRET}` } })
  if (response.statusCode !== 200) throw new Error(`list answered ${response.statusCode} ${response.body}`)
  return response.json<{ sessions: Listed[] }>().sessions
}

async function endAsBackend (app: FastifyInstance, sub: string, sid: string): Promise<Response> {
  return app.inject({ method: 'DELETE', url: `/v1/subjects/${encodeURIComponent(sub)}/sessions/${sid}`, headers: { authorization: `Bearer ${SUPPORT_SECRET}` } })
}

async function asUser (app: FastifyInstance, method: 'GET' | 'DELETE' | 'POST', url: string, accessToken: string): Promise<Response> {
  return app.inject({ method, url, headers: { authorization: `Bearer ${accessToken}` } })
}

const sidOf = (pair: Pair): string => String(decodeJwt(pair.refresh_token).payload['sid'])

function codeOf (response: Response): unknown {
  return response.json<Record<string, unknown>>()['code']
}

async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

for (const store of ['Redis', 'the in-process store'] as const) {
  const env = store === 'Redis' ? KEYS : { ...KEYS, REDIS_URL: '' }

  test(`${store}: a subject's sessions are listed newest first, with what the contract names`, async (t) => {
    const app = await build(t, env)
    const first = await issueAs(app, { sub: 'lister', device: 'Firefox on Linux' })
    await sleep(5)
    const second = await issueAs(app, { sub: 'lister' }, API_KEY)
    await issueAs(app, { sub: 'someone-else' })
    const listed = await listOf(app, 'lister')
    t.same(listed.map((session) => session.sid), [sidOf(second), sidOf(first)], 'both, newest first, and no one else\'s')
    const claims = decodeJwt(first.refresh_token).payload
    t.same(listed[1], {
      sid: claims['sid'],
      created_at: claims['auth_time'],
      auth_time: claims['auth_time'],
      last_refreshed_at: claims['iat'],
      expires_at: claims['exp'],
      client_id: 'issuer',
      device: 'Firefox on Linux'
    }, 'every field, from the issuance')
    t.equal(listed[0]?.device, null, 'no label given: null')
    t.equal(listed[0]?.client_id, decodeJwt(second.refresh_token).payload['client_id'], 'the issuing key\'s name')

    await sleep(1100)
    const rotated = (await refreshWith(app, first.refresh_token)).json<Pair>()
    const after = (await listOf(app, 'lister')).find((session) => session.sid === sidOf(first))
    const successor = decodeJwt(rotated.refresh_token).payload
    t.match(after, { created_at: claims['auth_time'], last_refreshed_at: successor['iat'], expires_at: successor['exp'], device: 'Firefox on Linux' },
      'a rotation moves last_refreshed_at and expires_at, and keeps the rest')
    t.ok((after?.last_refreshed_at ?? 0) > Number(claims['iat']), 'refreshed after it was issued')
    t.same(await listOf(app, 'nobody'), [], 'a subject without sessions: an empty list')
  })

  test(`${store}: a backend ends one session: its refresh tokens stop, its access tokens introspect inactive, and it is no longer listed`, async (t) => {
    const app = await build(t, env)
    const stolen = await issueAs(app, { sub: 'laptop-owner', device: 'stolen laptop' })
    const phone = await issueAs(app, { sub: 'laptop-owner', device: 'phone' })
    const ended = await endAsBackend(app, 'laptop-owner', sidOf(stolen))
    t.equal(ended.statusCode, 200)
    t.same(ended.json(), {})
    t.equal(codeOf(await refreshWith(app, stolen.refresh_token)), 'token_revoked', 'its refresh token stops at once')
    t.same(await introspectToken(app, stolen.access_token), { active: false }, 'its access token introspects inactive')
    t.equal((await refreshWith(app, phone.refresh_token)).statusCode, 200, 'the other session goes on')
    t.same((await listOf(app, 'laptop-owner')).map((session) => session.device), ['phone'])

    const again = await endAsBackend(app, 'laptop-owner', sidOf(stolen))
    t.equal(again.statusCode, 404, 'an ended session: 404')
    t.match(again.json(), { statusCode: 404, code: 'not_found', error: 'Not Found' })
    t.equal(codeOf(await endAsBackend(app, 'laptop-owner', 'AQAAAAAAAAAAAAAAAAAAAAA')), 'not_found', 'an unknown sid: 404')
    const other = await issueAs(app, { sub: 'bystander' })
    t.equal(codeOf(await endAsBackend(app, 'laptop-owner', sidOf(other))), 'not_found', 'a sid of another subject: 404')
    t.equal((await refreshWith(app, other.refresh_token)).statusCode, 200, 'and that session is untouched')
  })

  test(`${store}: a user lists their own sessions, the current one marked, and ends one of them`, async (t) => {
    const app = await build(t, env)
    const laptop = await issueAs(app, { sub: 'user-1', device: 'laptop' })
    const phone = await issueAs(app, { sub: 'user-1', device: 'phone' })
    const stranger = await issueAs(app, { sub: 'user-2' })

    const mine = await asUser(app, 'GET', '/v1/sessions', phone.access_token)
    t.equal(mine.statusCode, 200)
    const sessions = mine.json<{ sessions: Listed[] }>().sessions
    t.same(sessions.map((session) => [session.device, session.current]), [['phone', true], ['laptop', false]], 'mine only, newest first, the asking one current')

    const someoneElses = await asUser(app, 'DELETE', `/v1/sessions/${sidOf(stranger)}`, phone.access_token)
    t.equal(someoneElses.statusCode, 404, 'someone else\'s sid: 404')
    t.equal(codeOf(someoneElses), 'not_found')
    t.equal((await refreshWith(app, stranger.refresh_token)).statusCode, 200, 'and their session goes on')

    const ended = await asUser(app, 'DELETE', `/v1/sessions/${sidOf(laptop)}`, phone.access_token)
    t.equal(ended.statusCode, 200)
    t.same(ended.json(), {})
    t.equal(codeOf(await refreshWith(app, laptop.refresh_token)), 'token_revoked', 'the laptop is logged out')
    t.equal(codeOf(await asUser(app, 'GET', '/v1/sessions', laptop.access_token)), 'token_revoked', 'and its access token no longer lists anything')
    t.equal(codeOf(await asUser(app, 'DELETE', `/v1/sessions/${sidOf(laptop)}`, phone.access_token)), 'not_found', 'ended already: 404')

    const self = await asUser(app, 'DELETE', `/v1/sessions/${sidOf(phone)}`, phone.access_token)
    t.equal(self.statusCode, 200, 'a user may end the session they ask from (logging out here)')
    t.equal(codeOf(await refreshWith(app, phone.refresh_token)), 'token_revoked')
  })

  test(`${store}: "log out my other devices" ends every session of mine but this one`, async (t) => {
    const app = await build(t, env)
    const others = [await issueAs(app, { sub: 'many' }), await issueAs(app, { sub: 'many' }), await issueAs(app, { sub: 'many' })]
    const here = await issueAs(app, { sub: 'many', device: 'here' })
    const elsewhere = await issueAs(app, { sub: 'not-me' })
    const response = await asUser(app, 'POST', '/v1/sessions/revoke-others', here.access_token)
    t.equal(response.statusCode, 200)
    t.same(response.json(), {})
    for (const other of others) t.equal(codeOf(await refreshWith(app, other.refresh_token)), 'token_revoked', 'another device is logged out')
    const kept = await refreshWith(app, here.refresh_token)
    t.equal(kept.statusCode, 200, 'this one goes on')
    t.equal((await refreshWith(app, elsewhere.refresh_token)).statusCode, 200, 'another subject is untouched')
    const listed = (await asUser(app, 'GET', '/v1/sessions', kept.json<Pair>().access_token)).json<{ sessions: Listed[] }>().sessions
    t.same(listed.map((session) => [session.device, session.current]), [['here', true]])
    const withBody = await app.inject({ method: 'POST', url: '/v1/sessions/revoke-others', headers: { authorization: `Bearer ${here.access_token}` }, payload: { all: true } })
    t.equal(codeOf(withBody), 'invalid_request', 'a body with fields is refused, as subject revoke refuses it')
  })

  test(`${store}: revoked, logged out and logged-out-everywhere sessions leave the list by themselves`, async (t) => {
    const app = await build(t, env)
    const reused = await issueAs(app, { sub: 'tidy' })
    const loggedOut = await issueAs(app, { sub: 'tidy' })
    const kept = await issueAs(app, { sub: 'tidy', device: 'kept' })
    await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: loggedOut.refresh_token } })
    // Once the successor is rotated too, presenting the first token again is a reuse (no window).
    const successor = (await refreshWith(app, reused.refresh_token)).json<Pair>()
    await refreshWith(app, successor.refresh_token)
    t.equal(codeOf(await refreshWith(app, reused.refresh_token)), 'token_reused', 'a reuse')
    t.same((await listOf(app, 'tidy')).map((session) => session.device), ['kept'], 'the reused and the logged-out sessions are gone')
    await sleep(2)
    await app.inject({ method: 'POST', url: '/v1/subjects/tidy/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
    t.same(await listOf(app, 'tidy'), [], 'log out everywhere empties the list')
    t.equal(codeOf(await refreshWith(app, kept.refresh_token)), 'token_revoked')
    const after = await issueAs(app, { sub: 'tidy', device: 'after' })
    t.same((await listOf(app, 'tidy')).map((session) => session.sid), [sidOf(after)], 'a session issued after it is listed')
  })
}

test('the end-user routes refuse a missing, malformed, foreign, expired or revoked access token with the contract\'s 401 codes', async (t) => {
  const app = await build(t, KEYS)
  const pair = await issueAs(app, { sub: 'prober' })
  const other = await build(t, KEYS)
  const foreign = await issueAs(other, { sub: 'prober' })
  const claims = decodeJwt(pair.access_token).payload
  const session = sessionOf(claims)
  const nowSec = Math.floor(Date.now() / 1000)
  const expired = mintAccessToken(app.keyring, { ...app.config, accessTokenTtl: 60 }, session, nowSec - 120, 'expired-jti').token
  const future = mintAccessToken(app.keyring, app.config, session, nowSec + 3600, 'future-jti').token
  const [header = '', body = ''] = pair.access_token.split('.')
  const unsigned = `${Buffer.from(JSON.stringify({ ...decodeJwt(pair.access_token).header, alg: 'none' })).toString('base64url')}.${body}.`
  const tampered = `${header}.${Buffer.from(JSON.stringify({ ...claims, sub: 'victim' })).toString('base64url')}.${pair.access_token.split('.')[2] ?? ''}`

  const cases: Array<[string, Record<string, string>, string]> = [
    ['no Authorization header', {}, 'token_invalid'],
    ['an empty bearer', { authorization: 'Bearer ' }, 'token_invalid'],
    ['Basic credentials', { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` }, 'token_invalid'],
    ['not a JWS', { authorization: 'Bearer not-a-token' }, 'token_invalid'],
    ['an API key', { authorization: `Bearer ${API_KEY}` }, 'token_invalid'],
    ['a refresh token', { authorization: `Bearer ${pair.refresh_token}` }, 'token_invalid'],
    ['a token of another Rotor (unknown kid)', { authorization: `Bearer ${foreign.access_token}` }, 'token_invalid'],
    ['alg none', { authorization: `Bearer ${unsigned}x` }, 'token_invalid'],
    ['a tampered payload', { authorization: `Bearer ${tampered}` }, 'token_invalid'],
    ['an expired access token', { authorization: `Bearer ${expired}` }, 'token_expired'],
    ['a token issued in the future', { authorization: `Bearer ${future}` }, 'token_invalid'],
    ['a header of 9 kB', { authorization: `Bearer ${'a'.repeat(9000)}.b.c` }, 'token_invalid'],
    ['a kid that is not a string', { authorization: `Bearer ${Buffer.from(JSON.stringify({ alg: 'EdDSA', kid: 7, typ: 'at+jwt' })).toString('base64url')}.${body}.${pair.access_token.split('.')[2] ?? ''}` }, 'token_invalid']
  ]
  for (const [what, headers, code] of cases) {
    for (const [method, url] of [['GET', '/v1/sessions'], ['DELETE', `/v1/sessions/${session.sid}`], ['POST', '/v1/sessions/revoke-others']] as const) {
      const response = await app.inject({ method, url, headers })
      t.equal(response.statusCode, 401, `${what}, ${method} ${url}: 401`)
      t.match(response.json(), { statusCode: 401, code, error: 'Unauthorized', message: String }, `${what}: ${code}`)
      t.notOk(response.body.includes(pair.access_token.split('.')[2] ?? '-'), 'no token in the answer')
    }
  }
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200, 'and nothing ended the session meanwhile')

  const revoked = await issueAs(app, { sub: 'prober' })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.access_token } })
  t.equal(codeOf(await asUser(app, 'GET', '/v1/sessions', revoked.access_token)), 'token_revoked', 'a revoked access token')
  const everywhere = await issueAs(app, { sub: 'everywhere' })
  await sleep(2)
  await app.inject({ method: 'POST', url: '/v1/subjects/everywhere/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(codeOf(await asUser(app, 'GET', '/v1/sessions', everywhere.access_token)), 'token_revoked', 'the access token of a subject logged out everywhere')
})

test('an access token signed with a rotated-out key that still verifies is accepted; the session routes follow the keyring', async (t) => {
  const app = await build(t, KEYS)
  const pair = await issueAs(app, { sub: 'keyed' })
  const kid = decodeJwt(pair.access_token).header['kid']
  t.equal(app.keyring.accessKey(kid)?.kid, kid, 'the keyring knows the kid')
  t.equal(app.keyring.accessKey(decodeJwt(pair.refresh_token).header['kid']), undefined, 'a refresh kid is no access key')
  t.equal((await asUser(app, 'GET', '/v1/sessions', pair.access_token)).statusCode, 200)
})

test('with the denylist off, every session route answers 501 denylist_disabled and nothing is written per session', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { ...KEYS, REDIS_URL: redis.url, DENYLIST_ENABLED: 'false' })
  const pair = await issueAs(app, { sub: 'off', device: 'laptop' })
  await refreshWith(app, pair.refresh_token)
  const sid = sidOf(pair)
  const calls: Array<[string, () => Promise<Response>]> = [
    ['GET /v1/subjects/{sub}/sessions', async () => app.inject({ method: 'GET', url: '/v1/subjects/off/sessions', headers: { authorization: `Bearer ${SUPPORT_SECRET}` } })],
    ['DELETE /v1/subjects/{sub}/sessions/{sid}', async () => endAsBackend(app, 'off', sid)],
    ['GET /v1/sessions', async () => asUser(app, 'GET', '/v1/sessions', pair.access_token)],
    ['DELETE /v1/sessions/{sid}', async () => asUser(app, 'DELETE', `/v1/sessions/${sid}`, pair.access_token)],
    ['POST /v1/sessions/revoke-others', async () => asUser(app, 'POST', '/v1/sessions/revoke-others', pair.access_token)]
  ]
  for (const [route, call] of calls) {
    const response = await call()
    t.equal(response.statusCode, 501, `${route}: 501`)
    t.match(response.json(), { statusCode: 501, code: 'denylist_disabled', error: 'Not Implemented' }, route)
  }
  const client = new Redis(redis.url)
  t.teardown(() => { client.disconnect() })
  const keys = await client.keys('*')
  t.same(keys.filter((key) => !key.includes(':rl:')), [], 'no key but rate-limit counters')
})

test('MAX_SESSIONS_PER_SUBJECT: one more session ends the oldest, says so in the log and counts it', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { ...KEYS, MAX_SESSIONS_PER_SUBJECT: '3' }, logs)
  const pairs: Pair[] = []
  for (let i = 0; i < 5; i++) {
    pairs.push(await issueAs(app, { sub: 'crowded', device: `device ${i}` }))
    await sleep(2)
  }
  t.same((await listOf(app, 'crowded')).map((session) => session.device), ['device 4', 'device 3', 'device 2'], 'the newest three')
  for (const [i, pair] of pairs.entries()) {
    t.equal((await refreshWith(app, pair.refresh_token)).statusCode, i < 2 ? 401 : 200, `session ${i} ${i < 2 ? 'ended' : 'goes on'}`)
  }
  const evictions = logs.lines.filter((line) => line['event'] === 'session.evicted')
  t.same(evictions.map((line) => [line['sub'], line['sid'], line['level']]), [['crowded', sidOf(pairs[0]!), 40], ['crowded', sidOf(pairs[1]!), 40]], 'one warning per session ended, naming it')
  const base = await listen(app)
  t.equal(sample(await scrape(base), 'rotor_sessions_revoked_total{reason="limit"}'), 2)
  t.notOk(logs.text.includes(pairs[0]!.refresh_token), 'no token in the log')
})

async function concurrentIssues (t: Test, env: Record<string, string>): Promise<void> {
  const app = await build(t, { ...KEYS, ...env, MAX_SESSIONS_PER_SUBJECT: '10' })
  const base = await listen(app)
  const pairs = await Promise.all(Array.from({ length: 30 }, async () => {
    const response = await fetch(`${base}/v1/tokens`, { method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ sub: 'stampede' }) })
    t.equal(response.status, 200)
    return await response.json() as Pair
  }))
  const listed = new Set((await listOf(app, 'stampede')).map((session) => session.sid))
  t.equal(listed.size, 10, 'exactly ten listed')
  const outcomes = await Promise.all(pairs.map(async (pair) => {
    const response = await fetch(`${base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token }) })
    return { sid: sidOf(pair), status: response.status }
  }))
  const alive = outcomes.filter((outcome) => outcome.status === 200)
  t.equal(alive.length, 10, 'exactly ten refresh')
  t.ok(alive.every((outcome) => listed.has(outcome.sid)), 'and they are the ten listed')
  t.equal(outcomes.filter((outcome) => outcome.status === 401).length, 20, 'the twenty others were ended')
  t.equal((await listOf(app, 'stampede')).length, 10, 'still ten after they all refreshed')
}

test('30 concurrent issues for one subject with MAX_SESSIONS_PER_SUBJECT=10 leave exactly 10 (Redis)', async (t) => {
  await concurrentIssues(t, {})
})

test('30 concurrent issues for one subject with MAX_SESSIONS_PER_SUBJECT=10 leave exactly 10 (the in-process store)', async (t) => {
  await concurrentIssues(t, { REDIS_URL: '' })
})

test('expired sessions leave the list, and the index\'s keys expire with the last session', async (t) => {
  const app = await build(t, { ...KEYS, REFRESH_TOKEN_TTL: '2s', ACCESS_TOKEN_TTL: '1s' })
  const pair = await issueAs(app, { sub: 'short-lived' })
  t.equal((await listOf(app, 'short-lived')).length, 1)
  const client = new Redis(REDIS_URL)
  t.teardown(() => { client.disconnect() })
  const keys = await client.keys(`${app.config.redisKeyPrefix}*sessions*`)
  t.equal(keys.length, 2, 'two keys')
  for (const key of keys) {
    const ttl = await client.pttl(key)
    t.ok(ttl > 0 && ttl <= 2000, `${key.slice(key.indexOf('}') + 1)} expires with the session (${ttl} ms)`)
  }
  const exp = Number(decodeJwt(pair.refresh_token).payload['exp'])
  await sleep(exp * 1000 - Date.now() + 50)
  t.same(await listOf(app, 'short-lived'), [], 'expired: not listed')
  t.same(await client.keys(`${app.config.redisKeyPrefix}*sessions*`), [], 'and nothing of it is left in Redis')
})

test('a device label longer than 128 characters is refused at issuance', async (t) => {
  const app = await build(t, KEYS)
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: { sub: 'x', device: 'd'.repeat(129) } })
  t.equal(response.statusCode, 400)
  t.equal(codeOf(response), 'invalid_request')
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: { sub: 'x', device: 'd'.repeat(128) } })).statusCode, 200)
})

test('a browser on http://localhost:3000 may list and end its sessions: CORS allows GET and DELETE with an Authorization header', async (t) => {
  const app = await build(t, KEYS)
  const base = await listen(app)
  const pair = await issueAs(app, { sub: 'browser-user' })
  const preflight = await fetch(`${base}/v1/sessions/${sidOf(pair)}`, {
    method: 'OPTIONS',
    headers: { origin: 'http://localhost:3000', 'access-control-request-method': 'DELETE', 'access-control-request-headers': 'authorization' }
  })
  t.equal(preflight.status, 204)
  t.equal(preflight.headers.get('access-control-allow-origin'), 'http://localhost:3000')
  t.match(preflight.headers.get('access-control-allow-methods'), /DELETE/)
  t.match(preflight.headers.get('access-control-allow-headers'), /authorization/)
  const listed = await fetch(`${base}/v1/sessions`, { headers: { origin: 'http://localhost:3000', authorization: `Bearer ${pair.access_token}` } })
  t.equal(listed.status, 200, 'over a real socket')
  t.equal(listed.headers.get('access-control-allow-origin'), 'http://localhost:3000')
  const refused = await fetch(`${base}/v1/sessions`, { headers: { origin: 'http://localhost:3000' } })
  t.equal(refused.status, 401)
  t.equal(refused.headers.get('access-control-allow-origin'), 'http://localhost:3000', 'a page can read the 401 too')
})
