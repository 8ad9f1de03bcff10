import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, issue, listen } from '../support/app.js'
import { redisCommand, startCluster, startRedis, startSentinel } from '../support/redis.js'
import { TcpProxy } from '../support/net.js'
import { until } from '../support/wait.js'
import type { Assertions } from '../support/tap.js'

// Issue 12: when the open Redis connections went silent (no FIN, no RST: a firewall or NAT that
// dropped their state) while new connections would work, refresh and /health/ready answered 503
// until the kernel gave up, ~15 min later. Required: 200 again within 10 s, on a single node,
// Sentinel and Cluster. Rotor now replaces a connection whose command timed out (a Cluster client
// all of its node connections), and checks idle ones every 2 s (a Cluster client every node).
const WITHIN_MS = 10_000

const sum = (proxies: TcpProxy[], count: (proxy: TcpProxy) => number): number => proxies.reduce((total, proxy) => total + count(proxy), 0)

/**
 * Silences every connection open through `proxies` and checks Rotor's answers: 503 at most
 * meanwhile, refresh and readiness 200 within WITHIN_MS, and the rate limiter counting in Redis again.
 */
async function recoversFromSilence (t: Assertions, app: FastifyInstance, proxies: TcpProxy[]): Promise<void> {
  const base = await listen(app)
  const refresh = async (): Promise<Response> => {
    const pair = await issue(app, { sub: 'silent' })
    return await fetch(`${base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token }) })
  }
  t.equal((await refresh()).status, 200, 'through the proxy')
  const acceptedBefore = sum(proxies, (proxy) => proxy.accepted)

  for (const proxy of proxies) proxy.silenceExisting()
  const silencedAt = Date.now()
  const statuses = new Set<number>()
  let servedAfterMs: number | null = null
  while (Date.now() - silencedAt < WITHIN_MS + 5000) {
    const response = await refresh()
    statuses.add(response.status)
    if (response.status === 200) {
      servedAfterMs = Date.now() - silencedAt
      break
    }
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.ok(servedAfterMs !== null && servedAfterMs < WITHIN_MS, `refresh answers 200 again ${String(servedAfterMs)} ms after the connections went silent`)
  t.same([...statuses].filter((status) => status !== 200 && status !== 503), [], 'meanwhile only 503, never a logout')
  t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'ready again')

  // The limiter's own connection was replaced too: it counts again (a silent one lets requests through
  // uncounted). Revoke's count is the limiter's (a refresh's rides on its rotation, on the denylist's).
  const revoke = async (): Promise<Response> => await fetch(`${base}/v1/tokens/revoke`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"token":"not-a-token"}' })
  let limiterCounts = false
  while (!limiterCounts && Date.now() - silencedAt < WITHIN_MS) {
    const first = Number((await revoke()).headers.get('x-ratelimit-remaining'))
    const second = Number((await revoke()).headers.get('x-ratelimit-remaining'))
    limiterCounts = second === first - 1
    if (!limiterCounts) await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.ok(limiterCounts, `the per-IP budget is counted in Redis again within ${WITHIN_MS / 1000} s`)
  t.ok(sum(proxies, (proxy) => proxy.accepted) > acceptedBefore, 'on new connections')
}

test('single node: silent connections are replaced, and Rotor closes the silent ones', async (t) => {
  const redis = await startRedis(t)
  const proxy = new TcpProxy(redis.port)
  t.teardown(() => { proxy.close() })
  const app = await build(t, { REDIS_URL: `redis://127.0.0.1:${await proxy.listen()}`, RATE_LIMIT_MAX: '1000' })
  await app.ready()
  t.equal(proxy.connections, 2, 'the denylist\'s and the rate limiter\'s connections')
  await recoversFromSilence(t, app, [proxy])
  t.equal(proxy.accepted, 4, 'exactly two new connections')
  t.equal(proxy.connections, 2, 'and Rotor closed the silent ones')
})

test('Sentinel: a silent connection to the primary is replaced by one the sentinel points to', async (t) => {
  // The sentinel knows the primary by the proxy's address, so Rotor reaches it through the proxy.
  // The sentinel's own links pass through it too: a long down-after keeps it from failing over
  // while they are silent (this test is about Rotor's connections, not a failover).
  const redis = await startSentinel(t, 'rotor', { proxied: true, downAfterMs: 60_000 })
  const proxy = redis.proxy!
  const app = await build(t, { REDIS_URL: '', REDIS_SENTINELS: redis.sentinels, REDIS_SENTINEL_NAME: 'rotor', RATE_LIMIT_MAX: '1000' })
  await recoversFromSilence(t, app, [proxy])
})

test('Cluster: silent node connections are replaced', async (t) => {
  const cluster = await startCluster(t, { masters: 3 })
  // Each node announces a proxy's port: clients (Rotor) reach it through the proxy, the nodes
  // reach each other on their real bus ports.
  const proxies = cluster.servers.map((server) => new TcpProxy(server.port))
  t.teardown(() => { for (const proxy of proxies) proxy.close() })
  const ports = await Promise.all(proxies.map(async (proxy) => await proxy.listen()))
  for (const [i, server] of cluster.servers.entries()) {
    await redisCommand(server.url, 'CONFIG', 'SET', 'cluster-announce-bus-port', String(server.port + 10000))
    await redisCommand(server.url, 'CONFIG', 'SET', 'cluster-announce-port', String(ports[i]))
  }
  for (const server of cluster.servers) {
    await until('every node to announce its proxy', async () => {
      const slots = await redisCommand(server.url, 'CLUSTER', 'SLOTS') as Array<[number, number, [string, number]]>
      return slots.every(([, , [, port]]) => ports.includes(port))
    })
  }
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: ports.map((port) => `127.0.0.1:${port}`).join(','), RATE_LIMIT_MAX: '1000' })
  await recoversFromSilence(t, app, proxies)
})
