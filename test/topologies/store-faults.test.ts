import { test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildApp } from '../../src/app.js'
import { API_KEY, LogCapture, build, listen, testConfig, type Pair } from '../support/app.js'
import { OwnRedis, startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'

/** The contract's bound: a store that cannot be reached is answered within 2 seconds. */
const BOUND_MS = 2000

interface Answer {
  status: number
  headers: Headers
  body: Record<string, unknown>
  ms: number
}

/** One POST over the real socket, timed from send to full body. */
async function post (base: string, path: string, body: unknown, apiKey?: string): Promise<Answer> {
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (apiKey !== undefined) headers['authorization'] = `Bearer ${apiKey}`
  const started = performance.now()
  const response = await fetch(base + path, { method: 'POST', headers, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) })
  const text = await response.text()
  const ms = performance.now() - started
  return { status: response.status, headers: response.headers, body: text === '' ? {} : JSON.parse(text) as Record<string, unknown>, ms }
}

async function get (base: string, path: string): Promise<Answer> {
  const started = performance.now()
  const response = await fetch(base + path, { signal: AbortSignal.timeout(10_000) })
  const text = await response.text()
  return { status: response.status, headers: response.headers, body: text === '' ? {} : JSON.parse(text) as Record<string, unknown>, ms: performance.now() - started }
}

async function issuePair (base: string, sub = 'alice'): Promise<Pair> {
  const answer = await post(base, '/v1/tokens', { sub }, API_KEY)
  if (answer.status !== 200) throw new Error(`issue failed: ${answer.status} ${JSON.stringify(answer.body)}`)
  return answer.body as unknown as Pair
}

async function refreshOver (base: string, refreshToken: string): Promise<Answer> {
  return post(base, '/v1/tokens/refresh', { refresh_token: refreshToken })
}

/** Polls /health/ready until it answers 200; resolves with the ms it took, or null past the deadline. */
async function waitReady (base: string, withinMs: number): Promise<number | null> {
  const started = performance.now()
  while (performance.now() - started < withinMs) {
    const answer = await get(base, '/health/ready').catch(() => null)
    if (answer?.status === 200) return performance.now() - started
    await sleep(50)
  }
  return null
}

/** Waits until Rotor itself sees the store as down (the socket close reached ioredis). */
async function waitNotReady (base: string, withinMs: number): Promise<void> {
  const started = performance.now()
  while (performance.now() - started < withinMs) {
    if ((await get(base, '/health/ready')).status === 503) return
    await sleep(20)
  }
}

/** A 503 the contract's way: code, Retry-After, in time. */
function isStore503 (answer: Answer): boolean {
  return answer.status === 503 && answer.body['code'] === 'denylist_unavailable' && answer.headers.get('retry-after') !== null && answer.ms < BOUND_MS
}

test('with Redis killed, refresh, revoke and introspect answer 503 denylist_unavailable with Retry-After within 2 s', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)
  const pair = await issuePair(base)
  await redis.stop()

  const calls: Array<[string, () => Promise<Answer>]> = [
    ['refresh', async () => refreshOver(base, pair.refresh_token)],
    ['revoke', async () => post(base, '/v1/tokens/revoke', { token: pair.refresh_token })],
    ['introspect', async () => post(base, '/v1/tokens/introspect', { token: pair.access_token }, API_KEY)]
  ]
  for (const [name, call] of calls) {
    const answer = await call()
    t.comment(`${name} with Redis killed: ${answer.status} in ${answer.ms.toFixed(0)} ms`)
    t.equal(answer.status, 503, `${name} answers 503`)
    t.equal(answer.body['code'], 'denylist_unavailable', `${name} says denylist_unavailable`)
    t.equal(answer.body['statusCode'], 503, `${name} error body has its statusCode`)
    t.ok(answer.headers.get('retry-after'), `${name} has a Retry-After`)
    t.ok(Number(answer.headers.get('retry-after')) > 0, `${name} Retry-After is a positive number of seconds`)
    t.ok(answer.ms < BOUND_MS, `${name} answered within 2 s (${answer.ms.toFixed(0)} ms)`)
  }
})

test('with Redis killed, issuing a pair still works, /health/ready is 503 and /health/live is 200', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const base = await listen(app)
  t.equal((await get(base, '/health/ready')).status, 200, 'ready while Redis is up')
  await redis.stop()

  const issued = await post(base, '/v1/tokens', { sub: 'bob' }, API_KEY)
  t.comment(`issue with Redis killed: ${issued.status} in ${issued.ms.toFixed(0)} ms`)
  t.equal(issued.status, 200, 'issuing needs no store')
  t.type(issued.body['access_token'], 'string')
  t.type(issued.body['refresh_token'], 'string')
  t.ok(issued.ms < BOUND_MS, 'and is not slowed down by the dead store')

  const ready = await get(base, '/health/ready')
  t.equal(ready.status, 503, 'not ready')
  t.ok(ready.ms < BOUND_MS, 'readiness answers within 2 s')
  t.equal((await get(base, '/health/live')).status, 200, 'still live')
})

