import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { nameOfSecret } from '../../plugins/api-keys.js'
import { API_KEY, build, decodeJwt, LogCapture, refreshWith, type Pair } from '../support/app.js'

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
