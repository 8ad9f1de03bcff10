import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, decodeJwt, issue, listen, type Pair } from '../support/app.js'
import { redisCommand, startRedis } from '../support/redis.js'
import { TcpProxy } from '../support/net.js'
import { until } from '../support/wait.js'
import type { Test } from '../support/tap.js'

// Issue 12: when Redis ran a rotation but its reply came late (500–750 ms each way) or was lost
// (the connection reset after Redis answered), Rotor answered 503, as it should, yet the rotation
// stood; the client's retry after the grace window was "reuse" and logged the user out. Now a
// rotation is recorded unconfirmed and confirmed only once Rotor has its answer: an unconfirmed
// one is no reuse however late it is retried, until its successor is used.

const GRACE_S = 1
const ACCESS_TTL_S = 2

interface Answer { status: number, body: Record<string, unknown> }

async function refreshOver (base: string, refreshToken: string): Promise<Answer> {
  const response = await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: refreshToken }), signal: AbortSignal.timeout(10_000)
  })
  return { status: response.status, body: await response.json() as Record<string, unknown> }
}

interface Setup { proxy: TcpProxy, redisUrl: string, prefix: string, viaProxy: string, direct: string, pair: Pair, jti: string }

/** Rotor A reaches its own Redis through a proxy, Rotor B directly; one prefix, one session issued. */
async function setUp (t: Test, env: Record<string, string>): Promise<Setup> {
  const redis = await startRedis(t)
  const proxy = new TcpProxy(redis.port)
  t.teardown(() => { proxy.close() })
  const prefix = `rotor-test:${randomBytes(6).toString('hex')}:`
  const shared = { REDIS_KEY_PREFIX: prefix, JWT_ALGORITHM: 'HS256', JWT_SECRET: randomBytes(32).toString('hex'), REFRESH_REUSE_GRACE: `${GRACE_S}s`, ACCESS_TOKEN_TTL: `${ACCESS_TTL_S}s`, ...env }
  const a: FastifyInstance = await build(t, { ...shared, REDIS_URL: `redis://127.0.0.1:${await proxy.listen()}` })
  const b: FastifyInstance = await build(t, { ...shared, REDIS_URL: redis.url })
  const pair = await issue(b, { sub: 'slow' })
  return { proxy, redisUrl: redis.url, prefix, viaProxy: await listen(a), direct: await listen(b), pair, jti: String(decodeJwt(pair.refresh_token).payload['jti']) }
}

/** The rotation record of the presented token, as Redis holds it. */
async function recordOf (setup: Setup): Promise<string | null> {
  return await redisCommand(setup.redisUrl, 'GET', `${setup.prefix}{slow}:j:${setup.jti}`) as string | null
}

test('a reply too late for Rotor: 503, and the retry long after the grace window gets the rotation\'s successor, on another instance', async (t) => {
  const setup = await setUp(t, {})
  setup.proxy.delay(600)
  const during = await refreshOver(setup.viaProxy, setup.pair.refresh_token)
  t.equal(during.status, 503, '503 while every reply takes 1.2 s')
  t.equal(during.body['code'], 'denylist_unavailable')
  setup.proxy.delay(0)
  await until('Redis to have run the rotation', async () => await recordOf(setup) !== null)
  t.match(await recordOf(setup), /^-\d+$/, 'the premise: Redis ran the rotation, and it stands unconfirmed')

  await sleep((ACCESS_TTL_S + 0.5) * 1000)
  const retried = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(retried.status, 200, `the retry ${ACCESS_TTL_S + 0.5} s later (past the grace window and an access token's life), on the other instance: 200, not token_reused`)
  const nowSec = Math.floor(Date.now() / 1000)
  const refreshIat = Number(decodeJwt(String(retried.body['refresh_token'])).payload['iat'])
  const access = decodeJwt(String(retried.body['access_token'])).payload
  t.ok(refreshIat <= nowSec - ACCESS_TTL_S, 'the refresh token is the rotation\'s own successor (issued at the rotation, not now)')
  t.ok(Number(access['exp']) >= nowSec + ACCESS_TTL_S - 1, 'with an access token that is fresh, not one that expired meanwhile')
  await until('the retry\'s answer to be confirmed', async () => /^\d+$/.test(await recordOf(setup) ?? ''))

  const next = await refreshOver(setup.viaProxy, String(retried.body['refresh_token']))
  t.equal(next.status, 200, 'the successor refreshes (through the healed proxy)')
  const replay = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(replay.body['code'], 'token_reused', 'once the successor is used, the old token is a reuse again')
})

