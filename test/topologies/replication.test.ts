import { test } from 'tap'
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import { LogCapture, build, introspectToken, issue, refreshWith, type Pair } from '../support/app.js'
import { redisCommand, startRedis, untilReplicating, type OwnRedis } from '../support/redis.js'
import { TcpProxy } from '../support/net.js'
import { until } from '../support/wait.js'

// Redis replicates asynchronously: a write the primary acknowledged may not have reached the
// replica when the primary dies, and the promoted replica never saw it. For a denylist that
// means a revoked token comes back to life. These tests measure it, and what WAIT and
// min-replicas-to-write change. The replica reaches its primary through a proxy of the test's
// that can cut the link (a partition: nothing passes either way, no connection closes), so
// that "not replicated" is certain rather than a race.

const SECRET = randomBytes(32).toString('base64url')
const FAST = ['--repl-diskless-sync-delay', '0']

interface Replicated { primary: OwnRedis, replica: OwnRedis, link: TcpProxy }

async function primaryWithReplica (t: Parameters<typeof startRedis>[0], primaryArgs: string[] = []): Promise<Replicated> {
  const primary = await startRedis(t, [...FAST, ...primaryArgs])
  const link = new TcpProxy(primary.port)
  t.teardown(() => { link.close() })
  const replica = await startRedis(t, [...FAST, '--replicaof', '127.0.0.1', String(await link.listen())])
  await untilReplicating(primary.url, replica.url)
  return { primary, replica, link }
}

/** What a sentinel does: the primary is gone, the replica becomes the primary. */
async function failOver ({ primary, replica }: Replicated): Promise<void> {
  await primary.stop()
  await redisCommand(replica.url, 'REPLICAOF', 'NO', 'ONE')
}

/** Two Rotor instances' worth of settings that share keys and key prefix, so the second reads the first's records. */
function sharedEnv (extra: Record<string, string> = {}): (url: string) => Record<string, string> {
  const prefix = `rotor-test:${randomBytes(6).toString('hex')}:`
  return (url) => ({ REDIS_URL: url, REDIS_KEY_PREFIX: prefix, JWT_ALGORITHM: 'HS256', JWT_SECRET: SECRET, ...extra })
}

async function revoke (app: FastifyInstance, token: string): Promise<number> {
  return (await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token } })).statusCode
}

async function stillActive (app: FastifyInstance, tokens: string[]): Promise<number> {
  let active = 0
  for (const token of tokens) if ((await introspectToken(app, token))['active'] === true) active++
  return active
}

test('without WAIT, revocations the primary acknowledged but did not replicate are lost on failover', async (t) => {
  const redis = await primaryWithReplica(t)
  const env = sharedEnv()
  const before = await build(t, env(redis.primary.url))
  const pairs = await Promise.all(Array.from({ length: 11 }, async (_, i) => issue(before, { sub: `user-${i}` })))
  const [control, ...rest] = pairs.map((pair) => pair.access_token) as [string, ...string[]]
  t.equal(await revoke(before, control), 200)
  await until('the control revocation to reach the replica', async () => Number(await redisCommand(redis.replica.url, 'DBSIZE')) > 0)

  redis.link.partition()
  const acknowledged = (await Promise.all(rest.map(async (token) => revoke(before, token)))).filter((status) => status === 200).length
  t.equal(acknowledged, rest.length, 'every revocation was acknowledged')
  await failOver(redis)

  const after = await build(t, env(redis.replica.url))
  t.equal(await stillActive(after, [control]), 0, 'the revocation replicated before the freeze survived')
  const lost = await stillActive(after, rest)
  t.equal(lost, acknowledged, 'every acknowledged, unreplicated revocation was lost: those tokens work again')
  t.comment(`async replication: ${lost} of ${acknowledged} acknowledged revocations lost on failover`)
})

