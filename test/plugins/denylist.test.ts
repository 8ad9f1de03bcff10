import { test } from 'tap'
import { createHash } from 'node:crypto'
import { Redis } from 'ioredis'
import { API_KEY, build, decodeJwt, introspectToken, issue, refreshWith, REDIS_URL, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { CONFIRM } from '../../plugins/store/scripts.js'
import { groupBySlot } from '../../plugins/redis.js'

/** Every key of a test's prefix with its TTL in ms, read straight from Redis. */
async function keysWithTtl (prefix: string, url = REDIS_URL): Promise<Map<string, number>> {
  const redis = new Redis(url)
  try {
    const keys = await redis.keys(`${prefix}*`)
    const ttls = new Map<string, number>()
    for (const key of keys) ttls.set(key, await redis.pttl(key))
    return ttls
  } finally {
    redis.disconnect()
  }
}

test('refresh records the old jti with a TTL equal to its remaining life', async (t) => {
  const app = await build(t, { REFRESH_TOKEN_TTL: '1h' })
  const pair = await issue(app, { sub: 'ttl-user' })
  const old = decodeJwt(pair.refresh_token).payload
  const response = await refreshWith(app, pair.refresh_token)
  t.equal(response.statusCode, 200)
  const keys = await keysWithTtl(app.config.redisKeyPrefix)
  const recorded = [...keys].filter(([key]) => !key.includes(':rl:') && !key.endsWith(':store:epoch') && !key.includes(':sessions'))
  t.equal(recorded.length, 1, 'one record per rotation')
  // The session index: two keys, none outliving the session's newest refresh token.
  const successor = decodeJwt(response.json<Pair>().refresh_token).payload
  const index = [...keys].filter(([key]) => key.includes(':sessions'))
  t.same(index.map(([key]) => key.slice(key.indexOf('}') + 1)).sort(), [':sessions', ':sessions:by-expiry'], 'the session index')
  for (const [key, pttl] of index) {
    const untilExp = (successor['exp'] as number) * 1000 - Date.now()
    t.ok(pttl > 0 && Math.abs(pttl - untilExp) < 2000, `${key.slice(key.indexOf('}') + 1)} lives until the session's expiry (${pttl} ≈ ${untilExp} ms)`)
  }
  const [key, ttl] = recorded[0] ?? ['', 0]
  t.ok(key.endsWith(`:j:${String(old['jti'])}`), 'keyed by the old jti')
  t.ok(key.includes('{ttl-user}'), 'hash-tagged by subject')
  const remaining = (old['exp'] as number) * 1000 - Date.now()
  t.ok(ttl > 0 && ttl <= 3600_000, `TTL ${ttl} within the token's life`)
  t.ok(Math.abs(ttl - remaining) < 2000, `TTL ${ttl} ≈ remaining life ${remaining}`)
})

test('LEEWAY extends the record by the leeway, so a token accepted late is still refused', async (t) => {
  const app = await build(t, { REFRESH_TOKEN_TTL: '1h', LEEWAY: '30s' })
  const pair = await issue(app)
  await refreshWith(app, pair.refresh_token)
  const [ttl] = [...(await keysWithTtl(app.config.redisKeyPrefix))].filter(([key]) => key.includes(':j:')).map(([, pttl]) => pttl)
  t.ok((ttl ?? 0) > 3600_000 && (ttl ?? 0) <= 3630_000, `TTL ${String(ttl)} is life plus leeway`)
})

test('with the denylist off, a refresh writes nothing to Redis but rate-limit counters', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, DENYLIST_ENABLED: 'false' })
  const pair = await issue(app)
  const monitor = new Redis(redis.url)
  t.teardown(() => { monitor.disconnect() })
  const seen: string[] = []
  const feed = await monitor.monitor()
  feed.on('monitor', (_time: string, args: string[]) => { seen.push(args.join(' ')) })
  t.teardown(() => { feed.disconnect() })

  const first = await refreshWith(app, pair.refresh_token)
  t.equal(first.statusCode, 200)
  const again = await refreshWith(app, pair.refresh_token)
  t.equal(again.statusCode, 200, 'the old refresh token stays valid, as SimpleJWT without blacklisting')
  await new Promise((resolve) => setTimeout(resolve, 100))
  const writes = seen.filter((command) => !/^(ping|info|monitor)/i.test(command))
  t.ok(writes.length > 0, 'the monitor does see the rate-limit counter')
  const other = writes.filter((command) => !command.includes(`${app.config.redisKeyPrefix}rl:`) && !/^(evalsha|eval|script)/i.test(command))
  t.same(other, [], 'no denylist or session command')
  const scripts = writes.filter((command) => /^(evalsha|eval)/i.test(command))
  t.ok(scripts.every((command) => command.includes(`${app.config.redisKeyPrefix}rl:`)), 'every script run is the rate limiter')
  t.same([...(await keysWithTtl(app.config.redisKeyPrefix, redis.url)).keys()].filter((key) => !key.includes(':rl:')), [])
})

