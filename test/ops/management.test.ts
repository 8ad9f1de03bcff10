import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { API_KEY, build, issue, listen } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'
import { until } from '../support/wait.js'

/** The ops listener, listening on a free port of its own (as src/server.ts does). */
async function listenManagement (app: FastifyInstance): Promise<string> {
  const management = app.management
  if (management === null) throw new Error('no ops listener: MANAGEMENT_PORT is not set')
  await management.listen({ port: app.config.managementPort ?? 0, host: '127.0.0.1' })
  return `http://127.0.0.1:${app.config.managementPort ?? 0}`
}

test('without MANAGEMENT_PORT everything is on the one port, as before', async (t) => {
  const app = await build(t)
  t.equal(app.management, null)
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(metrics.statusCode, 200)
  t.match(metrics.body, /rotor_tokens_issued_total/)
})

test('with MANAGEMENT_PORT, /metrics is served there and answers 404 not_found on the public port', async (t) => {
  const app = await build(t, { MANAGEMENT_PORT: String(await freePort()) })
  const publicBase = await listen(app)
  const opsBase = await listenManagement(app)

  await issue(app, { sub: 'counted' })
  await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: 'not-a-token' } })

  const hidden = await fetch(`${publicBase}/metrics`)
  t.equal(hidden.status, 404)
  t.same(await hidden.json(), { statusCode: 404, code: 'not_found', error: 'Not Found', message: 'no route GET /metrics' })

  const scraped = await fetch(`${opsBase}/metrics`)
  t.equal(scraped.status, 200)
  t.match(scraped.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const text = await scraped.text()
  t.match(text, /^rotor_tokens_issued_total 1$/m, 'the public app\'s counters: one pair issued')
  t.match(text, /^rotor_http_errors_total\{code="token_invalid"\} 1$/m, 'and one refusal')
  t.match(text, /^rotor_http_request_duration_seconds_count\{method="POST",route="\/v1\/tokens",status_code="200"\} 1$/m)
  t.notMatch(text, /route="\/metrics"/, 'scrapes are not counted as traffic')
})

test('with MANAGEMENT_PORT, the health routes answer on both ports', async (t) => {
  const app = await build(t, { MANAGEMENT_PORT: String(await freePort()) })
  const publicBase = await listen(app)
  const opsBase = await listenManagement(app)
  for (const base of [publicBase, opsBase]) {
    const live = await fetch(`${base}/health/live`)
    t.same([live.status, await live.json()], [200, { status: 'ok' }], `${base === opsBase ? 'ops' : 'public'} /health/live`)
    const ready = await fetch(`${base}/health/ready`)
    t.same([ready.status, await ready.json()], [200, { status: 'ok', store: 'redis' }], `${base === opsBase ? 'ops' : 'public'} /health/ready`)
  }
})

test('the ops listener serves nothing else: a token route there is 404 not_found', async (t) => {
  const app = await build(t, { MANAGEMENT_PORT: String(await freePort()) })
  const opsBase = await listenManagement(app)
  const response = await fetch(`${opsBase}/v1/tokens`, {
    method: 'POST', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ sub: 'alice' })
  })
  t.equal(response.status, 404)
  t.match(await response.json(), { code: 'not_found' })
  for (const url of ['/openapi.json', '/.well-known/jwks.json']) {
    t.equal((await fetch(`${opsBase}${url}`)).status, 404, `${url} stays on the public port`)
  }
})

test('the ops listener\'s readiness follows Redis: 503 with Retry-After while it is down, 200 once it is back', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url, MANAGEMENT_PORT: String(await freePort()) })
  const opsBase = await listenManagement(app)
  t.equal((await fetch(`${opsBase}/health/ready`)).status, 200)
  redis.pause()
  const down = await fetch(`${opsBase}/health/ready`)
  t.equal(down.status, 503)
  t.equal(down.headers.get('retry-after'), '2')
  t.same(await down.json(), { status: 'unavailable', store: 'redis' })
  t.equal((await fetch(`${opsBase}/health/live`)).status, 200, 'live all the same')
  redis.resume()
  // The connection whose command timed out was replaced (a silent one would never answer): ready
  // again once the new one is up.
  await until('ready again', async () => (await fetch(`${opsBase}/health/ready`)).status === 200, 5000)
  t.pass('ready again after Redis resumed')
})

test('closing the app closes its ops listener', async (t) => {
  const app = await build(t, { MANAGEMENT_PORT: String(await freePort()) })
  const opsBase = await listenManagement(app)
  await app.close()
  await t.rejects(fetch(`${opsBase}/health/live`), 'nothing listens any more')
})
