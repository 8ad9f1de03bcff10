import { test } from 'tap'
import { API_KEY, build, decodeJwt, listen, LogCapture, type Pair } from '../support/app.js'
import { TcpProxy } from '../support/net.js'
import { startRedis } from '../support/redis.js'

// The session index under real store faults. Issuing needs no store (the contract): while Redis
// cannot be reached, a pair is still issued at once and its session listed from its first
// refresh; the session routes answer 503, never 500, and nobody is logged out.

interface Answer { status: number, body: Record<string, unknown>, ms: number }

async function call (base: string, method: string, path: string, body?: unknown, authorization?: string): Promise<Answer> {
  const started = performance.now()
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...(authorization === undefined ? {} : { authorization }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  return { status: response.status, body: await response.json() as Record<string, unknown>, ms: performance.now() - started }
}

/** Refreshes until served: 503s while the store comes back are fine (the test asserts there are no others). */
async function refreshUntilServed (t: { equal: (a: unknown, b: unknown, m: string) => unknown }, base: string, refreshToken: string, why: string): Promise<Answer | null> {
  let refreshed: Answer | null = null
  for (let i = 0; i < 100 && refreshed?.status !== 200; i++) {
    refreshed = await call(base, 'POST', '/v1/tokens/refresh', { refresh_token: refreshToken })
    if (refreshed.status !== 200) {
      t.equal(refreshed.status, 503, `a 503 while ${why}, never a logout`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return refreshed
}

const listed = async (base: string, sub: string): Promise<Answer> => call(base, 'GET', `/v1/subjects/${sub}/sessions`, undefined, `Bearer ${API_KEY}`)
const sidsOf = (answer: Answer): unknown[] => (answer.body['sessions'] as Array<{ sid: string }>).map((session) => session.sid)

test('Redis unreachable (a silent link): issuing answers at once, the session routes 503; once it is back, the session is listed from its first refresh', async (t) => {
  const redis = await startRedis(t)
  const proxy = new TcpProxy(redis.port)
  t.teardown(() => { proxy.close() })
  const app = await build(t, { REDIS_URL: `redis://127.0.0.1:${await proxy.listen()}` })
  const base = await listen(app)
  const before = (await call(base, 'POST', '/v1/tokens', { sub: 'offline', device: 'before' }, `Bearer ${API_KEY}`)).body as unknown as Pair

  proxy.partition()
  proxy.silenceExisting()
  const issued = await call(base, 'POST', '/v1/tokens', { sub: 'offline', device: 'during' }, `Bearer ${API_KEY}`)
  t.comment(`issue with Redis silent: ${issued.status} in ${issued.ms.toFixed(0)} ms`)
  t.equal(issued.status, 200, 'issuing needs no store')
  t.ok(issued.ms < 1000, `and does not wait for it (${issued.ms.toFixed(0)} ms)`)
  const during = issued.body as unknown as Pair

  const list = await listed(base, 'offline')
  t.equal(list.status, 503, 'listing needs the store: 503')
  t.equal(list.body['code'], 'denylist_unavailable')
  const mine = await call(base, 'GET', '/v1/sessions', undefined, `Bearer ${during.access_token}`)
  t.equal(mine.status, 503, 'a user\'s list too (their token\'s revocation cannot be checked)')
  t.ok(list.ms < 2000 && mine.ms < 2000, 'both within 2 s')

  proxy.heal()
  // The redis plugin replaces the connection that went silent; until then, 503s.
  const refreshed = await refreshUntilServed(t, base, during.refresh_token, 'the connection is replaced')
  t.equal(refreshed?.status, 200, 'the session issued during the outage refreshes')
  const after = await listed(base, 'offline')
  t.equal(after.status, 200)
  const sidOf = (pair: Pair): unknown => decodeJwt(pair.refresh_token).payload['sid']
  t.same(sidsOf(after), [sidOf(during), sidOf(before)], 'listed from its first refresh, newest first')
  const entry = (after.body['sessions'] as Array<Record<string, unknown>>)[0]
  t.equal(entry?.['device'], null, 'its device label was given while the index was away: not kept (said in the README)')
  t.equal(entry?.['client_id'], decodeJwt(during.refresh_token).payload['client_id'], 'the rest comes from its token')
})

test('Redis hung (SIGSTOP): issuing answers within the index\'s wait, nobody is logged out, and the session is listed once Redis wakes', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const base = await listen(app)
  redis.pause()
  t.teardown(() => { redis.resume() })
  const issued = await call(base, 'POST', '/v1/tokens', { sub: 'hung' }, `Bearer ${API_KEY}`)
  t.comment(`issue with Redis hung: ${issued.status} in ${issued.ms.toFixed(0)} ms`)
  t.equal(issued.status, 200)
  t.ok(issued.ms < 1000, `issuing does not wait for a hung Redis past the index's 250 ms (${issued.ms.toFixed(0)} ms)`)
  const pair = issued.body as unknown as Pair
  redis.resume()
  const refreshed = await refreshUntilServed(t, base, pair.refresh_token, 'Redis wakes')
  t.equal(refreshed?.status, 200, 'the session refreshes')
  t.same(sidsOf(await listed(base, 'hung')), [decodeJwt(pair.refresh_token).payload['sid']], 'and is listed')
})

test('a slow Redis: issuing answers without waiting for the index; the late write does nothing, and the session is listed (and the cap applied, and logged) at its first refresh', async (t) => {
  const redis = await startRedis(t)
  const proxy = new TcpProxy(redis.port)
  t.teardown(() => { proxy.close() })
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: `redis://127.0.0.1:${await proxy.listen()}`, MAX_SESSIONS_PER_SUBJECT: '1' }, logs)
  const base = await listen(app)
  const first = (await call(base, 'POST', '/v1/tokens', { sub: 'slow' }, `Bearer ${API_KEY}`)).body as unknown as Pair
  proxy.delay(300)
  const issued = await call(base, 'POST', '/v1/tokens', { sub: 'slow', device: 'late' }, `Bearer ${API_KEY}`)
  t.equal(issued.status, 200)
  t.ok(issued.ms < 1000, `issued without the index's answer (${issued.ms.toFixed(0)} ms)`)
  const second = issued.body as unknown as Pair
  await new Promise((resolve) => setTimeout(resolve, 700))
  proxy.delay(0)
  const sidOf = (pair: Pair): unknown => decodeJwt(pair.refresh_token).payload['sid']
  t.same(sidsOf(await listed(base, 'slow')), [sidOf(first)], 'the write that came after its deadline listed nothing, and ended nothing')
  t.notOk(logs.lines.some((line) => line['event'] === 'session.evicted'), 'so nothing is logged as ended')

  t.equal((await call(base, 'POST', '/v1/tokens/refresh', { refresh_token: second.refresh_token })).status, 200, 'the second session refreshes')
  t.same(sidsOf(await listed(base, 'slow')), [sidOf(second)], 'and is listed; the cap of 1 ended the first')
  t.same(logs.lines.filter((line) => line['event'] === 'session.evicted').map((line) => line['sid']), [sidOf(first)], 'which is logged, naming it')
  t.equal((await call(base, 'POST', '/v1/tokens/refresh', { refresh_token: first.refresh_token })).body['code'], 'token_revoked', 'and ended')
})