test('with the denylist off, revocation answers 501 denylist_disabled', async (t) => {
  const app = await build(t, { DENYLIST_ENABLED: 'false' })
  const pair = await issue(app)
  const revoke = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
  t.equal(revoke.statusCode, 501)
  t.equal(revoke.json().code, 'denylist_disabled')
  const subject = await app.inject({ method: 'POST', url: '/v1/subjects/alice/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(subject.statusCode, 501)
  t.equal(subject.json().code, 'denylist_disabled')
  t.match(await introspectToken(app, pair.access_token), { active: true })
})

test('revoking a refresh token ends its session; its access tokens introspect inactive', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  const revoke = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: rotated.refresh_token } })
  t.equal(revoke.statusCode, 200)
  t.same(revoke.json(), {})
  const refused = await refreshWith(app, rotated.refresh_token)
  t.equal(refused.statusCode, 401)
  t.equal(refused.json().code, 'token_revoked')
  t.same(await introspectToken(app, rotated.access_token), { active: false })
  t.same(await introspectToken(app, pair.access_token), { active: false })
  const keys = await keysWithTtl(app.config.redisKeyPrefix)
  const session = [...keys].find(([key]) => key.includes(':s:'))
  t.ok(session !== undefined, 'a session record')
  t.ok((session?.[1] ?? 0) > 0, 'with a TTL')
  t.ok((session?.[1] ?? 0) <= 7 * 86400_000, 'no longer than a refresh token can live')
})

test('revoking an access token ends that token only', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '10m' })
  const pair = await issue(app)
  const revoke = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.access_token } })
  t.equal(revoke.statusCode, 200)
  t.same(await introspectToken(app, pair.access_token), { active: false })
  t.match(await introspectToken(app, pair.refresh_token), { active: true })
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
  const accessJti = String(decodeJwt(pair.access_token).payload['jti'])
  const [ttl] = [...(await keysWithTtl(app.config.redisKeyPrefix))].filter(([key]) => key.endsWith(`:j:${accessJti}`)).map(([, pttl]) => pttl)
  t.ok((ttl ?? 0) > 590_000 && (ttl ?? 0) <= 600_000, `record TTL ${String(ttl)} is the access token's remaining life`)
})

test('an access token introspected over and over (its verification cached) is still ended by revocation and by its expiry', async (t) => {
  // Three seconds: with one, a busy machine crossed the expiry while still introspecting (CI saw it).
  const app = await build(t, { ACCESS_TOKEN_TTL: '3' })
  const [revoked, expiring] = [await issue(app, { sub: 'a' }), await issue(app, { sub: 'b' })]
  for (let i = 0; i < 3; i++) {
    t.match(await introspectToken(app, revoked.access_token), { active: true })
    t.match(await introspectToken(app, expiring.access_token), { active: true })
  }
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.access_token } })
  t.same(await introspectToken(app, revoked.access_token), { active: false }, 'revoked: inactive at once')
  const exp = Number(decodeJwt(expiring.access_token).payload['exp'])
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, exp * 1000 - Date.now()) + 20))
  t.same(await introspectToken(app, expiring.access_token), { active: false }, 'expired: inactive, cached or not')
})

test('revoking an invalid or expired token answers 200 {} (RFC 7009)', async (t) => {
  const app = await build(t)
  for (const token of ['garbage', 'a.b.c', 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.']) {
    const response = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token } })
    t.equal(response.statusCode, 200, token)
    t.same(response.json(), {})
  }
})

