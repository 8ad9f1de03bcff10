import { test } from 'tap'
import { setTimeout as sleep } from 'node:timers/promises'
import { API_KEY, build, introspectToken, issue, listen, refreshWith } from '../support/app.js'
import { redisCommand, startCluster } from '../support/redis.js'
import { checkRotationAndRevocation, checkSessions, RefreshTraffic, refreshAtOnce } from '../support/traffic.js'
import { until } from '../support/wait.js'
import { dpopKey, proofFor } from '../support/dpop.js'

// One cluster for the file (3 masters, each with a replica); the failover test comes last.
test('on a Redis Cluster with replicas', async (t) => {
  const cluster = await startCluster(t, { replicas: 1, nodeTimeoutMs: 1000 })
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)

  await t.test('rotation, reuse, revocation and log-out-everywhere work as on one node', async (t) => {
    // Subjects spread over the slots: each subject's keys share one slot (the hash tag), whichever it is.
    await checkRotationAndRevocation(t, app, ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'])
  })

  await t.test('subjects with braces, a leading ~ or beyond ASCII keep every record in one slot (issue 12)', async (t) => {
    // A `}` used to end the hash tag early ({}x}: an empty tag), scattering a subject's keys over slots.
    await checkRotationAndRevocation(t, app, ['}x', 'a}b{c', '{}', '~x', 'émile ✓'])
    for (const sub of ['}x', '{}']) {
      const pair = await issue(app, { sub })
      const everywhere = await app.inject({ method: 'POST', url: `/v1/subjects/${encodeURIComponent(sub)}/revoke`, headers: { authorization: `Bearer ${API_KEY}` } })
      t.equal(everywhere.statusCode, 200, `${sub}: log out everywhere`)
      t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_revoked', `${sub}: ends its session`)
    }
  })

  await t.test('sessions are listed, capped and ended per subject, whichever slot it hashes to', async (t) => {
    const capped = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, MAX_SESSIONS_PER_SUBJECT: '2' })
    await checkSessions(t, capped, ['alice', 'bob', 'carol', 'dave', '}x', 'a}b{c', '~x', 'émile ✓'])
  })

  await t.test('a DPoP proof is used once, its record in the slot of its subject\'s rotation, whichever slot that is', async (t) => {
    const htu = `${base}/v1/tokens/refresh`
    for (const sub of ['alice', 'bob', 'carol', '}x', 'émile ✓']) {
      const key = await dpopKey()
      const pair = await issue(app, { sub, dpop_jkt: key.jkt })
      const proof = await proofFor(key, { htu })
      const answers = await Promise.all(Array.from({ length: 5 }, async () => await fetch(htu, {
        method: 'POST', headers: { 'content-type': 'application/json', dpop: proof }, body: JSON.stringify({ refresh_token: pair.refresh_token })
      })))
      t.same(answers.map((answer) => answer.status).sort(), [200, 400, 400, 400, 400], `${sub}: one rotation, the replays refused`)
      const next = await answers.find((answer) => answer.status === 200)!.json() as { refresh_token: string }
      const again = await fetch(htu, { method: 'POST', headers: { 'content-type': 'application/json', dpop: await proofFor(key, { htu }) }, body: JSON.stringify({ refresh_token: next.refresh_token }) })
      t.equal(again.status, 200, `${sub}: the session goes on`)
    }
  })

  await t.test('30 concurrent refreshes of one token give exactly one success', async (t) => {
    const pair = await issue(app)
    const statuses = await refreshAtOnce(base, pair.refresh_token, 30)
    t.equal(statuses.filter((status) => status === 200).length, 1)
    t.equal(statuses.filter((status) => status === 401).length, 29)
  })

  await t.test('with REDIS_WAIT_REPLICAS=1, each write waits for the replica of the master that took it', async (t) => {
    const waiting = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, REDIS_WAIT_REPLICAS: '1', REDIS_WAIT_TIMEOUT_MS: '500' })
    for (const sub of ['alice', 'bob', 'carol', 'dave']) {
      const pair = await issue(waiting, { sub })
      t.equal((await refreshWith(waiting, pair.refresh_token)).statusCode, 200, `${sub}: a rotation its replica confirmed`)
      t.equal((await waiting.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.access_token } })).statusCode, 200)
      t.same(await introspectToken(waiting, pair.access_token), { active: false })
    }
    // Freeze the replica of alice's master only: her writes wait in vain (503), bob's on another master do not.
    const seed = cluster.servers[0]!.url
    const slotOf = async (sub: string): Promise<number> => Number(await redisCommand(seed, 'CLUSTER', 'KEYSLOT', `{${sub}}`))
    const slots = await redisCommand(seed, 'CLUSTER', 'SLOTS') as Array<[number, number, [string, number], [string, number]]>
    /** The [master port, replica port] of the shard that holds a subject's keys. */
    const shard = async (sub: string): Promise<[number, number]> => {
      const slot = await slotOf(sub)
      const range = slots.find(([start, end]) => start <= slot && slot <= end)!
      return [range[2][1], range[3][1]]
    }
    const [aliceMaster, aliceReplica] = await shard('alice')
    let other = 'bob'
    for (let i = 0; (await shard(other))[0] === aliceMaster; i++) other = `bob-${i}`
    const [alice, bob] = [await issue(waiting, { sub: 'alice' }), await issue(waiting, { sub: other })]
    const replica = cluster.servers.find((server) => server.port === aliceReplica)!
    replica.pause()
    try {
      t.equal((await waiting.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: alice.access_token } })).statusCode, 503, 'her master\'s replica is frozen')
      t.equal((await waiting.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: bob.access_token } })).statusCode, 200, 'another master\'s replica confirms')
    } finally {
      replica.resume()
    }
  })

  await t.test('a master killed mid-traffic: 503 while its slots have no master, never 500 nor a logout, then back after failover', async (t) => {
    // The default grace window, as deployed: a rotation the dying primary ran but never answered
    // is retried by the client, and the window serves the retry (with no window it would be reuse).
    const served = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes })
    const base = await listen(served)
    const users = await Promise.all(Array.from({ length: 24 }, async (_, i) => (await issue(served, { sub: `user-${i}` })).refresh_token))
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
    t.equal((await served.inject({ method: 'GET', url: '/health/ready' })).statusCode, 200, 'ready again')
    t.comment(`failover: ${statuses.get(200) ?? 0} refreshes 200, ${statuses.get(503) ?? 0} answered 503; every user served again ${recoveredInMs} ms after the kill`)
  })
})