test('with Redis hung (SIGSTOP), refresh, revoke and introspect answer 503 within 2 s instead of hanging', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const base = await listen(app)
  const pairs = [await issuePair(base), await issuePair(base), await issuePair(base)]
  redis.pause()
  t.teardown(() => { redis.resume() })

  const refreshed = await refreshOver(base, pairs[0]!.refresh_token)
  t.comment(`refresh with Redis hung: ${refreshed.status} in ${refreshed.ms.toFixed(0)} ms`)
  t.equal(refreshed.status, 503, 'refresh answers 503')
  t.equal(refreshed.body['code'], 'denylist_unavailable')
  t.ok(refreshed.headers.get('retry-after'), 'with a Retry-After')
  t.ok(refreshed.ms < BOUND_MS, `refresh answered within 2 s (${refreshed.ms.toFixed(0)} ms)`)

  const revoked = await post(base, '/v1/tokens/revoke', { token: pairs[1]!.refresh_token })
  t.comment(`revoke with Redis hung: ${revoked.status} in ${revoked.ms.toFixed(0)} ms`)
  t.equal(revoked.status, 503, 'revoke answers 503')
  t.ok(revoked.ms < BOUND_MS, `revoke answered within 2 s (${revoked.ms.toFixed(0)} ms)`)

  const introspected = await post(base, '/v1/tokens/introspect', { token: pairs[2]!.access_token }, API_KEY)
  t.comment(`introspect with Redis hung: ${introspected.status} in ${introspected.ms.toFixed(0)} ms`)
  t.equal(introspected.status, 503, 'introspect answers 503')
  t.ok(introspected.ms < BOUND_MS, `introspect answered within 2 s (${introspected.ms.toFixed(0)} ms)`)

  // Issue touches Redis only through its rate limit and the session index, both over the side
  // connection: its time is what they cost under a hang (250 ms each at most).
  const issued = await post(base, '/v1/tokens', { sub: 'dave' }, API_KEY)
  t.comment(`issue with Redis hung: ${issued.status} in ${issued.ms.toFixed(0)} ms (the rate limit's and the session index's waits)`)
  t.equal(issued.status, 200, 'issuing still works while Redis hangs')
  t.ok(issued.ms < BOUND_MS, 'and answers within 2 s')

  const ready = await get(base, '/health/ready')
  t.equal(ready.status, 503, '/health/ready is 503 while Redis hangs')
  t.ok(ready.ms < BOUND_MS, 'and says so within 2 s')

  redis.resume()
  t.ok(await waitReady(base, 5000) !== null, 'ready again once Redis resumes')
})

test('after Redis is killed and restarted on the same port, refresh works again without restarting Rotor, and rotations stay recorded', async (t) => {
  // The store persists every write (AOF, fsync always) so a SIGKILL loses nothing, as a production Redis should.
  const dir = await mkdtemp(join(tmpdir(), 'rotor-aof-'))
  t.teardown(async () => { await rm(dir, { recursive: true, force: true }) })
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir])
  const app = await build(t, { REDIS_URL: redis.url, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)

  const before = await issuePair(base)
  t.equal((await refreshOver(base, before.refresh_token)).status, 200, 'rotated before the outage')
  const during = await issuePair(base)

  await redis.stop()
  const down = await refreshOver(base, during.refresh_token)
  t.equal(down.status, 503, 'refresh is 503 during the outage')

  const restartedAt = performance.now()
  await redis.start()
  const readyAfter = await waitReady(base, 5000)
  t.comment(`ready ${readyAfter?.toFixed(0) ?? 'never'} ms after redis-server accepted connections (${(performance.now() - restartedAt).toFixed(0)} ms after restart began)`)
  t.ok(readyAfter !== null, '/health/ready is 200 again within 5 s, no restart of Rotor')

  const replay = await refreshOver(base, before.refresh_token)
  t.equal(replay.status, 401, 'a token rotated before the outage is still refused')
  t.equal(replay.body['code'], 'token_reused', 'as reuse: its rotation is still recorded')

  const after = await refreshOver(base, during.refresh_token)
  t.equal(after.status, 200, 'the token refused with 503 during the outage refreshes once Redis is back')
  const replayAfter = await refreshOver(base, during.refresh_token)
  t.equal(replayAfter.status, 401, 'and a rotation made after recovery is recorded')
  t.equal(replayAfter.body['code'], 'token_reused')
  const fresh = await issuePair(base, 'carol')
  const pair = (await refreshOver(base, fresh.refresh_token)).body as unknown as Pair
  t.type(pair.refresh_token, 'string', 'a brand-new session rotates after recovery')
  t.equal((await refreshOver(base, pair.refresh_token)).status, 200, 'and keeps rotating')
})