test('logging out everywhere revokes every session of the subject issued up to the call', async (t) => {
  const app = await build(t)
  const one = await issue(app, { sub: 'carol' })
  const two = await issue(app, { sub: 'carol' })
  const other = await issue(app, { sub: 'dave' })
  const response = await app.inject({ method: 'POST', url: '/v1/subjects/carol/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(response.statusCode, 200)
  t.same(response.json(), {})
  for (const pair of [one, two]) {
    t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_revoked')
    t.same(await introspectToken(app, pair.access_token), { active: false })
  }
  t.equal((await refreshWith(app, other.refresh_token)).statusCode, 200, 'another subject is untouched')
  const keys = await keysWithTtl(app.config.redisKeyPrefix)
  const subject = [...keys].find(([key]) => key.endsWith('{carol}:u'))
  t.ok((subject?.[1] ?? 0) > 0, 'one subject record, with a TTL')
})

test('a session issued a second after logging out everywhere keeps working', async (t) => {
  const app = await build(t)
  await app.inject({ method: 'POST', url: '/v1/subjects/erin/revoke', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, payload: '{}' })
  await new Promise((resolve) => setTimeout(resolve, 1100 - (Date.now() % 1000)))
  const pair = await issue(app, { sub: 'erin' })
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
})

test('subject revoke takes a percent-encoded subject and refuses a body with fields', async (t) => {
  const app = await build(t)
  const pair = await issue(app, { sub: 'user/with spaces@x' })
  const encoded = encodeURIComponent('user/with spaces@x')
  const withBody = await app.inject({ method: 'POST', url: `/v1/subjects/${encoded}/revoke`, headers: { authorization: `Bearer ${API_KEY}` }, payload: { all: true } })
  t.equal(withBody.statusCode, 400)
  t.equal(withBody.json().code, 'invalid_request')
  const response = await app.inject({ method: 'POST', url: `/v1/subjects/${encoded}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal(response.statusCode, 200)
  t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_revoked')
  const unauthenticated = await app.inject({ method: 'POST', url: `/v1/subjects/${encoded}/revoke` })
  t.equal(unauthenticated.json().code, 'invalid_client')
})

test('rotations answered in the same turn are confirmed together: every record confirmed, several by one command', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const pairs = await Promise.all(Array.from({ length: 20 }, async (_, i) => await issue(app, { sub: `together-${i}` })))
  const monitor = new Redis(redis.url)
  t.teardown(() => { monitor.disconnect() })
  const confirms: number[] = []
  const sha = createHash('sha1').update(CONFIRM).digest('hex')
  const feed = await monitor.monitor()
  t.teardown(() => { feed.disconnect() })
  // The first use on a connection sends the script itself (EVAL; MONITOR escapes its newlines), later ones its digest.
  feed.on('monitor', (_time: string, args: string[]) => {
    const command = args[0]?.toLowerCase()
    if ((command === 'evalsha' && args[1] === sha) || (command === 'eval' && args[1]?.replaceAll('\\n', '\n') === CONFIRM)) confirms.push(Number(args[2]))
  })
  const answers = await Promise.all(pairs.map(async (pair) => await refreshWith(app, pair.refresh_token)))
  t.same(answers.map((answer) => answer.statusCode), pairs.map(() => 200))
  const client = new Redis(redis.url)
  t.teardown(() => { client.disconnect() })
  const records = async (): Promise<string[]> => {
    const keys = await client.keys(`${app.config.redisKeyPrefix}*:j:*`)
    return await Promise.all(keys.map(async (key) => await client.get(key) ?? ''))
  }
  for (let tries = 0; tries < 100 && !(await records()).every((value) => /^\d+$/.test(value)); tries++) await new Promise((resolve) => setTimeout(resolve, 20))
  const values = await records()
  t.equal(values.length, 20, 'one record per rotation')
  t.ok(values.every((value) => /^\d+$/.test(value)), 'every rotation confirmed')
  t.equal(confirms.reduce((sum, keys) => sum + keys, 0), 20, 'each confirmed once')
  t.ok(confirms.some((keys) => keys > 1), `one command confirmed several (keys per command: ${confirms.join(', ')})`)
})

test('confirmations go in one command, or on a Cluster in one per hash slot (keys of one subject together)', async (t) => {
  const keys = ['p{alice}:j:1', 'p{bob}:j:2', 'p{alice}:j:3', 'p{carol}:j:4']
  t.same(groupBySlot(keys, (key) => key, false), [keys], 'one Redis: all together, in order')
  t.same(groupBySlot(keys, (key) => key, true), [['p{alice}:j:1', 'p{alice}:j:3'], ['p{bob}:j:2'], ['p{carol}:j:4']], 'a Cluster: by slot')
})
