import { test } from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import fc from 'fast-check'
import { API_KEY, build, issue, listen } from '../support/app.js'

const ROUTES = [
  ['POST', '/v1/tokens'], ['POST', '/v1/tokens/refresh'], ['POST', '/v1/tokens/revoke'], ['POST', '/v1/tokens/introspect'],
  ['POST', '/v1/subjects/alice/revoke'], ['POST', '/v1/subjects/%E0%A4%A/revoke'], ['POST', '/api/auth/token/refresh/'],
  ['POST', '/api/auth/token/verify/'], ['POST', '/api/auth/token/blacklist/'], ['GET', '/.well-known/jwks.json'],
  ['GET', '/health/ready'], ['GET', '/metrics'], ['OPTIONS', '/v1/tokens/refresh'], ['GET', '/v1/tokens'], ['DELETE', '/v1/tokens/refresh'],
  ['POST', '/oauth2/token'], ['POST', '/oauth2/revoke'], ['POST', '/oauth2/introspect'], ['GET', '/.well-known/oauth-authorization-server'],
  ['OPTIONS', '/oauth2/token'], ['GET', '/v1/sessions'], ['DELETE', '/v1/sessions/AQAAAAAAAAAAAAAAAAAAAAA'], ['POST', '/v1/sessions/revoke-others'],
  ['GET', '/v1/subjects/alice/sessions'], ['DELETE', '/v1/subjects/alice/sessions/%E0%A4%A'], ['OPTIONS', '/v1/sessions']
] as const

/** A real token with one character changed, a segment dropped or duplicated, or padding added. */
function mutated (token: string): fc.Arbitrary<string> {
  return fc.oneof(
    fc.tuple(fc.nat({ max: token.length - 1 }), fc.string({ minLength: 1, maxLength: 1 })).map(([at, c]) => token.slice(0, at) + c + token.slice(at + 1)),
    fc.constantFrom(token.split('.').slice(0, 2).join('.'), `${token}.${token}`, token.split('.').reverse().join('.'), `${token}==`, token.toUpperCase())
  )
}

/** A full collection, then the heap in use: steady unless something leaks. */
function heapAfterGc (): number {
  setFlagsFromString('--expose-gc')
  ;(runInNewContext('gc') as () => void)()
  return process.memoryUsage().heapUsed
}

test('generated requests at every route of a running server: never a 5xx but 503, the process alive, memory steady', async (t) => {
  const app = await build(t, { LEGACY_SIMPLEJWT_SIGNING_KEY: 'legacy-signing-key-0123456789abcdef' })
  const base = await listen(app)
  const pair = await issue(app)
  const token = fc.oneof(fc.string({ maxLength: 300 }), mutated(pair.access_token), mutated(pair.refresh_token), fc.constant(pair.refresh_token))
  const fieldValue = fc.oneof(token, fc.integer(), fc.constant(null), fc.array(token, { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 8 }), token, { maxKeys: 3 }))
  const body = fc.oneof(
    fc.record({ refresh_token: fieldValue }, { requiredKeys: [] }),
    fc.record({ token: fieldValue, refresh: fieldValue }, { requiredKeys: [] }),
    fc.record({ sub: fc.oneof(fc.string({ maxLength: 300 }), fc.integer()), claims: fc.jsonValue({ maxDepth: 4 }), aud: fieldValue }, { requiredKeys: [] }),
    fc.jsonValue({ maxDepth: 3 })
  ).map((value) => JSON.stringify(value))
  const parameter = fc.constantFrom('grant_type', 'refresh_token', 'token', 'token_type_hint', 'client_id', 'scope', '__proto__', 'constructor')
  const formValue = fc.oneof(token, fc.constantFrom('refresh_token', 'password', 'access_token', ''), fc.string({ maxLength: 20 }))
  const form = fc.array(fc.tuple(parameter, formValue), { maxLength: 5 }).map((pairs) => new URLSearchParams(pairs).toString())
  const rawBody = fc.oneof(body, form, fc.string({ maxLength: 200 }), fc.constant(''), fc.constant('{"__proto__":{"a":1}}'), fc.constant('{"a":1,"a":2}'), fc.constant('a=%zz&b=%&=&&'))
  const contentType = fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'application/JSON', undefined)
  const authorization = fc.oneof(fc.constant(undefined), fc.constant(`Bearer ${API_KEY}`), fc.string({ maxLength: 100 }).map((text) => `Bearer ${text}`), fc.string({ maxLength: 60 }),
    fc.constant(`Bearer ${pair.access_token}`), mutated(pair.access_token).map((text) => `Bearer ${text}`),
    fc.string({ maxLength: 60 }).map((text) => `Basic ${Buffer.from(text).toString('base64')}`), fc.string({ maxLength: 60 }).map((text) => `Basic ${text}`))
  const origin = fc.constantFrom(undefined, 'http://localhost:3000', 'http://evil.example', 'null')

  const statuses = new Map<number, number>()
  const send = async ([route, payload, type, auth, from]: [typeof ROUTES[number], string, string | undefined, string | undefined, string | undefined]): Promise<void> => {
    const [method, path] = route
    const headers: Record<string, string> = {}
    if (type !== undefined) headers['content-type'] = type
    if (auth !== undefined && /^[\t\x20-\x7e]*$/.test(auth)) headers['authorization'] = auth
    if (from !== undefined) headers['origin'] = from
    if (method === 'OPTIONS') headers['access-control-request-method'] = 'POST'
    const response = await fetch(`${base}${path}`, { method, headers, ...(method === 'POST' ? { body: payload } : {}) })
    await response.arrayBuffer()
    statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1)
    if (response.status >= 500 && response.status !== 503) throw new Error(`${method} ${path} answered ${response.status}`)
  }
  const requests = fc.tuple(fc.constantFrom(...ROUTES), rawBody, contentType, authorization, origin)

  const before = heapAfterGc()
  await fc.assert(fc.asyncProperty(requests, send), { seed: 20261127, numRuns: 800, interruptAfterTimeLimit: 25_000 })
  const middle = heapAfterGc()
  await fc.assert(fc.asyncProperty(requests, send), { seed: 20261128, numRuns: 800, interruptAfterTimeLimit: 25_000 })
  const after = heapAfterGc()

  t.notOk([...statuses.keys()].some((status) => status >= 500 && status !== 503), `statuses seen: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok(statuses.size >= 6, 'the generator reaches many kinds of answer')
  t.equal((await fetch(`${base}/health/live`)).status, 200, 'the server is alive')
  // The heap after a full collection, not RSS: RSS also holds garbage not yet collected (a 40 MB
  // bound on RSS once failed in CI with nothing leaking).
  const growthMb = (after - middle) / 1e6
  t.ok(growthMb < 5, `the heap after GC grew ${growthMb.toFixed(1)} MB over the second 800 requests (first batch: ${((middle - before) / 1e6).toFixed(1)} MB)`)
})
