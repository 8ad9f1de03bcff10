import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import { API_KEY, build, issue, refreshWith, type Pair } from '../support/app.js'
import { sample } from '../support/metrics.js'
import { startRedis } from '../support/redis.js'
import { ROOT } from '../support/paths.js'

test('metrics count issued, refreshed, refused, reused and revoked tokens', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const pair = await issue(app)
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  await refreshWith(app, pair.refresh_token) // a retry within the window
  const third = (await refreshWith(app, rotated.refresh_token)).json<Pair>()
  await refreshWith(app, pair.refresh_token) // two generations back: reuse, the session is revoked
  await refreshWith(app, third.refresh_token) // revoked
  await refreshWith(app, 'garbage')
  const other = await issue(app, { sub: 'other' })
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: other.refresh_token } })
  await app.inject({ method: 'POST', url: '/v1/subjects/other/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  const response = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['content-type'], /^text\/plain/)
  const text = response.body
  t.equal(sample(text, 'rotor_tokens_issued_total'), 2)
  t.equal(sample(text, 'rotor_tokens_refreshed_total{retry="false"}'), 2)
  t.equal(sample(text, 'rotor_tokens_refreshed_total{retry="true"}'), 1)
  t.equal(sample(text, 'rotor_refresh_reuse_total{enforced="true"}'), 1)
  t.equal(sample(text, 'rotor_tokens_refused_total{code="token_reused"}'), 1)
  t.equal(sample(text, 'rotor_tokens_refused_total{code="token_revoked"}'), 1)
  t.equal(sample(text, 'rotor_tokens_refused_total{code="token_invalid"}'), 1)
  t.equal(sample(text, 'rotor_sessions_revoked_total{reason="reuse"}'), 1)
  t.equal(sample(text, 'rotor_sessions_revoked_total{reason="logout"}'), 1)
  t.equal(sample(text, 'rotor_subjects_revoked_total'), 1)
  t.equal(sample(text, 'rotor_http_request_duration_seconds_count{method="POST",route="/v1/tokens/refresh",status_code="200"}'), 3)
  t.equal(sample(text, 'rotor_http_request_duration_seconds_count{method="POST",route="/v1/subjects/:sub/revoke",status_code="200"}'), 1, 'labelled by route pattern, not by subject')
  t.notMatch(text, 'other/revoke')
  t.ok(sample(text, 'process_resident_memory_bytes') > 0, 'process metrics too')
})

test('REUSE_DETECTION=log counts the reuse as not enforced and revokes no session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0', REUSE_DETECTION: 'log' })
  const pair = await issue(app)
  await refreshWith(app, pair.refresh_token)
  await refreshWith(app, pair.refresh_token)
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(text, 'rotor_refresh_reuse_total{enforced="false"}'), 1)
  t.equal(sample(text, 'rotor_sessions_revoked_total{reason="reuse"}'), 0)
})

test('store errors are counted', async (t) => {
  const redis = await startRedis(t)
  const app = await build(t, { REDIS_URL: redis.url })
  const pair = await issue(app)
  await redis.stop()
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 503)
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(text, 'rotor_store_errors_total'), 1)
  t.equal(sample(text, 'rotor_http_errors_total{code="denylist_unavailable"}'), 1)
})

test('the OpenAPI document lists every route with its bodies and error answers', async (t) => {
  const app = await build(t)
  const response = await app.inject({ method: 'GET', url: '/openapi.json' })
  t.equal(response.statusCode, 200)
  const document = response.json<{ openapi: string, paths: Record<string, Record<string, { responses: Record<string, unknown>, requestBody?: unknown }>> }>()
  t.match(document.openapi, /^3\./)
  t.equal((document as unknown as { info: { version: string } }).info.version, (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version, 'the release, from package.json')
  for (const path of ['/v1/tokens', '/v1/tokens/refresh', '/v1/tokens/revoke', '/v1/tokens/introspect', '/v1/subjects/{sub}/revoke', '/.well-known/jwks.json', '/health/live', '/health/ready', '/metrics']) {
    t.ok(document.paths[path] !== undefined, path)
  }
  const refresh = document.paths['/v1/tokens/refresh']?.['post']
  t.ok(refresh?.requestBody, 'refresh documents its body')
  t.same(Object.keys(refresh?.responses ?? {}).sort(), ['200', '400', '401', '413', '415', '429', '503'])
  t.match(JSON.stringify(document), 'denylist_unavailable', 'the error codes are described')
  const docs = await app.inject({ method: 'GET', url: '/docs' })
  t.equal(docs.statusCode, 200)
  t.match(docs.headers['content-type'], /text\/html/)
})

test('metrics, docs, health and JWKS are not rate-limited', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1' })
  for (const url of ['/metrics', '/openapi.json', '/health/live', '/.well-known/jwks.json']) {
    const statuses = []
    for (let i = 0; i < 3; i++) statuses.push((await app.inject({ method: 'GET', url })).statusCode)
    t.same(statuses, [200, 200, 200], url)
  }
})
