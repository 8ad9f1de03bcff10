import { test, type Test } from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { nameOfSecret } from '../../plugins/api-keys.js'
import { API_KEY, build, decodeJwt, LogCapture, refreshWith, testConfig, type Pair } from '../support/app.js'
import { until } from '../support/wait.js'

const GATEWAY_SECRET = 'gateway-secret-0123456789'
const NAMED = { API_KEYS: `${API_KEY},gateway:${GATEWAY_SECRET}` }

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

async function issueAs (app: FastifyInstance, authorization: string, body: Record<string, unknown> = { sub: 'alice' }): Promise<import('light-my-request').Response> {
  return app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization }, payload: body })
}

test('the tokens a named key issues name it: client_id in the refresh token, kept through rotations; not in the access token by default', async (t) => {
  const app = await build(t, NAMED)
  const pair = (await issueAs(app, `Bearer ${GATEWAY_SECRET}`)).json<Pair>()
  t.equal(decodeJwt(pair.refresh_token).payload['client_id'], 'gateway')
  t.notOk('client_id' in decodeJwt(pair.access_token).payload, 'an access token as SimpleJWT and Rotor 0.2 shape it')
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  t.equal(decodeJwt(rotated.refresh_token).payload['client_id'], 'gateway', 'the rotated refresh token keeps it')
  const bare = (await issueAs(app, `Bearer ${API_KEY}`)).json<Pair>()
  t.equal(decodeJwt(bare.refresh_token).payload['client_id'], nameOfSecret(API_KEY), 'a bare key by its digest name')
})

test('ACCESS_TOKEN_PROFILE=rfc9068: access tokens carry client_id and aud, through rotations', async (t) => {
  const app = await build(t, { ...NAMED, ACCESS_TOKEN_PROFILE: 'rfc9068', JWT_AUDIENCE: 'https://api.example' })
  const pair = (await issueAs(app, `Bearer ${GATEWAY_SECRET}`)).json<Pair>()
  const access = decodeJwt(pair.access_token)
  t.match(access.payload, { client_id: 'gateway', aud: 'https://api.example' })
  t.equal(access.header['typ'], 'at+jwt')
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  t.match(decodeJwt(rotated.access_token).payload, { client_id: 'gateway', aud: 'https://api.example' })
})

test('claims may not set client_id: it is the issuing key\'s', async (t) => {
  const app = await build(t, NAMED)
  const response = await issueAs(app, `Bearer ${GATEWAY_SECRET}`, { sub: 'alice', claims: { client_id: 'someone-else' } })
  t.equal(response.statusCode, 400)
  t.match(response.json(), { code: 'invalid_request', message: /reserved claim "client_id"/ })
})

test('log lines name the calling key, never its secret', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, NAMED, logs)
  await issueAs(app, `Bearer ${GATEWAY_SECRET}`)
  await issueAs(app, `Bearer ${API_KEY}`)
  const clients = logs.lines.filter((line) => line['event'] === 'token.issued').map((line) => line['client'])
  t.strictSame(clients, ['gateway', nameOfSecret(API_KEY)])
  t.notOk(logs.text.includes(GATEWAY_SECRET), 'the secret is not in the log')
  t.notOk(logs.text.includes(API_KEY), 'nor the bare one')
})

test('HTTP Basic with the key\'s name and secret authenticates a backend route; anything else is 401 invalid_client', async (t) => {
  const app = await build(t, { API_KEYS: `${API_KEY},gateway:${GATEWAY_SECRET},gate~way:tilde-secret-0123456789,odd:pct%zz-secret-0123456789` })
  t.equal((await issueAs(app, basic('gateway', GATEWAY_SECRET))).statusCode, 200, 'name and secret')
  t.equal((await issueAs(app, basic('gate%7Eway', 'tilde%2Dsecret%2D0123456789'))).statusCode, 200, 'each form-encoded first (RFC 6749 §2.3.1)')
  t.equal((await issueAs(app, basic('odd', 'pct%zz-secret-0123456789'))).statusCode, 200, 'a value that does not form-decode is taken as it is')
  t.equal((await issueAs(app, basic(nameOfSecret(API_KEY), API_KEY).replace(/^Basic/, 'basic'))).statusCode, 200, 'a bare key by its digest name; the scheme in any case')
  const refused: Array<[string, string]> = [
    ['another key\'s name', basic(nameOfSecret(API_KEY), GATEWAY_SECRET)],
    ['a wrong secret', basic('gateway', 'wrong-secret-0123456789')],
    ['no colon', `Basic ${Buffer.from(`gateway${GATEWAY_SECRET}`).toString('base64')}`],
    ['not base64', 'Basic !!!'],
    ['empty', 'Basic '],
    ['the secret as a Basic user', basic(GATEWAY_SECRET, '')]
  ]
  for (const [label, authorization] of refused) {
    const response = await issueAs(app, authorization)
    t.equal(response.statusCode, 401, label)
    t.equal(response.json().code, 'invalid_client', label)
  }
})

