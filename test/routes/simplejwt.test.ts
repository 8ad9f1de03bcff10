import { test } from 'tap'
import { createHmac } from 'node:crypto'
import { API_KEY, build, decodeJwt, issue, refreshWith, type Pair } from '../support/app.js'
import { DJANGO_SECRET, simpleJwtRefresh } from '../support/simplejwt.js'

const post = (url: string, payload: unknown): { method: 'POST', url: string, payload: string, headers: Record<string, string> } =>
  ({ method: 'POST', url, payload: JSON.stringify(payload), headers: { 'content-type': 'application/json' } })

test('a front end written for SimpleJWT refreshes unchanged: {refresh} → {access, refresh}', async (t) => {
  const app = await build(t)
  const pair = await issue(app, { sub: 'next-user' })
  // What an Auth.js jwt callback does when the access token is about to expire.
  let token = { accessToken: pair.access_token, refreshToken: pair.refresh_token }
  for (let round = 0; round < 3; round++) {
    const response = await app.inject(post('/api/auth/token/refresh/', { refresh: token.refreshToken }))
    t.equal(response.statusCode, 200)
    const body = response.json<{ access: string, refresh: string }>()
    t.same(Object.keys(body).sort(), ['access', 'refresh'])
    t.equal(decodeJwt(body.access).payload['sub'], 'next-user')
    token = { accessToken: body.access, refreshToken: body.refresh }
  }
  t.equal((await refreshWith(app, token.refreshToken)).statusCode, 200, 'the same session as the /v1 routes')
})

test('SimpleJWT error shapes: 401 token_not_valid and DRF field errors', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const pair = await issue(app)
  const invalid = await app.inject(post('/api/auth/token/refresh/', { refresh: 'garbage' }))
  t.equal(invalid.statusCode, 401)
  t.same(invalid.json(), { detail: 'Token is invalid or expired', code: 'token_not_valid' })
  t.same((await app.inject(post('/api/auth/token/refresh/', {}))).json(), { refresh: ['This field is required.'] })
  t.equal((await app.inject(post('/api/auth/token/refresh/', {})).then((r) => r.statusCode)), 400)
  t.same((await app.inject(post('/api/auth/token/refresh/', { refresh: '' }))).json(), { refresh: ['This field may not be blank.'] })
  t.same((await app.inject(post('/api/auth/token/refresh/', { refresh: 5 }))).json(), { refresh: ['Not a valid string.'] })
  t.same((await app.inject(post('/api/auth/token/refresh/', ['x']))).json(), { non_field_errors: ['Invalid data. Expected a dictionary.'] })
  t.equal((await app.inject(post('/api/auth/token/refresh/', { refresh: pair.refresh_token, extra: 1 }))).statusCode, 200, 'extra fields are ignored, as DRF does')
  const replay = await app.inject(post('/api/auth/token/refresh/', { refresh: pair.refresh_token }))
  t.equal(replay.statusCode, 401)
  t.same(replay.json(), { detail: 'Token is blacklisted', code: 'token_not_valid' }, 'a reused token, as SimpleJWT says it')
  t.same((await app.inject(post('/api/auth/token/verify/', {}))).json(), { token: ['This field is required.'] })
  for (const payload of ['', '{"refresh":', 'nope']) {
    const broken = await app.inject({ method: 'POST', url: '/api/auth/token/blacklist/', headers: { 'content-type': 'application/json' }, payload })
    t.equal(broken.statusCode, 400, `body ${JSON.stringify(payload)}`)
    t.same(broken.json(), { detail: 'JSON parse error' })
  }
})

test('verify answers {} for an active token of either kind, 401 otherwise', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  for (const token of [pair.access_token, pair.refresh_token]) {
    const response = await app.inject(post('/api/auth/token/verify/', { token }))
    t.equal(response.statusCode, 200)
    t.same(response.json(), {})
  }
  await app.inject(post('/v1/tokens/revoke', { token: pair.refresh_token }))
  const revoked = await app.inject(post('/api/auth/token/verify/', { token: pair.access_token }))
  t.equal(revoked.statusCode, 401)
  t.same(revoked.json(), { detail: 'Token is invalid or expired', code: 'token_not_valid' })
})

test('blacklist ends the session; an invalid or access token gets SimpleJWT\'s 401', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  t.equal((await app.inject(post('/api/auth/token/blacklist/', { refresh: pair.access_token }))).statusCode, 401, 'an access token has the wrong type')
  t.equal((await app.inject(post('/api/auth/token/blacklist/', { refresh: 'garbage' }))).statusCode, 401)
  const response = await app.inject(post('/api/auth/token/blacklist/', { refresh: pair.refresh_token }))
  t.equal(response.statusCode, 200)
  t.same(response.json(), {})
  t.same((await app.inject(post('/api/auth/token/refresh/', { refresh: pair.refresh_token }))).json(), { detail: 'Token is blacklisted', code: 'token_not_valid' })
  const again = await app.inject(post('/api/auth/token/blacklist/', { refresh: pair.refresh_token }))
  t.equal(again.statusCode, 401, 'blacklisting twice: the token is no longer valid')
})

