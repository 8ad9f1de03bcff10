import { test } from 'tap'
import { build, decodeJwt, issue, listen, LogCapture, refreshWith, introspectToken, type Pair } from '../support/app.js'
import { refreshAtOnce } from '../support/traffic.js'

test('refresh rotates the pair, keeping sid, auth_time and custom claims', async (t) => {
  const app = await build(t)
  const first = await issue(app, { sub: 'alice', claims: { role: 'admin', org: 7 } })
  const response = await refreshWith(app, first.refresh_token)
  t.equal(response.statusCode, 200)
  const second = response.json<Pair>()
  const before = decodeJwt(first.refresh_token).payload
  const after = decodeJwt(second.refresh_token).payload
  const access = decodeJwt(second.access_token).payload
  t.not(after['jti'], before['jti'], 'a new refresh jti')
  t.equal(after['sid'], before['sid'], 'the same session')
  t.equal(after['auth_time'], before['auth_time'])
  t.equal(access['role'], 'admin', 'custom claims copied into the rotated access token')
  t.equal(access['org'], 7)
  t.equal(access['token_type'], 'access')
  t.equal(second.token_type, 'Bearer')
})

test('a rotated refresh token presented after the grace window is reuse and revokes the session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const first = await issue(app)
  const second = (await refreshWith(app, first.refresh_token)).json<Pair>()
  const replay = await refreshWith(app, first.refresh_token)
  t.equal(replay.statusCode, 401)
  t.equal(replay.json().code, 'token_reused')
  const descendant = await refreshWith(app, second.refresh_token)
  t.equal(descendant.json().code, 'token_revoked', 'the pair issued by the first rotation stops working too')
  t.same(await introspectToken(app, second.access_token), { active: false })
})

for (const store of ['redis', 'memory'] as const) {
  const env = store === 'memory' ? { REDIS_URL: '' } : {}

  test(`${store} store: within the grace window the same token gets the same pair and nothing is revoked`, async (t) => {
    const app = await build(t, { ...env, REFRESH_REUSE_GRACE: '10s' })
    const first = await issue(app)
    const a = await refreshWith(app, first.refresh_token)
    const b = await refreshWith(app, first.refresh_token)
    t.equal(a.statusCode, 200)
    t.equal(b.statusCode, 200)
    t.equal(b.json<Pair>().refresh_token, a.json<Pair>().refresh_token, 'the same refresh token: one live successor')
    t.equal(b.json<Pair>().access_token, a.json<Pair>().access_token, 'EdDSA is deterministic: the same access token too')
    const next = await refreshWith(app, a.json<Pair>().refresh_token)
    t.equal(next.statusCode, 200, 'the session was not revoked')
  })

  test(`${store} store: only the immediately previous token gets the window`, async (t) => {
    const app = await build(t, { ...env, REFRESH_REUSE_GRACE: '10s' })
    const first = await issue(app)
    const second = (await refreshWith(app, first.refresh_token)).json<Pair>()
    const third = (await refreshWith(app, second.refresh_token)).json<Pair>()
    const replay = await refreshWith(app, first.refresh_token)
    t.equal(replay.json().code, 'token_reused', 'two generations back is reuse even within the window')
    t.equal((await refreshWith(app, third.refresh_token)).json().code, 'token_revoked')
  })

  test(`${store} store: REUSE_DETECTION=log refuses the replay but revokes nothing, and logs it`, async (t) => {
    const logs = new LogCapture()
    const app = await build(t, { ...env, REFRESH_REUSE_GRACE: '0', REUSE_DETECTION: 'log' }, logs)
    const first = await issue(app)
    const second = (await refreshWith(app, first.refresh_token)).json<Pair>()
    const replay = await refreshWith(app, first.refresh_token)
    t.equal(replay.statusCode, 401)
    t.equal(replay.json().code, 'token_reused')
    t.equal((await refreshWith(app, second.refresh_token)).statusCode, 200, 'the session lives on')
    const warning = logs.lines.find((line) => line['event'] === 'token.reuse')
    t.equal(warning?.['level'], 40, 'logged at warn level')
    t.equal(warning?.['sid'], decodeJwt(first.refresh_token).payload['sid'])
    t.equal(warning?.['enforced'], false)
  })

  test(`${store} store: REFRESH_REUSE_GRACE=0 leaves no window, even for an immediate retry`, async (t) => {
    const app = await build(t, { ...env, REFRESH_REUSE_GRACE: '0' })
    const first = await issue(app)
    const [a, b] = await Promise.all([refreshWith(app, first.refresh_token), refreshWith(app, first.refresh_token)])
    t.same([a.statusCode, b.statusCode].sort(), [200, 401])
  })
}