test('/metrics counts each key\'s requests by its name, route and status', async (t) => {
  const app = await build(t, NAMED)
  await issueAs(app, `Bearer ${GATEWAY_SECRET}`)
  await issueAs(app, `Bearer ${GATEWAY_SECRET}`, { sub: '' })
  await issueAs(app, `Bearer ${API_KEY}`)
  await issueAs(app, 'Bearer wrong-key-0123456789abcdef')
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(text, /^rotor_backend_requests_total\{client="gateway",route="\/v1\/tokens",status_code="200"\} 1$/m)
  t.match(text, /^rotor_backend_requests_total\{client="gateway",route="\/v1\/tokens",status_code="400"\} 1$/m)
  t.match(text, new RegExp(`^rotor_backend_requests_total\\{client="${nameOfSecret(API_KEY)}",route="/v1/tokens",status_code="200"\\} 1$`, 'm'))
  t.equal(text.match(/^rotor_backend_requests_total\{/gm)?.length, 3, 'a request with no valid key is no one\'s')
  t.notOk(text.includes(GATEWAY_SECRET))
})

const SCOPED = {
  API_KEYS: [
    `${API_KEY}`,
    'issuer:issuer-secret-0123456789:issue',
    'reader:reader-secret-0123456789:introspect',
    'support:support-secret-0123456789:revoke+sessions'
  ].join(',')
}

const ROUTES = ['issue', 'introspect', 'oauth-introspect', 'revoke', 'list-sessions', 'end-session'] as const

async function call (app: FastifyInstance, route: typeof ROUTES[number], secret: string): Promise<import('light-my-request').Response> {
  const authorization = `Bearer ${secret}`
  switch (route) {
    case 'list-sessions': return app.inject({ method: 'GET', url: '/v1/subjects/alice/sessions', headers: { authorization } })
    case 'end-session': {
      // A session of alice's to end: each allowed call ends one (an unknown sid would be a 404).
      const { sid } = (await app.inject({ method: 'GET', url: '/v1/subjects/alice/sessions', headers: { authorization: `Bearer ${API_KEY}` } })).json<{ sessions: Array<{ sid: string }> }>().sessions[0] ?? { sid: 'none' }
      return app.inject({ method: 'DELETE', url: `/v1/subjects/alice/sessions/${sid}`, headers: { authorization } })
    }
    case 'issue': return app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization }, payload: { sub: 'alice' } })
    case 'introspect': return app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization }, payload: { token: 'x' } })
    case 'oauth-introspect': return app.inject({ method: 'POST', url: '/oauth2/introspect', headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' }, payload: 'token=x' })
    case 'revoke': return app.inject({ method: 'POST', url: '/v1/subjects/alice/revoke', headers: { authorization } })
  }
}

test('a key does what its scopes allow, and gets 403 insufficient_scope for the rest; no scopes is every scope', async (t) => {
  const app = await build(t, SCOPED)
  const allowed: Record<string, Array<Parameters<typeof call>[1]>> = {
    [API_KEY]: [...ROUTES],
    'issuer-secret-0123456789': ['issue'],
    'reader-secret-0123456789': ['introspect', 'oauth-introspect'],
    'support-secret-0123456789': ['revoke', 'list-sessions', 'end-session']
  }
  for (const [secret, routes] of Object.entries(allowed)) {
    for (const route of ROUTES) {
      // Sessions to list and end: issued after any "log out everywhere" a revoke before made.
      await new Promise((resolve) => setTimeout(resolve, 2))
      await call(app, 'issue', API_KEY)
      const response = await call(app, route, secret)
      const label = `${secret.slice(0, 7)} on ${route}`
      if (routes.includes(route)) {
        t.equal(response.statusCode, 200, `${label}: allowed`)
      } else {
        t.equal(response.statusCode, 403, `${label}: refused`)
        const body = response.json<Record<string, unknown>>()
        if (route === 'oauth-introspect') {
          t.equal(body['error'], 'insufficient_scope', `${label}: RFC 6750's code in RFC 6749's shape`)
        } else {
          t.match(body, { statusCode: 403, code: 'insufficient_scope', error: 'Forbidden', message: /needs the (issue|introspect|revoke|sessions) scope/ }, `${label}: the envelope`)
        }
        t.match(response.headers['www-authenticate'], /^Bearer error="insufficient_scope", scope="(issue|introspect|revoke|sessions)"$/, `${label}: the scope it needs`)
      }
    }
  }
})