test('blacklist with the denylist off answers 501, and the routes can be switched off', async (t) => {
  const app = await build(t, { DENYLIST_ENABLED: 'false' })
  const pair = await issue(app)
  const response = await app.inject(post('/api/auth/token/blacklist/', { refresh: pair.refresh_token }))
  t.equal(response.statusCode, 501)
  t.equal(response.json().code, 'denylist_disabled')
  const off = await build(t, { COMPAT_SIMPLEJWT: 'false' })
  t.equal((await off.inject(post('/api/auth/token/refresh/', { refresh: pair.refresh_token }))).statusCode, 404)
})

test('a SimpleJWT refresh token of the old Django service is exchanged once for a Rotor session', async (t) => {
  const app = await build(t, { LEGACY_SIMPLEJWT_SIGNING_KEY: DJANGO_SECRET })
  const legacy = simpleJwtRefresh(42)
  const response = await app.inject(post('/api/auth/token/refresh/', { refresh: legacy }))
  t.equal(response.statusCode, 200)
  const body = response.json<{ access: string, refresh: string }>()
  const access = decodeJwt(body.access)
  t.equal(access.payload['sub'], '42', 'user_id becomes sub, as a string')
  t.equal(access.header['typ'], 'at+jwt', 'a Rotor token now')
  t.equal((await app.inject(post('/api/auth/token/refresh/', { refresh: body.refresh }))).statusCode, 200, 'and it rotates as any Rotor session')
  const listed = await app.inject({ method: 'GET', url: '/v1/subjects/42/sessions', headers: { authorization: `Bearer ${API_KEY}` } })
  t.match(listed.json(), { sessions: [{ sid: access.payload['sid'], client_id: null, device: null }] }, 'listed among the user\'s sessions, issued by no API key')
  const second = await app.inject(post('/api/auth/token/refresh/', { refresh: legacy }))
  t.equal(second.statusCode, 401)
  t.equal(second.json().code, 'token_not_valid')
  const viaV1 = await refreshWith(app, legacy)
  t.equal(viaV1.json().code, 'token_revoked', 'no grace window for legacy tokens')
  const another = await refreshWith(app, simpleJwtRefresh('u-7'))
  t.equal(another.statusCode, 200, 'the /v1 route exchanges them too')
  t.equal(decodeJwt(another.json<Pair>().access_token).payload['sub'], 'u-7')
})

test('legacy tokens are refused when forged, of the wrong type, expired, or with the denylist off', async (t) => {
  const app = await build(t, { LEGACY_SIMPLEJWT_SIGNING_KEY: DJANGO_SECRET })
  t.equal((await refreshWith(app, simpleJwtRefresh(1, { secret: 'another-secret-0123456789abcdefghij' }))).json().code, 'token_invalid')
  t.equal((await refreshWith(app, simpleJwtRefresh(1, { type: 'access' }))).json().code, 'token_invalid')
  t.equal((await refreshWith(app, simpleJwtRefresh(1, { lifetime: -60 }))).json().code, 'token_expired')
  const off = await build(t, { LEGACY_SIMPLEJWT_SIGNING_KEY: DJANGO_SECRET, DENYLIST_ENABLED: 'false' })
  t.equal((await refreshWith(off, simpleJwtRefresh(1))).json().code, 'token_invalid')
  const signed = (header: string, payload: Record<string, unknown>): string => {
    const body = Buffer.from(JSON.stringify(payload)).toString('base64url')
    return `${header}.${body}.${createHmac('sha256', DJANGO_SECRET).update(`${header}.${body}`).digest('base64url')}`
  }
  const now = Math.floor(Date.now() / 1000)
  const claims = { token_type: 'refresh', exp: now + 60, iat: now, jti: 'a'.repeat(32) }
  const jsonHeader = Buffer.from('{"alg":"HS256","typ":"JWT"}').toString('base64url')
  t.equal((await refreshWith(app, signed(jsonHeader, { ...claims, user_id: { id: 1 } }))).json().code, 'token_invalid', 'a user_id that is no id')
  t.equal((await refreshWith(app, signed(jsonHeader, claims))).json().code, 'token_invalid', 'no user_id')
  t.equal((await refreshWith(app, signed(Buffer.from('"JWT"').toString('base64url'), { ...claims, user_id: 1 }))).json().code, 'token_invalid', 'a header that is no object')
  t.equal((await refreshWith(app, signed(Buffer.from('{nope').toString('base64url'), { ...claims, user_id: 1 }))).json().code, 'token_invalid', 'a header that is no JSON')
  const long = signed(jsonHeader, { ...claims, user_id: 1, padding: 'x'.repeat(8192) })
  t.equal((await refreshWith(app, long)).json().code, 'token_invalid', 'a legacy token longer than any Rotor accepts (8,192 characters) is not even decoded, let alone exchanged')
  const unset = await build(t)
  t.equal((await refreshWith(unset, simpleJwtRefresh(1))).json().code, 'token_invalid', 'without the setting a legacy token is just invalid')
})

test('the in-process store exchanges a legacy token once too', async (t) => {
  const app = await build(t, { LEGACY_SIMPLEJWT_SIGNING_KEY: DJANGO_SECRET, REDIS_URL: '' })
  const legacy = simpleJwtRefresh(9)
  t.equal((await refreshWith(app, legacy)).statusCode, 200)
  t.equal((await refreshWith(app, legacy)).json().code, 'token_revoked')
})
