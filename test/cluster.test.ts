import { test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { API_KEY, build, introspectToken, issue, listen, redisCommand, RefreshTraffic, refreshWith, startCluster, until, type Pair } from './helper.js'

// One cluster for the file (3 masters, each with a replica); the failover test comes last.
test('on a Redis Cluster with replicas', async (t) => {
  const cluster = await startCluster(t, { replicas: 1, nodeTimeoutMs: 1000 })
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)

  await t.test('rotation, reuse, revocation and log-out-everywhere work as on one node', async (t) => {
    t.same((await app.inject({ method: 'GET', url: '/health/ready' })).json(), { status: 'ok', store: 'redis' })
    // Subjects spread over the slots: each subject's keys share one slot (the hash tag), whichever it is.
    for (const sub of ['alice', 'bob', 'carol', 'dave', 'erin', 'frank']) {
      const pair = await issue(app, { sub })
      const rotated = await refreshWith(app, pair.refresh_token)
      t.equal(rotated.statusCode, 200, `${sub}: refresh`)
      const replay = await refreshWith(app, pair.refresh_token)
      t.equal(replay.json().code, 'token_reused', `${sub}: reuse is detected`)
      t.equal((await refreshWith(app, rotated.json<Pair>().refresh_token)).json().code, 'token_revoked', `${sub}: and revokes the session`)
    }
    const pair = await issue(app, { sub: 'grace' })
    await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.access_token } })
    t.same(await introspectToken(app, pair.access_token), { active: false })
    const other = await issue(app, { sub: 'everywhere' })
    await app.inject({ method: 'POST', url: '/v1/subjects/everywhere/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
    t.equal((await refreshWith(app, other.refresh_token)).json().code, 'token_revoked')
  })

  await t.test('30 concurrent refreshes of one token give exactly one success', async (t) => {
    const pair = await issue(app)
    const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await fetch(`${base}/v1/tokens/refresh`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token })
    })).status))
    t.equal(statuses.filter((status) => status === 200).length, 1)
    t.equal(statuses.filter((status) => status === 401).length, 29)
  })

  await t.test('a master killed mid-traffic: 503 while its slots have no master, never 500 nor a logout, then back after failover', async (t) => {
    const users = await Promise.all(Array.from({ length: 24 }, async (_, i) => (await issue(app, { sub: `user-${i}` })).refresh_token))
    const traffic = new RefreshTraffic(base, users)
    await sleep(300)
    // The first server is a master (redis-cli makes the first ones masters); its replica takes over.
    const victim = cluster.servers[0]!
    t.match(await redisCommand(victim.url, 'INFO', 'replication'), /role:master/)
    await victim.stop()
    const killedAt = Date.now()
    await until('every user to be served after the failover', async () => traffic.servedSince(killedAt) === traffic.users, 20_000)
    const recoveredInMs = Date.now() - killedAt
    await traffic.stop()
    const { statuses, codes } = traffic

    t.same([...statuses.keys()].filter((status) => status !== 200 && status !== 503), [], 'only 200 and 503, never 500 or 401')
    t.same([...codes].filter((code) => code !== 'denylist_unavailable'), [], 'every 503 is denylist_unavailable')
    t.ok((statuses.get(503) ?? 0) > 0, 'the users on the dead master got 503 for a while')
    t.equal((await app.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'ready again')
    t.comment(`failover: ${statuses.get(200) ?? 0} refreshes 200, ${statuses.get(503) ?? 0} answered 503; every user served again ${recoveredInMs} ms after the kill`)
  })
})