test('a refusal for want of scope is counted per key and logged with the key\'s name, before the body is read', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, SCOPED, logs)
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: 'Bearer reader-secret-0123456789', 'content-type': 'text/plain' }, payload: 'not even JSON' })
  t.equal(response.statusCode, 403, 'the scope is checked before the body (a 415 would say the body was looked at)')
  await call(app, 'revoke', 'support-secret-0123456789')
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.match(text, /^rotor_backend_requests_total\{client="reader",route="\/v1\/tokens",status_code="403"\} 1$/m)
  const refused = logs.lines.find((line) => line['msg'] === 'request refused' && line['code'] === 'insufficient_scope')
  t.equal(refused?.['client'], 'reader', 'the refusal names the key')
  const revoked = logs.lines.find((line) => line['event'] === 'subject.revoked')
  t.equal(revoked?.['client'], 'support', 'and every line of a backend action does')
})

/** A keys file of these entries in a fresh directory; its path. */
function apiKeysFile (t: Test, entries: unknown): string {
  const path = join(t.testdir(), 'api-keys.json')
  writeFileSync(path, typeof entries === 'string' ? entries : JSON.stringify(entries))
  return path
}

test('API_KEYS_FILE: a removed key stops working within 2 s, with no restart; a broken file keeps the current keys', async (t) => {
  const path = apiKeysFile(t, [`gateway:${GATEWAY_SECRET}`, 'reader:reader-secret-0123456789:introspect'])
  const logs = new LogCapture()
  const app = await build(t, { API_KEYS: '', API_KEYS_FILE: path }, logs)
  t.equal((await call(app, 'issue', GATEWAY_SECRET)).statusCode, 200)
  t.equal((await call(app, 'introspect', 'reader-secret-0123456789')).statusCode, 200)

  writeFileSync(path, JSON.stringify(['reader:reader-secret-0123456789:introspect+issue']))
  const changed = Date.now()
  await until('the removed key to stop working', async () => (await call(app, 'issue', GATEWAY_SECRET)).statusCode === 401, 2000)
  t.ok(Date.now() - changed <= 2000, 'within 2 s')
  t.equal((await call(app, 'issue', 'reader-secret-0123456789')).statusCode, 200, 'and a key\'s new scopes apply')
  t.match(logs.lines.find((line) => line['event'] === 'api_keys.reload'), { level: 30, trigger: 'file', names: ['reader'] })

  for (const broken of ['["reader:short"]', '{"keys": []}', 'not json']) {
    writeFileSync(path, broken)
    t.equal(app.apiKeys.reload('signal'), false, `${broken}: not loaded`)
    t.equal((await call(app, 'issue', 'reader-secret-0123456789')).statusCode, 200, `${broken}: the current keys go on`)
  }
  const errors = logs.lines.filter((line) => line['event'] === 'api_keys.reload' && line['level'] === 50)
  t.equal(errors.length, 3, 'each broken file said at error level')
  t.notOk(logs.text.includes('reader-secret-0123456789') || logs.text.includes(GATEWAY_SECRET), 'no secret in the log')
})

test('API_KEYS_FILE is read with the settings: a bad one stops the start, naming the entry; API_KEYS beside it is refused', async (t) => {
  t.strictSame(testConfig({ API_KEYS: '', API_KEYS_FILE: apiKeysFile(t, ['gw:gateway-secret-0123456789:issue']) }).apiKeys,
    [{ name: 'gw', secret: 'gateway-secret-0123456789', scopes: ['issue'] }])
  const cases: Array<[string, unknown, RegExp]> = [
    ['not JSON', '[', /API_KEYS_FILE=.*cannot read a JSON file/],
    ['not an array', { keys: [] }, /expected a JSON array of entries/],
    ['empty', [], /expected a JSON array of entries/],
    ['a number', [42], /expected a JSON array of entries/],
    ['a short key', ['gw:short'], /API_KEYS_FILE=.*: entry #1: a key must be at least 16 characters/]
  ]
  for (const [label, entries, expected] of cases) {
    t.throws(() => testConfig({ API_KEYS: '', API_KEYS_FILE: apiKeysFile(t, entries) }), expected, label)
  }
  t.throws(() => testConfig({ API_KEYS: '', API_KEYS_FILE: join(t.testdir(), 'absent.json') }), /absent\.json: cannot read a JSON file \(ENOENT\)/)
  t.throws(() => testConfig({ API_KEYS_FILE: apiKeysFile(t, ['gw:gateway-secret-0123456789']) }), /API_KEYS and API_KEYS_FILE: set one, not both/)
})
