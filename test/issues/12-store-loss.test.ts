import { test, type Test } from 'tap'
import { API_KEY, build, issue, listen, LogCapture, redisCommand, refreshWith, startRedis, type Pair } from '../helper.js'

// Issue 12: restarted empty (no persistence), Redis forgot every rotation and revocation: a
// rotated token's replay, a revoked session, a logged-out-everywhere session and a stolen token
// all refreshed 200. Rotor now keeps a marker of its own in Redis and finds it gone.

/** Everything a store remembers, then a restart that forgets it: what each old token does next. */
async function loseTheStore (t: Test, env: Record<string, string>): Promise<{ codes: Record<string, unknown>, logs: LogCapture, fresh: number, metrics: string }> {
  const redis = await startRedis(t)
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url, LOG_LEVEL: 'info', ...env }, logs)
  await listen(app)
  const rotatedAway = await issue(app, { sub: 'user' })
  await refreshWith(app, rotatedAway.refresh_token)
  const revoked = await issue(app, { sub: 'user' })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.refresh_token } })
  const everywhere = await issue(app, { sub: 'everywhere' })
  await app.inject({ method: 'POST', url: '/v1/subjects/everywhere/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  const untouched = await issue(app, { sub: 'user' })
  // Tokens minted in an earlier second than the loss (the epoch has second resolution, as iat).
  await new Promise((resolve) => setTimeout(resolve, 1100))

  await redis.stop()
  await redis.start()
  await new Promise((resolve) => setTimeout(resolve, 300))
  const codes: Record<string, unknown> = {}
  for (const [name, pair] of Object.entries({ rotatedAway, revoked, everywhere, untouched }) as Array<[string, Pair]>) {
    const response = await refreshWith(app, pair.refresh_token)
    codes[name] = response.statusCode === 200 ? 200 : response.json().code
  }
  const fresh = (await refreshWith(app, (await issue(app, { sub: 'after' })).refresh_token)).statusCode
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  return { codes, logs, fresh, metrics }
}

test('STORE_LOSS=refuse (the default): every refresh token minted before Redis lost its data is refused; new ones work', async (t) => {
  const { codes, logs, fresh, metrics } = await loseTheStore(t, {})
  t.same(codes, { rotatedAway: 'token_revoked', revoked: 'token_revoked', everywhere: 'token_revoked', untouched: 'token_revoked' }, 'nothing the store forgot comes back to life')
  t.equal(fresh, 200, 'a pair issued after the loss refreshes')
  const lost = logs.lines.filter((line) => String(line['msg']).startsWith('store lost its data'))
  t.equal(lost.length, 1, 'said once')
  t.equal(lost[0]?.['level'], 50, 'at error level')
  t.match(metrics, /^rotor_store_losses_total 1$/m, 'and counted')
})

test('STORE_LOSS=accept: the old tokens refresh as before (availability first), and the loss is still logged and counted', async (t) => {
  const { codes, logs, metrics } = await loseTheStore(t, { STORE_LOSS: 'accept' })
  t.same(codes, { rotatedAway: 200, revoked: 200, everywhere: 200, untouched: 200 })
  t.equal(logs.lines.filter((line) => String(line['msg']).startsWith('store lost its data')).length, 1)
  t.match(metrics, /^rotor_store_losses_total 1$/m)
})

test('a store flushed under an open connection is found out at the next check (every 2 s)', async (t) => {
  const redis = await startRedis(t)
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: redis.url, LOG_LEVEL: 'info' }, logs)
  const old = await issue(app, { sub: 'flushed' })
  await new Promise((resolve) => setTimeout(resolve, 1100))
  await redisCommand(redis.url, 'FLUSHALL')
  // No reconnection tells Rotor: the periodic check does. (A refresh inside those 2 s is served
  // as by a new store: the README says so.)
  await new Promise((resolve) => setTimeout(resolve, 2500))
  t.ok(logs.lines.some((line) => String(line['msg']).startsWith('store lost its data')), 'found out')
  t.match((await refreshWith(app, old.refresh_token)).json(), { code: 'token_revoked' }, 'refused, not rotated as if it were new')
})

test('tokens a sidecar issued while its Redis was not up yet stay good when the store is first seen', async (t) => {
  const redis = await startRedis(t)
  const fresh = await build(t, { REDIS_URL: redis.url })
  const pair = await issue(fresh, { sub: 'early' })
  t.equal((await refreshWith(fresh, pair.refresh_token)).statusCode, 200, 'the marker dates from the process start, not from the first check')
})

test('two instances on one Redis: the first to look writes the new epoch, the other adopts it, and both refuse the old tokens', async (t) => {
  const redis = await startRedis(t)
  const prefix = `rotor-test:loss-${Date.now()}:`
  const logs = [new LogCapture(), new LogCapture()]
  const shared = { REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix, LOG_LEVEL: 'info', JWT_ALGORITHM: 'HS256', JWT_SECRET: 'one secret for both instances, 32+ bytes' }
  const apps = await Promise.all(logs.map(async (log) => build(t, shared, log)))
  const old = await issue(apps[0]!, { sub: 'shared' })
  await new Promise((resolve) => setTimeout(resolve, 1100))
  await redis.stop()
  await redis.start()
  await new Promise((resolve) => setTimeout(resolve, 500))
  const said = logs.map((log) => log.lines.filter((line) => String(line['msg']).startsWith('store lost its data')).map((line) => String(line['msg'])))
  t.same(said.map((lines) => lines.length), [1, 1], 'each instance says it once')
  t.equal(said.flat().filter((message) => message.includes('another instance saw it first')).length, 1, 'one of them wrote the new epoch, the other found it')
  for (const app of apps) t.match((await refreshWith(app, old.refresh_token)).json(), { code: 'token_revoked' })
})