test('with REDIS_WAIT_REPLICAS=1 nothing unreplicated is acknowledged: 503 instead, and an acknowledged write survives failover', async (t) => {
  const redis = await primaryWithReplica(t)
  const env = sharedEnv({ REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_TIMEOUT_MS: '100' })
  const logs = new LogCapture()
  const before = await build(t, env(redis.primary.url), logs)
  const [frozen, durable, user] = await Promise.all([issue(before, { sub: 'a' }), issue(before, { sub: 'b' }), issue(before, { sub: 'c' })])

  redis.link.partition()
  const refused = await before.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: frozen.access_token } })
  t.equal(refused.statusCode, 503, 'the replica could not confirm: not acknowledged')
  t.equal(refused.json().code, 'denylist_unavailable')
  t.match(logs.text, /only 0 of 1 Redis replicas confirmed a denylist write within 100 ms/)
  const rotation = await refreshWith(before, user.refresh_token)
  t.equal(rotation.statusCode, 503, 'a rotation the replica did not confirm is not handed out')
  t.equal(logs.lines.filter((line) => line['level'] === 50 && String(line['msg']).startsWith('store not durable')).length, 1, 'the on-call reads it once, at error level, however many writes fail')

  redis.link.heal()
  await untilReplicating(redis.primary.url, redis.replica.url)
  const retried = await refreshWith(before, user.refresh_token)
  t.equal(retried.statusCode, 200, 'the retry of that refresh, within the grace window, is served: nobody is logged out')
  t.equal(await revoke(before, durable.access_token), 200, 'confirmed by the replica')
  t.equal(logs.lines.filter((line) => line['msg'] === 'store durable again: Redis replicas confirm denylist writes').length, 1, 'and once when it is over')
  await failOver(redis)
  const waiting = await build(t, env(redis.replica.url))
  t.equal(await revoke(waiting, frozen.access_token), 503, 'the new primary has no replica yet: with WAIT, writes are refused until one attaches')
  const after = await build(t, { ...env(redis.replica.url), REDIS_WAIT_REPLICAS: '0' })
  t.equal(await stillActive(after, [durable.access_token]), 0, 'the acknowledged revocation survived the failover')
  t.equal((await refreshWith(after, user.refresh_token)).statusCode, 200, 'the retried rotation survived too: its token is in its grace window, not reused')
  t.equal((await refreshWith(after, retried.json<Pair>().refresh_token)).statusCode, 200, 'and the session goes on')
})

test('min-replicas-to-write bounds the loss to the lag window, then refuses writes (503)', async (t) => {
  const redis = await primaryWithReplica(t, ['--min-replicas-to-write', '1', '--min-replicas-max-lag', '1'])
  const env = sharedEnv()
  const before = await build(t, env(redis.primary.url))
  const pairs = await Promise.all(Array.from({ length: 60 }, async (_, i) => issue(before, { sub: `user-${i}` })))

  redis.link.partition()
  const frozenAt = Date.now()
  const acknowledged: string[] = []
  let refusedAfterMs = 0
  for (const pair of pairs) {
    const status = await revoke(before, pair.access_token)
    if (status === 200) acknowledged.push(pair.access_token)
    if (status === 503) {
      refusedAfterMs = Date.now() - frozenAt
      break
    }
    t.equal(status, 200, 'until the primary notices, revocations are acknowledged')
    await sleep(100)
  }
  t.ok(refusedAfterMs > 0, 'the primary refused writes once the replica lagged (NOREPLICAS): 503')
  await failOver(redis)
  const after = await build(t, env(redis.replica.url))
  const lost = await stillActive(after, acknowledged)
  t.equal(lost, acknowledged.length, 'what it acknowledged in the window was lost')
  t.comment(`min-replicas-max-lag 1: ${lost} revocations acknowledged and lost in the ${refusedAfterMs} ms before the primary refused writes`)
})

test('a Rotor pointed at a replica (a demoted primary) answers 503, and says READONLY in its log', async (t) => {
  const redis = await primaryWithReplica(t)
  const logs = new LogCapture()
  const env = sharedEnv()
  const app = await build(t, env(redis.replica.url), logs)
  const pair = await issue(app)
  const response = await refreshWith(app, pair.refresh_token)
  t.equal(response.statusCode, 503)
  t.equal(response.json().code, 'denylist_unavailable')
  t.match(logs.text, /READONLY/)
  const waiting = await build(t, { ...env(redis.replica.url), REDIS_WAIT_REPLICAS: '1' })
  const refused = await waiting.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.access_token } })
  t.equal(refused.statusCode, 503, 'the same with REDIS_WAIT_REPLICAS: the write fails before the WAIT')
  t.equal(refused.json().code, 'denylist_unavailable')
})