test('after Redis is killed and restarted empty, a rotation made after recovery is recorded (replay is token_reused)', async (t) => {
  const redis = await startRedis(t)
  // STORE_LOSS=accept: the token minted before the loss refreshes (the default refuses it: test/issues/12-store-loss.test.ts).
  const app = await build(t, { REDIS_URL: redis.url, REFRESH_REUSE_GRACE: '0', STORE_LOSS: 'accept' })
  const base = await listen(app)
  const pair = await issuePair(base)
  await redis.stop()
  t.equal((await refreshOver(base, pair.refresh_token)).status, 503, 'refresh is 503 while Redis is down')
  await redis.start()
  const readyAfter = await waitReady(base, 5000)
  t.comment(`ready ${readyAfter?.toFixed(0) ?? 'never'} ms after redis-server came back (empty)`)
  t.ok(readyAfter !== null, 'ready again within 5 s')
  // The scripts are gone from the new server's cache: EVALSHA must fall back to EVAL.
  const first = await refreshOver(base, pair.refresh_token)
  t.equal(first.status, 200, 'refresh works against the restarted Redis')
  const replay = await refreshOver(base, pair.refresh_token)
  t.equal(replay.status, 401, 'replaying it is refused')
  t.equal(replay.body['code'], 'token_reused', 'because the rotation was recorded in the new Redis')
  const revoked = await post(base, '/v1/tokens/revoke', { token: (first.body as unknown as Pair).access_token })
  t.equal(revoked.status, 200, 'revoke works again too')
})

test('Rotor starts while Redis is not up yet: not ready, refresh 503, then ready without a restart once Redis comes', async (t) => {
  const port = await freePort()
  const url = `redis://127.0.0.1:${port}`
  const started = performance.now()
  const app = await buildApp(testConfig({ REDIS_URL: url, REFRESH_REUSE_GRACE: '0' }))
  const buildMs = performance.now() - started
  t.teardown(async () => { await app.close() })
  t.comment(`buildApp with no Redis resolved in ${buildMs.toFixed(0)} ms`)
  t.ok(buildMs < 5000, 'buildApp resolves within a few seconds with nothing listening')
  const base = await listen(app)

  const ready = await get(base, '/health/ready')
  t.equal(ready.status, 503, '/health/ready is 503')
  t.equal((await get(base, '/health/live')).status, 200, '/health/live is 200')
  const pair = await issuePair(base)
  const refreshed = await refreshOver(base, pair.refresh_token)
  t.equal(refreshed.status, 503, 'refresh is 503')
  t.equal(refreshed.body['code'], 'denylist_unavailable')
  t.ok(refreshed.ms < BOUND_MS, 'within 2 s')

  const redis = new OwnRedis(port)
  t.teardown(async () => { await redis.stop() })
  await redis.start()
  const readyAfter = await waitReady(base, 5000)
  t.comment(`ready ${readyAfter?.toFixed(0) ?? 'never'} ms after the late redis-server came up`)
  t.ok(readyAfter !== null, 'ready within 5 s of Redis coming up, with no restart')
  const now = await refreshOver(base, pair.refresh_token)
  t.equal(now.status, 200, 'refresh works')
  const replay = await refreshOver(base, pair.refresh_token)
  t.equal(replay.body['code'], 'token_reused', 'and its rotation is recorded')
})

