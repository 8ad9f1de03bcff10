import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { API_KEY, build, decodeJwt, issue, refreshWith, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'

type Response = import('light-my-request').Response
type Form = Record<string, string>

const GATEWAY_SECRET = 'gateway-secret-0123456789'
const NAMED = { API_KEYS: `${API_KEY},gateway:${GATEWAY_SECRET}` }
const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

function basic (user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`
}

async function post (app: FastifyInstance, url: string, form: Form | string, headers: Record<string, string> = {}): Promise<Response> {
  const payload = typeof form === 'string' ? form : new URLSearchParams(form).toString()
  return app.inject({ method: 'POST', url, headers: { ...FORM, ...headers }, payload })
}

async function grant (app: FastifyInstance, refreshToken: string, headers: Record<string, string> = {}): Promise<Response> {
  return post(app, '/oauth2/token', { grant_type: 'refresh_token', refresh_token: refreshToken }, headers)
}

/** An RFC 6749 §5.2 answer: the status, the `error`, a description and nothing else. */
function oauthError (t: Test, response: Response, status: number, error: string, label = error): void {
  t.equal(response.statusCode, status, `${label}: status`)
  const body = response.json<Record<string, unknown>>()
  t.strictSame(Object.keys(body).sort(), ['error', 'error_description'], `${label}: the RFC 6749 shape`)
  t.equal(body['error'], error, label)
  t.match(body['error_description'], /^[\x20-\x21\x23-\x5b\x5d-\x7e]+$/, `${label}: a description of the characters §5.2 allows`)
}

test('discovery (RFC 8414): every URL built from the issuer, for an issuer URL only', async (t) => {
  const app = await build(t, { JWT_ISSUER: 'https://auth.example/rotor' })
  const response = await app.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })
  t.equal(response.statusCode, 200)
  t.strictSame(response.json(), {
    issuer: 'https://auth.example/rotor',
    jwks_uri: 'https://auth.example/rotor/.well-known/jwks.json',
    token_endpoint: 'https://auth.example/rotor/oauth2/token',
    revocation_endpoint: 'https://auth.example/rotor/oauth2/revoke',
    introspection_endpoint: 'https://auth.example/rotor/oauth2/introspect',
    grant_types_supported: ['refresh_token'],
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['none', 'client_secret_basic'],
    revocation_endpoint_auth_methods_supported: ['none', 'client_secret_basic'],
    introspection_endpoint_auth_methods_supported: ['client_secret_basic'],
    dpop_signing_alg_values_supported: ['ES256', 'EdDSA', 'RS256']
  })
  t.match(response.headers['cache-control'], /max-age=/)
  const inserted = await app.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server/rotor' })
  t.strictSame(inserted.json(), response.json(), 'also where RFC 8414 §3.1 puts it for an issuer with a path')

  const slash = await build(t, { JWT_ISSUER: 'http://localhost:8080/' })
  const metadata = (await slash.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })).json<Record<string, string>>()
  t.equal(metadata['issuer'], 'http://localhost:8080/', 'the issuer exactly as configured')
  t.equal(metadata['token_endpoint'], 'http://localhost:8080/oauth2/token', 'no double slash')

  const odd = await build(t, { JWT_ISSUER: 'https://auth.example/a:b*' })
  t.equal((await odd.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })).statusCode, 200, 'an issuer path the router cannot take: the plain path only')

  for (const issuer of ['rotor', 'urn:rotor', 'https://auth.example/?tenant=a', 'https://auth.example/#x']) {
    const other = await build(t, { JWT_ISSUER: issuer })
    const answer = await other.inject({ method: 'GET', url: '/.well-known/oauth-authorization-server' })
    t.equal(answer.statusCode, 404, `JWT_ISSUER=${issuer}: no metadata`)
    t.match(answer.json(), { code: 'not_found', message: /JWT_ISSUER/ })
  }
})

test('the refresh grant (RFC 6749 §6) answers §5.1, not cacheable, and rotates as /v1 does', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const pair = await issue(app)
  const response = await grant(app, pair.refresh_token, { origin: 'http://localhost:3000' })
  t.equal(response.statusCode, 200)
  const body = response.json<Pair>()
  t.strictSame(Object.keys(body).sort(), ['access_token', 'expires_in', 'refresh_expires_in', 'refresh_token', 'token_type'])
  t.equal(body.token_type, 'Bearer')
  t.ok(body.expires_in > 0 && body.expires_in <= 3600)
  t.equal(response.headers['cache-control'], 'no-store')
  t.equal(response.headers['pragma'], 'no-cache')
  t.equal(response.headers['access-control-allow-origin'], 'http://localhost:3000', 'CORS as for the browser routes')
  t.equal(decodeJwt(body.refresh_token).payload['sid'], decodeJwt(pair.refresh_token).payload['sid'], 'the same session')
  const onV1 = await refreshWith(app, body.refresh_token)
  t.equal(onV1.statusCode, 200, 'its refresh token works on /v1 too')

  const replay = await grant(app, pair.refresh_token)
  oauthError(t, replay, 400, 'invalid_grant', 'a reused refresh token')
  t.match(replay.json<Record<string, string>>()['error_description'], /already used/)
  t.equal((await refreshWith(app, onV1.json<Pair>().refresh_token)).json().code, 'token_revoked', 'and the reuse revoked the session')
})

test('the refresh grant inside the grace window answers the same pair, as /v1 does', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const first = (await grant(app, pair.refresh_token)).json<Pair>()
  const again = await grant(app, pair.refresh_token)
  t.equal(again.statusCode, 200)
  t.equal(again.json<Pair>().refresh_token, first.refresh_token)
})

test('the refresh grant: client_id and scope are accepted and change nothing; a form with a charset works', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await post(app, '/oauth2/token', { grant_type: 'refresh_token', refresh_token: pair.refresh_token, client_id: 'my-spa', scope: 'openid' },
    { 'content-type': 'application/x-www-form-urlencoded; charset=UTF-8' })
  t.equal(response.statusCode, 200)
})

test('the refresh grant refuses with RFC 6749 errors, never a 5xx', async (t) => {
  const app = await build(t, NAMED)
  const pair = await issue(app)
  oauthError(t, await post(app, '/oauth2/token', { refresh_token: pair.refresh_token }), 400, 'invalid_request', 'no grant_type')
  oauthError(t, await post(app, '/oauth2/token', { grant_type: 'password', username: 'a', password: 'b' }), 400, 'unsupported_grant_type')
  oauthError(t, await post(app, '/oauth2/token', { grant_type: 'authorization_code', code: 'x' }), 400, 'unsupported_grant_type', 'authorization_code')
  oauthError(t, await post(app, '/oauth2/token', { grant_type: 'refresh_token' }), 400, 'invalid_request', 'no refresh_token')
  oauthError(t, await post(app, '/oauth2/token', `grant_type=refresh_token&refresh_token=${pair.refresh_token}&refresh_token=x`), 400, 'invalid_request', 'a parameter given twice')
  oauthError(t, await grant(app, 'not-a-token'), 400, 'invalid_grant', 'a malformed token')
  oauthError(t, await grant(app, pair.access_token), 400, 'invalid_grant', 'an access token')
  const json = await app.inject({ method: 'POST', url: '/oauth2/token', payload: { grant_type: 'refresh_token', refresh_token: pair.refresh_token } })
  oauthError(t, json, 415, 'invalid_request', 'a JSON body')
  oauthError(t, await post(app, '/oauth2/token', `grant_type=refresh_token&pad=${'x'.repeat(20_000)}`), 413, 'invalid_request', 'an oversized body')
  const proto = await post(app, '/oauth2/token', `__proto__=x&constructor=y&grant_type=refresh_token&refresh_token=${pair.refresh_token}`)
  t.equal(proto.statusCode, 200, '__proto__ is a parameter like any other')
  oauthError(t, await grant(app, pair.refresh_token, { authorization: basic('gateway', 'wrong-secret-0123456789') }), 401, 'invalid_client', 'a client that authenticates wrongly')
})

test('a client that authenticates on the token endpoint must be a known key; its answer carries a Basic challenge', async (t) => {
  const app = await build(t, NAMED)
  const refused = await grant(app, (await issue(app)).refresh_token, { authorization: basic('gateway', 'wrong-secret-0123456789') })
  t.equal(refused.headers['www-authenticate'], 'Basic realm="rotor"')
  const own = (await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: basic('gateway', GATEWAY_SECRET) }, payload: { sub: 'alice' } })).json<Pair>()
  const accepted = await grant(app, own.refresh_token, { authorization: basic('gateway', GATEWAY_SECRET) })
  t.equal(accepted.statusCode, 200, 'a gateway refreshing a token it issued, with its key')
  const foreign = await issue(app)
  const refused2 = await grant(app, foreign.refresh_token, { authorization: basic('gateway', GATEWAY_SECRET) })
  oauthError(t, refused2, 400, 'invalid_grant', 'a token issued to another client (RFC 6749 §6)')
  t.equal((await grant(app, foreign.refresh_token)).statusCode, 200, 'which its session survives: a public client still refreshes it')
})

test('with Redis down the refresh grant answers 503 temporarily_unavailable with Retry-After, and the token still works after', async (t) => {
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always'])
  const app = await build(t, { REDIS_URL: redis.url })
  const pair = await issue(app)
  await redis.crash()
  const response = await grant(app, pair.refresh_token)
  oauthError(t, response, 503, 'temporarily_unavailable')
  t.equal(response.headers['retry-after'], '2')
  await redis.start()
  let answer = await grant(app, pair.refresh_token)
  for (let i = 0; i < 50 && answer.statusCode === 503; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    answer = await grant(app, pair.refresh_token)
  }
  t.equal(answer.statusCode, 200, 'the outage logged no one out')
})

test('over the rate limit the OAuth routes answer 429 in their shape, with Retry-After', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1' })
  await grant(app, 'x')
  const limited = await grant(app, 'x')
  oauthError(t, limited, 429, 'temporarily_unavailable', 'rate limited')
  t.ok(Number(limited.headers['retry-after']) >= 1)
})

test('revocation (RFC 7009): 200 with no body; a refresh token ends its session, whatever the hint', async (t) => {
  const app = await build(t)
  for (const hint of [undefined, 'refresh_token', 'access_token', 'something_else']) {
    const pair = await issue(app)
    const response = await post(app, '/oauth2/revoke', { token: pair.refresh_token, ...(hint === undefined ? {} : { token_type_hint: hint }) })
    t.equal(response.statusCode, 200, `hint ${String(hint)}`)
    t.equal(response.body, '', 'no body')
    t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_revoked', `hint ${String(hint)}: the session is over`)
  }
  const pair = await issue(app)
  t.equal((await post(app, '/oauth2/revoke', { token: pair.access_token, token_type_hint: 'refresh_token' })).statusCode, 200)
  t.equal((await app.inject({ method: 'POST', url: '/v1/tokens/introspect', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token: pair.access_token } })).json().active, false,
    'an access token is revoked itself')
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200, 'and its session goes on')
  for (const token of ['not-a-token', pair.access_token.slice(0, -2)]) {
    const response = await post(app, '/oauth2/revoke', { token })
    t.equal(response.statusCode, 200, 'an invalid token: 200, nothing to do')
  }
  oauthError(t, await post(app, '/oauth2/revoke', { token_type_hint: 'refresh_token' }), 400, 'invalid_request', 'no token')
})

test('revocation with the denylist off is 400 unsupported_token_type (RFC 7009 §2.2.1)', async (t) => {
  const app = await build(t, { DENYLIST_ENABLED: 'false' })
  oauthError(t, await post(app, '/oauth2/revoke', { token: (await issue(app)).refresh_token }), 400, 'unsupported_token_type')
})

test('introspection (RFC 7662): HTTP Basic or a bearer API key; the RFC members and Rotor\'s claims', async (t) => {
  const app = await build(t, NAMED)
  const issued = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: basic('gateway', GATEWAY_SECRET) }, payload: { sub: 'alice', claims: { scope: 'read write', plan: 'pro' } } })
  const pair = issued.json<Pair>()
  const access = await post(app, '/oauth2/introspect', { token: pair.access_token, token_type_hint: 'access_token' }, { authorization: basic('gateway', GATEWAY_SECRET) })
  t.equal(access.statusCode, 200)
  const claims = decodeJwt(pair.access_token).payload
  t.strictSame(access.json(), { ...claims, active: true, token_type: 'Bearer' }, 'every claim, token_type as RFC 6749 names it')
  t.match(access.json(), { scope: 'read write', iss: 'rotor', sub: 'alice', plan: 'pro' })

  const refresh = await post(app, '/oauth2/introspect', { token: pair.refresh_token }, { authorization: `Bearer ${API_KEY}` })
  t.match(refresh.json(), { active: true, token_type: 'refresh_token', client_id: 'gateway', sub: 'alice' }, 'a refresh token names the key that issued it')

  for (const token of ['not-a-token', pair.access_token.slice(0, -2)]) {
    t.strictSame((await post(app, '/oauth2/introspect', { token }, { authorization: `Bearer ${API_KEY}` })).json(), { active: false })
  }
  await post(app, '/oauth2/revoke', { token: pair.refresh_token })
  t.strictSame((await post(app, '/oauth2/introspect', { token: pair.refresh_token }, { authorization: `Bearer ${API_KEY}` })).json(), { active: false }, 'a revoked one: inactive')
})

test('introspection without valid client credentials is 401 invalid_client with a Basic challenge', async (t) => {
  const app = await build(t, NAMED)
  const token = (await issue(app)).access_token
  for (const [label, headers] of [
    ['no credentials', {}],
    ['a wrong secret', { authorization: basic('gateway', 'wrong-secret-0123456789') }],
    ['a right secret under another name', { authorization: basic('other', GATEWAY_SECRET) }],
    ['a wrong bearer key', { authorization: 'Bearer wrong-key-0123456789abcdef' }]
  ] as Array<[string, Record<string, string>]>) {
    const response = await post(app, '/oauth2/introspect', { token }, headers)
    oauthError(t, response, 401, 'invalid_client', label)
    t.equal(response.headers['www-authenticate'], 'Basic realm="rotor"', `${label}: challenge`)
  }
  oauthError(t, await post(app, '/oauth2/introspect', {}, { authorization: basic('gateway', GATEWAY_SECRET) }), 400, 'invalid_request', 'no token')
})