test('a reply lost on a reset connection: 503, and the retry after the grace window refreshes; once confirmed, a replay is a reuse', async (t) => {
  const setup = await setUp(t, {})
  setup.proxy.resetAfterReplyTo(setup.jti)
  const during = await refreshOver(setup.viaProxy, setup.pair.refresh_token)
  t.equal(during.status, 503, '503 when the connection resets after Redis answered')
  t.match(await recordOf(setup), /^-\d+$/, 'the premise: the rotation was recorded, unconfirmed')

  await sleep(GRACE_S * 1000 + 500)
  const retried = await refreshOver(setup.viaProxy, setup.pair.refresh_token)
  t.equal(retried.status, 200, 'the retry past the grace window, through the reconnected instance: 200')
  await until('the retry\'s answer to be confirmed', async () => /^\d+$/.test(await recordOf(setup) ?? ''))

  await sleep(GRACE_S * 1000 + 200)
  const replay = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(replay.body['code'], 'token_reused', 'a replay after the confirmed answer, past the window, is a reuse even before the successor is used')
  t.equal((await refreshOver(setup.direct, String(retried.body['refresh_token']))).body['code'], 'token_revoked', 'and it revoked the session')
})

test('with REFRESH_REUSE_GRACE=0, a rotation answered 503 is no reuse either once it can no longer be in flight', async (t) => {
  const setup = await setUp(t, { REFRESH_REUSE_GRACE: '0' })
  setup.proxy.delay(600)
  t.equal((await refreshOver(setup.viaProxy, setup.pair.refresh_token)).status, 503, '503 while every reply takes 1.2 s')
  setup.proxy.delay(0)
  await until('Redis to have run the rotation', async () => await recordOf(setup) !== null)
  await sleep(1200)
  const retried = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(retried.status, 200, 'the retry after Retry-After: 200')
  const again = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(again.body['code'], 'token_reused', 'the next presentation, answered and confirmed, is a reuse: no grace window')
})

test('a rotation that reaches Redis after Rotor gave up on it writes nothing: it cannot revoke the session its client moved on with', async (t) => {
  // What a Cluster client does when a connection closes under a command (it sends it again,
  // perhaps after Rotor answered 503), made deterministic: the script is held in the proxy for
  // 2.5 s while the client's retry, through the other instance, rotates twice.
  const setup = await setUp(t, { REFRESH_REUSE_GRACE: '0' })
  setup.proxy.delay(2500)
  const sentAt = Date.now()
  t.equal((await refreshOver(setup.viaProxy, setup.pair.refresh_token)).status, 503, 'Rotor gave up on it: 503')
  const retried = await refreshOver(setup.direct, setup.pair.refresh_token)
  t.equal(retried.status, 200, 'the retry, through the other instance')
  const next = await refreshOver(setup.direct, String(retried.body['refresh_token']))
  t.equal(next.status, 200, 'and the client moves on: the successor is rotated too')
  t.ok(Date.now() - sentAt < 2500, 'all before the held script reaches Redis')
  setup.proxy.delay(0)
  await sleep(2500 - (Date.now() - sentAt) + 500)
  const latest = await refreshOver(setup.direct, String(next.body['refresh_token']))
  t.equal(latest.status, 200, 'the session is alive: the late script did not take the client\'s first token for a reuse')
})