test('no rotation is lost when Redis hangs mid-traffic: every 200 is recorded, every 503 can be retried', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)
  t.teardown(() => { redis.resume() })

  const pairs: Pair[] = []
  for (let i = 0; i < 200; i += 20) {
    pairs.push(...await Promise.all(Array.from({ length: 20 }, async (_, j) => issuePair(base, `user-${i + j}`))))
  }

  // Ten waves of 20 concurrent refreshes, 250 ms apart; Redis freezes just after the third wave is sent
  // (while it is in flight) and thaws 2.5 s later, longer than a request's whole budget, so waves land
  // before, during and after the hang.
  const results: Array<Promise<Answer>> = []
  const traffic = (async () => {
    for (let wave = 0; wave < 10; wave++) {
      for (let j = 0; j < 20; j++) results.push(refreshOver(base, pairs[wave * 20 + j]!.refresh_token))
      await sleep(250)
    }
  })()
  await sleep(510)
  redis.pause()
  await sleep(2500)
  redis.resume()
  await traffic
  const answers = await Promise.all(results)

  const statuses = new Map<number, number>()
  for (const answer of answers) statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1)
  t.comment(`statuses during the hang: ${JSON.stringify(Object.fromEntries(statuses))}; slowest ${Math.max(...answers.map((a) => a.ms)).toFixed(0)} ms`)
  t.same([...statuses.keys()].filter((status) => status !== 200 && status !== 503), [], 'every answer is 200 or 503 (never 500, never 401)')
  t.ok((statuses.get(503) ?? 0) > 0, 'the hang was felt (some 503)')
  t.ok((statuses.get(200) ?? 0) > 0, 'and traffic outside it went through (some 200)')
  const unavailable = answers.filter((a) => a.status === 503)
  t.equal(unavailable.filter((a) => a.body['code'] !== 'denylist_unavailable' || a.headers.get('retry-after') === null).length, 0, 'every 503 is denylist_unavailable with Retry-After')
  t.equal(unavailable.filter((a) => !isStore503(a)).length, 0, `every 503 came within 2 s (slowest ${Math.max(0, ...unavailable.map((a) => a.ms)).toFixed(0)} ms)`)

  t.ok(await waitReady(base, 5000) !== null, 'ready again after the hang')
  const replays = await Promise.all(answers.map(async (answer, i) => ({ answer, again: await refreshOver(base, pairs[i]!.refresh_token) })))
  const unrecorded = replays.filter(({ answer, again }) => answer.status === 200 && again.body['code'] !== 'token_reused')
  t.equal(unrecorded.length, 0, 'every token that got 200 is recorded as rotated: its replay is token_reused')
  const lost = replays.filter(({ answer, again }) => answer.status === 503 && again.status !== 200)
  t.equal(lost.length, 0, `every token that got 503 refreshes once Redis is back (${lost.length} of ${statuses.get(503) ?? 0} did not: ${JSON.stringify([...new Set(lost.map(({ again }) => `${again.status} ${String(again.body['code'])}`))])})`)
})

test('within the grace window, a refresh answered 503 during a hang is retried successfully after Redis thaws', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, REFRESH_REUSE_GRACE: '10s' })
  const base = await listen(app)
  t.teardown(() => { redis.resume() })
  const pair = await issuePair(base)
  redis.pause()
  const during = await refreshOver(base, pair.refresh_token)
  t.equal(during.status, 503, '503 while Redis hangs')
  redis.resume()
  t.ok(await waitReady(base, 5000) !== null, 'ready again')
  const retried = await refreshOver(base, pair.refresh_token)
  t.equal(retried.status, 200, 'the retry (as Retry-After asks) is answered 200, not token_reused')
})

test('an outage is logged once at error level, not once per request, and the recovery at info', async (t) => {
  const logs = new LogCapture()
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url }, logs)
  const base = await listen(app)
  const pair = await issuePair(base)
  const isUnreachable = (line: Record<string, unknown>): boolean => line['level'] === 50 && String(line['msg']).includes('store unreachable')
  const isReachable = (line: Record<string, unknown>): boolean => line['level'] === 30 && String(line['msg']).includes('store reachable')
  t.ok(logs.lines.some(isReachable), 'the first connection is logged as store reachable')

  const beforeKill = logs.lines.length
  await redis.stop()
  await waitNotReady(base, 2000)
  for (let i = 0; i < 20; i++) t.equal((await refreshOver(base, pair.refresh_token)).status, 503, `request ${i + 1} during the outage is 503`)
  await sleep(600) // a few reconnection attempts fail meanwhile
  const duringOutage = logs.lines.slice(beforeKill).filter(isUnreachable)
  t.comment(`'store unreachable' error lines during the outage: ${duringOutage.length}`)
  t.ok(duringOutage.length >= 1, 'the outage is logged at error level')
  t.ok(duringOutage.length <= 2, 'once per outage, not once per request or reconnection attempt')
  t.notOk(logs.text.includes(pair.refresh_token), 'no token in the log')

  const beforeStart = logs.lines.length
  await redis.start()
  t.ok(await waitReady(base, 5000) !== null, 'ready again')
  const recovered = logs.lines.slice(beforeStart)
  t.equal(recovered.filter(isReachable).length, 1, 'the recovery is logged once at info level as store reachable')
  t.equal(recovered.filter(isUnreachable).length, 0, 'and no further unreachable line')
})
