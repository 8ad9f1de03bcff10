import { test } from 'tap'
import { API_KEY, build, decodeJwt, introspectToken, issue } from '../support/app.js'

const auth = { authorization: `Bearer ${API_KEY}` }

test('issues a pair whose tokens carry the contract claims and headers', async (t) => {
  const app = await build(t, { JWT_ISSUER: 'https://auth.example', ACCESS_TOKEN_TTL: '15m', REFRESH_TOKEN_TTL: '2d' })
  const before = Math.floor(Date.now() / 1000)
  const pair = await issue(app, { sub: 'alice', claims: { role: 'admin' } })
  t.equal(pair.token_type, 'Bearer')
  t.equal(pair.expires_in, 900)
  t.equal(pair.refresh_expires_in, 172800)
  const access = decodeJwt(pair.access_token)
  const refresh = decodeJwt(pair.refresh_token)
  t.equal(access.header['typ'], 'at+jwt')
  t.equal(access.header['alg'], 'EdDSA')
  t.equal(refresh.header['typ'], 'rt+jwt')
  t.equal(refresh.header['alg'], 'HS256')
  t.not(refresh.header['kid'], access.header['kid'], 'the refresh key has a kid of its own')
  for (const { payload } of [access, refresh]) {
    t.equal(payload['iss'], 'https://auth.example')
    t.equal(payload['sub'], 'alice')
    t.equal(payload['role'], 'admin')
    t.ok((payload['iat'] as number) >= before)
    t.match(payload['jti'], /^[\w-]{22,}$/, 'jti of 16 random bytes or more')
    t.match(payload['sid'], /^[\w-]{22,}$/)
    t.equal(payload['auth_time'], payload['iat'])
    t.notOk('aud' in payload, 'no aud unless one is configured or asked for')
  }
  t.equal(access.payload['token_type'], 'access')
  t.equal(refresh.payload['token_type'], 'refresh')
  t.equal(access.payload['sid'], refresh.payload['sid'])
  t.not(access.payload['jti'], refresh.payload['jti'])
  t.equal((access.payload['exp'] as number) - (access.payload['iat'] as number), 900)
})

test('the access key is in the JWKS and the refresh kid never is', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.equal(response.statusCode, 200)
  t.match(response.headers['cache-control'], /max-age=\d+/)
  const { keys } = response.json<{ keys: Array<Record<string, unknown>> }>()
  const kids = keys.map((key) => key['kid'])
  t.ok(kids.includes(decodeJwt(pair.access_token).header['kid']))
  t.notOk(kids.includes(decodeJwt(pair.refresh_token).header['kid']))
  for (const key of keys) {
    t.notOk('d' in key, 'no private part is published')
    t.equal(key['use'], 'sig')
  }
})

test('JWT_AUDIENCE: the first is the default aud; an aud asked for must be listed and is kept', async (t) => {
  const app = await build(t, { JWT_AUDIENCE: 'web,mobile' })
  const byDefault = await issue(app, { sub: 'a' })
  t.equal(decodeJwt(byDefault.access_token).payload['aud'], 'web')
  const asked = await issue(app, { sub: 'a', aud: ['mobile'] })
  t.same(decodeJwt(asked.refresh_token).payload['aud'], ['mobile'])
  const refused = await app.inject({ method: 'POST', url: '/v1/tokens', headers: auth, payload: { sub: 'a', aud: 'elsewhere' } })
  t.equal(refused.statusCode, 400)
  t.equal(refused.json().code, 'invalid_request')
})

test('issuing needs a valid API key', async (t) => {
  const app = await build(t)
  for (const authorization of [undefined, 'Bearer wrong-key-0123456789', `Basic ${API_KEY}`, `Bearer ${API_KEY}x`, 'Bearer ']) {
    const response = await app.inject({
      method: 'POST', url: '/v1/tokens', payload: { sub: 'a' }, headers: authorization === undefined ? {} : { authorization }
    })
    t.equal(response.statusCode, 401, String(authorization))
    t.same(Object.keys(response.json()).sort(), ['code', 'error', 'message', 'statusCode'])
    t.equal(response.json().code, 'invalid_client')
  }
})

test('issue bodies that break the schema are refused with invalid_request, nothing coerced or stripped', async (t) => {
  const app = await build(t)
  const bodies: unknown[] = [
    {},
    { sub: '' },
    { sub: 42 },
    { sub: 'a', extra: true },
    { sub: 'a', claims: 'role=admin' },
    { sub: 'a', claims: [] },
    { sub: 'a', aud: 7 },
    { sub: 'a', aud: [] },
    { sub: 'a'.repeat(256) },
    [{ sub: 'a' }],
    'a string',
    null
  ]
  for (const payload of bodies) {
    const response = await app.inject({
      method: 'POST', url: '/v1/tokens', headers: { ...auth, 'content-type': 'application/json' }, payload: JSON.stringify(payload)
    })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.equal(response.json().code, 'invalid_request')
  }
})

test('a reserved claim inside claims is refused', async (t) => {
  const app = await build(t)
  for (const name of ['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sid', 'auth_time', 'token_type']) {
    const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: auth, payload: { sub: 'a', claims: { [name]: 'x' } } })
    t.equal(response.statusCode, 400, name)
    t.equal(response.json().code, 'invalid_request')
  }
})

test('introspection reports an active token with its claims, for both token types', async (t) => {
  const app = await build(t)
  const pair = await issue(app, { sub: 'bob', claims: { tenant: 't1' } })
  const access = await introspectToken(app, pair.access_token)
  t.match(access, { active: true, sub: 'bob', token_type: 'access', tenant: 't1', iss: 'rotor' })
  t.type(access['exp'], 'number')
  t.type(access['iat'], 'number')
  t.type(access['sid'], 'string')
  t.type(access['jti'], 'string')
  const refresh = await introspectToken(app, pair.refresh_token)
  t.match(refresh, { active: true, sub: 'bob', token_type: 'refresh' })
  t.same(await introspectToken(app, 'not.a.token'), { active: false })
  t.same(await introspectToken(app, `${pair.access_token.slice(0, -4)}AAAA`), { active: false }, 'bad signature')
})

test('introspection needs a valid API key', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const response = await app.inject({ method: 'POST', url: '/v1/tokens/introspect', payload: { token: pair.access_token } })
  t.equal(response.statusCode, 401)
  t.equal(response.json().code, 'invalid_client')
})

test('issuing works with no store at all', async (t) => {
  const app = await build(t, { REDIS_URL: '' })
  const pair = await issue(app)
  t.ok(pair.access_token)
})
