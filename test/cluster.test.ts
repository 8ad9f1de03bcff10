import { test } from 'tap'
import { API_KEY, build, introspectToken, issue, listen, refreshWith, startCluster, type Pair } from './helper.js'

test('on a Redis Cluster, rotation, reuse, revocation and log-out-everywhere work as on one node', async (t) => {
  const cluster = await startCluster(t)
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, REFRESH_REUSE_GRACE: '0' })
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

test('on a Redis Cluster, 30 concurrent refreshes of one token give exactly one success', async (t) => {
  const cluster = await startCluster(t)
  const app = await build(t, { REDIS_URL: '', REDIS_CLUSTER_NODES: cluster.nodes, REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)
  const pair = await issue(app)
  const statuses = await Promise.all(Array.from({ length: 30 }, async () => (await fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token })
  })).status))
  t.equal(statuses.filter((status) => status === 200).length, 1)
  t.equal(statuses.filter((status) => status === 401).length, 29)
})