test('50 concurrent refreshes of one token over real sockets, window off: exactly one succeeds', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)
  const pair = await issue(app)
  const statuses = await refreshAtOnce(base, pair.refresh_token, 50)
  t.equal(statuses.filter((status) => status === 200).length, 1)
  t.equal(statuses.filter((status) => status === 401).length, 49)
})

test('50 concurrent refreshes of one token over real sockets, window on: one session, one successor', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '10s' })
  const base = await listen(app)
  const pair = await issue(app)
  const responses = await Promise.all(Array.from({ length: 50 }, async () => fetch(`${base}/v1/tokens/refresh`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token })
  })))
  t.ok(responses.every((response) => response.status === 200))
  const tokens = new Set(await Promise.all(responses.map(async (response) => (await response.json() as Pair).refresh_token)))
  t.equal(tokens.size, 1, 'every tab got the same refresh token')
  const [successor] = [...tokens]
  t.equal((await refreshWith(app, successor ?? '')).statusCode, 200)
})

test('ROTATE_REFRESH_TOKENS=false returns a new access token and the same refresh token', async (t) => {
  const app = await build(t, { ROTATE_REFRESH_TOKENS: 'false' })
  const pair = await issue(app)
  const a = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  const b = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  t.equal(a.refresh_token, pair.refresh_token)
  t.equal(b.refresh_token, pair.refresh_token)
  t.not(a.access_token, pair.access_token)
  t.not(decodeJwt(a.access_token).payload['jti'], decodeJwt(b.access_token).payload['jti'])
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
  t.equal((await refreshWith(app, pair.refresh_token)).json().code, 'token_revoked')
})

test('with the denylist off, refresh still rotates and old tokens stay valid until they expire', async (t) => {
  const app = await build(t, { DENYLIST_ENABLED: 'false', ROTATE_REFRESH_TOKENS: 'true' })
  const pair = await issue(app)
  const a = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  t.not(a.refresh_token, pair.refresh_token)
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
  t.equal((await refreshWith(app, a.refresh_token)).statusCode, 200)
})

test('SESSION_MAX_TTL caps every rotated token at the session limit', async (t) => {
  const app = await build(t, { SESSION_MAX_TTL: '2s', REFRESH_TOKEN_TTL: '1h', ACCESS_TOKEN_TTL: '1h' })
  const pair = await issue(app)
  const issuedPayload = decodeJwt(pair.refresh_token).payload
  t.equal(issuedPayload['exp'], (issuedPayload['auth_time'] as number) + 2)
  t.ok(pair.refresh_expires_in <= 2)
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  t.equal(decodeJwt(rotated.refresh_token).payload['exp'], (issuedPayload['auth_time'] as number) + 2)
  t.equal(decodeJwt(rotated.access_token).payload['exp'], (issuedPayload['auth_time'] as number) + 2)
  await new Promise((resolve) => setTimeout(resolve, 3100))
  const late = await refreshWith(app, rotated.refresh_token)
  t.equal(late.statusCode, 401)
  t.equal(late.json().code, 'token_expired')
})

test('refresh refuses what is not a live refresh token of this service', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const cases: Array<[string, string]> = [
    [pair.access_token, 'token_invalid'],
    ['not-a-jwt', 'token_invalid'],
    [`${pair.refresh_token}x`, 'token_invalid'],
    ['a'.repeat(9000), 'token_invalid']
  ]
  for (const [token, code] of cases) {
    const response = await refreshWith(app, token)
    t.equal(response.statusCode, 401)
    t.equal(response.json().code, code)
  }
  for (const payload of [{}, { refresh_token: 1 }, { refresh_token: '' }, { refresh_token: pair.refresh_token, extra: 1 }, { refresh: pair.refresh_token }]) {
    const response = await app.inject({ method: 'POST', url: '/v1/tokens/refresh', payload })
    t.equal(response.statusCode, 400, JSON.stringify(payload))
    t.equal(response.json().code, 'invalid_request')
  }
})
