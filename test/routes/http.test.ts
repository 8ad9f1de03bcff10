import { test } from 'tap'
import type { InjectOptions } from 'light-my-request'
import { buildApp } from '../../src/app.js'
import { API_KEY, build, issue, listen, testConfig } from '../support/app.js'

const envelope = ['code', 'error', 'message', 'statusCode']

test('every error answer is the contract envelope', async (t) => {
  const app = await build(t)
  const cases: Array<{ name: string, request: InjectOptions, status: number, code: string }> = [
    { name: 'unknown route', request: { method: 'GET', url: '/nope' }, status: 404, code: 'not_found' },
    { name: 'wrong method', request: { method: 'GET', url: '/v1/tokens/refresh' }, status: 404, code: 'not_found' },
    { name: 'text/plain', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'text/plain' }, payload: 'x' }, status: 415, code: 'unsupported_media_type' },
    { name: 'form', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'refresh_token=x' }, status: 415, code: 'unsupported_media_type' },
    { name: 'invalid JSON', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '{"refresh_token":' }, status: 400, code: 'invalid_request' },
    { name: 'empty JSON body', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '' }, status: 400, code: 'invalid_request' },
    { name: 'no body', request: { method: 'POST', url: '/v1/tokens/refresh' }, status: 400, code: 'invalid_request' },
    { name: '__proto__', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '{"__proto__":{"x":1},"refresh_token":"a"}' }, status: 400, code: 'invalid_request' },
    { name: 'constructor.prototype', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '{"constructor":{"prototype":{"x":1}},"refresh_token":"a"}' }, status: 400, code: 'invalid_request' },
    { name: 'array body', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: '[]' }, status: 400, code: 'invalid_request' },
    { name: 'too large', request: { method: 'POST', url: '/v1/tokens/refresh', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ refresh_token: 'a'.repeat(17 * 1024) }) }, status: 413, code: 'payload_too_large' },
    { name: 'issue without a key', request: { method: 'POST', url: '/v1/tokens', payload: { sub: 'a' } }, status: 401, code: 'invalid_client' }
  ]
  for (const { name, request, status, code } of cases) {
    const response = await app.inject(request)
    t.equal(response.statusCode, status, name)
    const body = response.json<Record<string, unknown>>()
    t.same(Object.keys(body).sort(), envelope, `${name}: envelope`)
    t.equal(body['code'], code, `${name}: code`)
    t.equal(body['statusCode'], status, `${name}: statusCode in the body`)
    t.match(response.headers['content-type'], /application\/json/)
  }
})

test('a deeply nested body is refused, not crashed on', async (t) => {
  const app = await build(t)
  const deep = `${'{"a":'.repeat(2000)}1${'}'.repeat(2000)}`
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, payload: `{"sub":"a","claims":${deep}}` })
  t.equal(response.statusCode, 400)
  t.equal(response.json().code, 'invalid_request')
  const shallow = `${'{"a":'.repeat(8)}1${'}'.repeat(8)}`
  const fine = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' }, payload: `{"sub":"a","claims":${shallow}}` })
  t.equal(fine.statusCode, 200, 'eight levels are fine')
})

test('health: live always, ready with the store', async (t) => {
  const app = await build(t)
  t.same((await app.inject({ method: 'GET', url: '/health/live' })).json(), { status: 'ok' })
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { status: 'ok', store: 'redis' })
  const memory = await build(t, { REDIS_URL: '' })
  t.same((await memory.inject({ method: 'GET', url: '/health/ready' })).json(), { status: 'ok', store: 'memory' })
})

test('answers over a real socket carry no x-powered-by', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const pair = await issue(app)
  const refresh = await fetch(`${base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token }) })
  t.equal(refresh.status, 200)
  t.notOk(refresh.headers.has('x-powered-by'))
})

test('security headers fit a JSON API; token answers are never cached', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const refresh = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: pair.refresh_token } })
  const refused = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload: { refresh_token: 'x' } })
  for (const response of [refresh, refused]) {
    t.equal(response.headers['cache-control'], 'no-store')
    t.equal(response.headers['x-content-type-options'], 'nosniff')
    t.equal(response.headers['x-frame-options'], 'DENY')
    t.equal(response.headers['referrer-policy'], 'no-referrer')
    t.notOk('x-powered-by' in response.headers)
    t.notMatch(response.body, /\n\s+at /, 'no stack trace')
  }
  const jwks = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.match(jwks.headers['cache-control'], /max-age/, 'public keys may be cached')
})

test('a body that never finishes is cut off, not held forever', async (t) => {
  const app = await buildApp(testConfig(), { idleTimeoutMs: 500 })
  t.teardown(async () => { await app.close() })
  const base = await listen(app)
  const { request } = await import('node:http')
  const started = Date.now()
  const outcome = await new Promise<string>((resolve) => {
    const req = request(`${base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': '100' } }, (res) => {
      res.resume()
      res.on('end', () => { resolve(`answered ${String(res.statusCode)}`) })
    })
    req.on('error', () => { resolve('closed') })
    req.write('{"refresh_token": "')
  })
  t.ok(Date.now() - started < 3000, `cut off after ${Date.now() - started} ms`)
  t.match(outcome, /^(closed|answered 408)$/, outcome)
})
