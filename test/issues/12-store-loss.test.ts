import { test, type Test } from 'tap'
import { API_KEY, build, issue, listen, LogCapture, refreshWith, type Pair } from '../support/app.js'
import { redisCommand, startCluster, startRedis } from '../support/redis.js'
import { until } from '../support/wait.js'

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

test('on a Cluster, one primary restarted empty is found out too, whichever shard it is', async (t) => {
  const cluster = await startCluster(t, { masters: 3 })
  const logs = new LogCapture()
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, LOG_LEVEL: 'info' }, logs)
  // The shard to lose: not the one a single marker key (`<prefix>store:epoch`) would live on.
  const slotOf = async (key: string): Promise<number> => Number(await redisCommand(cluster.servers[0]!.url, 'CLUSTER', 'KEYSLOT', key))
  const ranges = await redisCommand(cluster.servers[0]!.url, 'CLUSTER', 'SLOTS') as Array<[number, number, [string, number]]>
  const ownerOf = (slot: number): number => ranges.find(([from, to]) => slot >= from && slot <= to)?.[2][1] ?? -1
  const markerOwner = ownerOf(await slotOf(`${app.config.redisKeyPrefix}store:epoch`))
  const lost = cluster.servers.find((server) => server.port !== markerOwner)!
  // A revoked session whose records live on that shard.
  let sub = ''
  for (let i = 0; sub === ''; i++) if (ownerOf(await slotOf(`x{user-${i}}`)) === lost.port) sub = `user-${i}`
  const revoked = await issue(app, { sub })
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: revoked.refresh_token } })).statusCode, 200)
  t.equal((await refreshWith(app, revoked.refresh_token)).json().code, 'token_revoked', 'revoked before the loss')
  await new Promise((resolve) => setTimeout(resolve, 1100))

  await lost.stop()
  await lost.start()
  await until('the restarted primary to serve its slots again', async () => String(await redisCommand(lost.url, 'CLUSTER', 'INFO')).includes('cluster_state:ok'))
  t.equal(await redisCommand(lost.url, 'DBSIZE'), 0, 'the premise: it came back empty')
  await until('the loss to be found out', async () => logs.lines.some((line) => String(line['msg']).startsWith('store lost its data')), 5000)
  t.equal((await refreshWith(app, revoked.refresh_token)).json().code, 'token_revoked', 'the session it forgot is still refused')
  const other = await issue(app, { sub: 'after' })
  t.equal((await refreshWith(app, other.refresh_token)).statusCode, 200, 'a pair issued after the loss refreshes')
})

test('on a Cluster, every slot\'s marker is kept alive while Rotor runs, not only the ones it reads', async (t) => {
  const cluster = await startCluster(t, { masters: 3 })
  const logs = new LogCapture()
  // Markers live as long as the longest token: 4 s here.
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, LOG_LEVEL: 'info', ACCESS_TOKEN_TTL: '1s', REFRESH_TOKEN_TTL: '4s' }, logs)
  await app.ready()
  const markers = async (): Promise<number> => {
    let count = 0
    for (const server of cluster.servers) count += (await redisCommand(server.url, 'KEYS', `${app.config.redisKeyPrefix}store:epoch:*`) as string[]).length
    return count
  }
  t.equal(await markers(), 1024, 'one marker for every 16th slot')
  await new Promise((resolve) => setTimeout(resolve, 5500))
  t.equal(await markers(), 1024, 'all of them still there after more than their life')
  t.notOk(logs.lines.some((line) => String(line['msg']).startsWith('store lost its data')), 'and no loss was imagined')
})
