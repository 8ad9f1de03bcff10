import { test } from 'tap'
import { spawn } from 'node:child_process'
import { createServer } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { join } from 'node:path'
import { exportJWK, generateKeyPair, SignJWT, type JWTPayload } from 'jose'
import { createVerifier, startServer, type RunningServer } from '../../examples/verify-backend/server.js'
import { createJwtCallback, decide, expiryOf, sessionCallback, type RotorJWT, type RotorRefreshOptions } from '../../examples/nextjs-auth/auth.js'
import { createRotorClient, memoryStorage } from '@rotor/client'
import { build, decodeJwt, issue, listen, refreshWith, type Pair } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { freePort } from '../support/net.js'
import type { Test } from '../support/tap.js'
import { ROOT } from '../support/paths.js'

/** The verify-backend example in front of the Rotor at `rotorUrl`, closed in teardown. */
async function verifyBackend (t: Test, rotorUrl: string, options: Parameters<typeof createVerifier>[1] = {}): Promise<RunningServer> {
  const running = await startServer({ verify: createVerifier(`${rotorUrl}/.well-known/jwks.json`, options) })
  t.teardown(running.close)
  return running
}

async function me (backend: RunningServer, token?: string): Promise<{ status: number, body: Record<string, unknown>, headers: Headers }> {
  const response = await fetch(`${backend.url}/api/me`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } })
  return { status: response.status, body: await response.json() as Record<string, unknown>, headers: response.headers }
}

for (const algorithm of ['EdDSA', 'ES256'] as const) {
  test(`the verify-backend accepts a Rotor ${algorithm} access token and refuses its refresh token, no token, and another Rotor's token`, async (t) => {
    const app = await build(t, algorithm === 'EdDSA' ? {} : { JWT_ALGORITHM: algorithm })
    const rotorUrl = await listen(app)
    const backend = await verifyBackend(t, rotorUrl, { algorithms: [algorithm] })
    const pair = await issue(app, { sub: 'user-7', claims: { role: 'editor' } })

    const ok = await me(backend, pair.access_token)
    t.equal(ok.status, 200)
    t.equal(ok.body['sub'], 'user-7')
    t.match(ok.body['claims'], { sub: 'user-7', role: 'editor', iss: 'rotor', token_type: 'access', sid: String, jti: String })

    const jwks = await (await fetch(`${rotorUrl}/.well-known/jwks.json`)).json() as { keys: Array<{ kid: string }> }
    const refreshKid = decodeJwt(pair.refresh_token).header['kid']
    t.notOk(jwks.keys.some((key) => key.kid === refreshKid), 'the refresh token\'s kid is not in the JWKS')
    const refresh = await me(backend, pair.refresh_token)
    t.equal(refresh.status, 401)
    t.equal(refresh.body['error'], 'invalid_token')
    t.match(refresh.headers.get('www-authenticate'), /error="invalid_token"/)

    const none = await me(backend)
    t.equal(none.status, 401)
    t.equal(none.headers.get('www-authenticate'), 'Bearer realm="api"')

    const other = await build(t, algorithm === 'EdDSA' ? {} : { JWT_ALGORITHM: algorithm })
    const foreign = await issue(other, { sub: 'user-7' })
    t.equal((await me(backend, foreign.access_token)).status, 401, 'same algorithm, other keys: its kid is unknown here')
    t.equal((await me(backend, 'not.a.jwt')).status, 401)
  })
}

test('the verify-backend refuses an expired access token', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '1s' })
  const backend = await verifyBackend(t, await listen(app))
  const pair = await issue(app)
  const exp = decodeJwt(pair.access_token).payload['exp'] as number
  await sleep(Math.max(0, exp * 1000 - Date.now()) + 50)
  const expired = await me(backend, pair.access_token)
  t.equal(expired.status, 401)
  t.match(expired.body['error_description'], /exp/)
})

test('the verify-backend pins the algorithm: an EdDSA token is refused by a verifier expecting ES256, though its key is in the JWKS', async (t) => {
  const app = await build(t)
  const backend = await verifyBackend(t, await listen(app), { algorithms: ['ES256'] })
  const pair = await issue(app)
  const refused = await me(backend, pair.access_token)
  t.equal(refused.status, 401)
  t.match(refused.body['error_description'], /alg/)
})

test('the verify-backend checks the audience when it has one', async (t) => {
  const app = await build(t, { JWT_AUDIENCE: 'orders-api,billing-api' })
  const backend = await verifyBackend(t, await listen(app), { audience: 'orders-api' })
  t.equal((await me(backend, (await issue(app)).access_token)).status, 200, 'the default aud, the first of JWT_AUDIENCE')
  t.equal((await me(backend, (await issue(app, { sub: 'alice', aud: 'billing-api' })).access_token)).status, 401)
})

test('the verify-backend requires typ at+jwt, token_type access, the issuer and an iat not in the future', async (t) => {
  // A JWKS of our own, to sign what Rotor never would.
  const { publicKey, privateKey } = await generateKeyPair('EdDSA', { crv: 'Ed25519' })
  const jwk = { ...await exportJWK(publicKey), kid: 'k1', alg: 'EdDSA', use: 'sig' }
  const jwksServer = createServer((_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end(JSON.stringify({ keys: [jwk] }))
  })
  await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => new Promise<void>((resolve) => jwksServer.close(() => resolve())))
  const address = jwksServer.address()
  const jwksUrl = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`
  const backend = await verifyBackend(t, jwksUrl)

  const now = Math.floor(Date.now() / 1000)
  const claims: JWTPayload = { iss: 'rotor', sub: 'u', jti: 'j'.repeat(22), sid: 's'.repeat(22), iat: now, exp: now + 60, auth_time: now, token_type: 'access' }
  const sign = async (payload: JWTPayload, header: Record<string, unknown> = {}): Promise<string> =>
    new SignJWT(payload).setProtectedHeader({ alg: 'EdDSA', kid: 'k1', typ: 'at+jwt', ...header }).sign(privateKey)

  t.equal((await me(backend, await sign(claims))).status, 200, 'a well-formed token of the published key')
  const cases: Record<string, string> = {
    'typ JWT': await sign(claims, { typ: 'JWT' }),
    'typ rt+jwt': await sign(claims, { typ: 'rt+jwt' }),
    'token_type refresh': await sign({ ...claims, token_type: 'refresh' }),
    'no token_type': await sign({ ...claims, token_type: undefined }),
    'another issuer': await sign({ ...claims, iss: 'someone-else' }),
    'iat in the future': await sign({ ...claims, iat: now + 120 }),
    'no sid': await sign({ ...claims, sid: undefined }),
    'an empty sub': await sign({ ...claims, sub: '' }),
    'a sub that is no string': await sign({ ...claims, sub: 42 as unknown as string }),
    'unknown kid': await sign(claims, { kid: 'k2' })
  }
  for (const [name, token] of Object.entries(cases)) t.equal((await me(backend, token)).status, 401, name)
})

test('the verify-backend has one route, GET /api/me', async (t) => {
  const app = await build(t)
  const backend = await verifyBackend(t, await listen(app))
  const token = (await issue(app)).access_token
  for (const [method, path] of [['GET', '/'], ['GET', '/api/me/other'], ['POST', '/api/me']] as const) {
    const response = await fetch(`${backend.url}${path}`, { method, headers: { authorization: `Bearer ${token}` } })
    t.equal(response.status, 404, `${method} ${path}`)
  }
  t.equal((await fetch(`${backend.url}/api/me?x=1`, { headers: { authorization: `Bearer ${token}` } })).status, 200, 'a query string is fine')
})

test('the verify-backend runs as a program, settings from the environment, and stops on SIGTERM', async (t) => {
  const app = await build(t, { JWT_ALGORITHM: 'ES256' })
  const rotorUrl = await listen(app)
  const port = await freePort()
  const script = join(ROOT, 'examples/verify-backend/server.ts')
  // The same loader flags as this test (TypeScript), so the example runs as its README says.
  const child = spawn(process.execPath, [...process.execArgv, script], {
    env: { ...process.env, ROTOR_JWKS_URL: `${rotorUrl}/.well-known/jwks.json`, ROTOR_ALGORITHMS: 'ES256', PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let output = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the example did not start:\n${output}`)), 60_000)
    const read = (chunk: Buffer): void => {
      output += chunk.toString()
      if (output.includes('listening on')) {
        clearTimeout(timer)
        resolve()
      }
    }
    child.stdout.on('data', read)
    child.stderr.on('data', read)
  })
  t.match(output, `verify-backend listening on http://127.0.0.1:${port}`)
  const response = await fetch(`http://127.0.0.1:${port}/api/me`, { headers: { authorization: `Bearer ${(await issue(app, { sub: 'cli' })).access_token}` } })
  t.equal(response.status, 200)
  t.match(await response.json(), { sub: 'cli' })
  child.kill('SIGTERM')
  t.equal(await exited, 0)
})

test('a front end calling the verify-backend through @rotor/client: its 401 for an expired access token makes the client refresh once and send the call again', async (t) => {
  // 2 s: the first token is past its exp 2.1 s after it was issued, and the refreshed one, whose
  // exp counts from a whole second, still has more than a second to live when it is sent.
  const app = await build(t, { ACCESS_TOKEN_TTL: '2s' })
  const rotorUrl = await listen(app)
  const backend = await verifyBackend(t, rotorUrl)
  let refreshes = 0
  const client = createRotorClient({
    baseUrl: rotorUrl,
    storage: memoryStorage(),
    fetch: async (input, init) => {
      if (String(input).endsWith('/v1/tokens/refresh')) refreshes++
      return await fetch(input, init)
    }
  })
  const pair = await issue(app, { sub: 'alice' })
  // The client is told the token lives ten minutes; the backend, which reads exp, knows better.
  await client.setTokens({ ...pair, expires_in: 600 })
  await sleep(2100)
  t.equal((await me(backend, pair.access_token)).status, 401, 'the access token has expired')
  const response = await client.fetch(`${backend.url}/api/me`)
  t.equal(response.status, 200)
  t.match(await response.json(), { sub: 'alice' })
  t.equal(refreshes, 1, 'one refresh, on WWW-Authenticate: Bearer error="invalid_token"')
})

test('the verify-backend answers 503, not 401, when the JWKS cannot be fetched', async (t) => {
  const backend = await verifyBackend(t, `http://127.0.0.1:${await freePort()}`, { timeoutMs: 1000 })
  const app = await build(t)
  const response = await me(backend, (await issue(app)).access_token)
  t.equal(response.status, 503)
  t.equal(response.headers.get('retry-after'), '2')
})

/** The Auth.js jwt callback, counting its calls to Rotor. */
function callback (rotorUrl: string, options: Omit<RotorRefreshOptions, 'rotorUrl' | 'fetch'> = {}): { jwt: ReturnType<typeof createJwtCallback>, calls: () => number } {
  let calls = 0
  const jwt = createJwtCallback({
    rotorUrl,
    fetch: async (input, init) => {
      calls++
      return fetch(input, init)
    },
    ...options
  })
  return { jwt, calls: () => calls }
}

/** The session right after sign-in: authorize() returned the pair Rotor issued. */
async function signIn (jwt: ReturnType<typeof createJwtCallback>, pair: Pair): Promise<RotorJWT> {
  return jwt({ token: { name: 'Alice' }, user: { id: 'alice', rotor: pair }, account: { provider: 'credentials', type: 'credentials' }, trigger: 'signIn' })
}

for (const route of ['v1', 'simplejwt'] as const) {
  test(`the Auth.js callback keeps a fresh access token and refreshes it near expiry (${route} route)`, async (t) => {
    const app = await build(t, { ACCESS_TOKEN_TTL: '2m' })
    const rotorUrl = await listen(app)
    let skew = 0
    const { jwt, calls } = callback(rotorUrl, { route, now: () => Date.now() + skew })
    const pair = await issue(app, { sub: 'alice' })
    const session = await signIn(jwt, pair)
    t.match(session, { sub: 'alice', name: 'Alice', accessToken: pair.access_token, refreshToken: pair.refresh_token })
    t.ok(Math.abs((session.accessTokenExpires ?? 0) - (expiryOf(pair.access_token) ?? 0)) < 2000, 'expiry from expires_in agrees with exp')

    t.same(await jwt({ token: session }), session, 'two minutes left, the margin is one: nothing to do')
    t.equal(calls(), 0, 'Rotor is not called')

    skew = 61_000
    const refreshed = await jwt({ token: session })
    t.equal(calls(), 1)
    t.not(refreshed.accessToken, session.accessToken)
    t.not(refreshed.refreshToken, session.refreshToken, 'Rotor rotated the refresh token')
    t.equal(refreshed.error, undefined)
    t.equal(refreshed.name, 'Alice', 'the rest of the session is kept')
    t.ok((refreshed.accessTokenExpires ?? 0) > Date.now() + 100_000, 'a new expiry')
    const backend = await verifyBackend(t, rotorUrl)
    t.equal((await me(backend, refreshed.accessToken)).body['sub'], 'alice', 'the new access token verifies from the JWKS')
    t.equal(decide(refreshed, Date.now(), 60), 'keep')
  })
}

test('the Auth.js callback shares one refresh between concurrent calls for the same token', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const { jwt, calls } = callback(await listen(app), { refreshMarginSeconds: 7200 })
  const session = await signIn(jwt, await issue(app))
  const [one, two, three] = await Promise.all([jwt({ token: session }), jwt({ token: session }), jwt({ token: session })])
  t.equal(calls(), 1)
  t.equal(one.refreshToken, two?.refreshToken)
  t.equal(one.refreshToken, three?.refreshToken)
  t.equal(one.error, undefined)
})

test('the Auth.js callback hands a cookie that comes back within reuseGraceSeconds the pair its refresh got, in this process', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const { jwt, calls } = callback(await listen(app), { refreshMarginSeconds: 7200, reuseGraceSeconds: 1.5, timeoutMs: 500 })
  const session = await signIn(jwt, await issue(app))
  const first = await jwt({ token: session })
  const late = await jwt({ token: session })
  t.equal(late.refreshToken, first.refreshToken, 'a request that was under way with the old cookie: the same new pair, and Rotor is not asked')
  t.equal(calls(), 1)
  await sleep(1600)
  const later = await jwt({ token: session })
  t.equal(later.errorCode, 'token_reused', 'after the grace, the old cookie is presented to Rotor, which sees a reuse')
  t.equal(calls(), 2)
})

for (const route of ['v1', 'simplejwt'] as const) {
  test(`the Auth.js callback signs the user out on token_reused and token_revoked (${route} route)`, async (t) => {
    const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
    const rotorUrl = await listen(app)
    const { jwt } = callback(rotorUrl, { route, refreshMarginSeconds: 7200 })
    const stale = await signIn(jwt, await issue(app))
    const current = await jwt({ token: stale })
    t.equal(current.error, undefined, 'the first refresh works')

    // The old cookie comes back to another Next.js process (a thief, or a lost Set-Cookie): reuse.
    const elsewhere = callback(rotorUrl, { route, refreshMarginSeconds: 7200 }).jwt
    const reused = await elsewhere({ token: stale })
    t.equal(reused.error, 'RefreshTokenError')
    t.equal(reused.errorCode, route === 'v1' ? 'token_reused' : 'token_not_valid')
    t.equal(reused.accessToken, undefined, 'Rotor\'s tokens are dropped')
    t.equal(reused.refreshToken, undefined)
    t.equal(reused.name, 'Alice')
    t.equal(decide(reused, Date.now(), 60), 'signed-out')

    const revoked = await jwt({ token: current })
    t.equal(revoked.error, 'RefreshTokenError', 'reuse revoked the session: the legitimate token is refused too')
    t.equal(revoked.errorCode, route === 'v1' ? 'token_revoked' : 'token_not_valid')
  })
}

test('the Auth.js callback keeps the session on a 503 and asks again only after Retry-After', async (t) => {
  // A Redis that keeps its data across the restart: one that came back empty would (rightly) have
  // the session refused once a second had passed (STORE_LOSS), and the test would depend on timing.
  const redis = await startRedis(t, ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', t.testdir({})])
  const app = await build(t, { REDIS_URL: redis.url })
  let skew = 0
  const { jwt, calls } = callback(await listen(app), { refreshMarginSeconds: 7200, now: () => Date.now() + skew })
  const session = await signIn(jwt, await issue(app))
  await sleep(1100) // the session from an earlier second than the restart, always
  await redis.stop()

  const deferred = await jwt({ token: session })
  t.equal(calls(), 1)
  t.equal(deferred.error, undefined, 'not signed out')
  t.equal(deferred.deferredBecause, 'denylist_unavailable')
  t.equal(deferred.accessToken, session.accessToken, 'the tokens are kept')
  t.equal(deferred.refreshToken, session.refreshToken)
  t.ok((deferred.retryAt ?? 0) >= Date.now() + 1000, 'Retry-After: 2')

  t.same(await jwt({ token: deferred }), deferred, 'before Retry-After: Rotor is not asked')
  t.equal(calls(), 1)

  await redis.start()
  let token = deferred
  for (let attempt = 0; attempt < 40 && token.deferredBecause !== undefined; attempt++) {
    skew += 3000
    token = await jwt({ token })
    if (token.deferredBecause !== undefined) await sleep(250)
  }
  t.equal(token.deferredBecause, undefined, 'once Redis is back the refresh goes through')
  t.equal(token.error, undefined)
  t.not(token.refreshToken, session.refreshToken)
  t.equal(token.retryAt, undefined)
})

test('the Auth.js callback keeps the session on a 429 and waits for Retry-After', async (t) => {
  const app = await build(t, { RATE_LIMIT_MAX: '1', RATE_LIMIT_WINDOW: '1m' })
  const { jwt, calls } = callback(await listen(app), { refreshMarginSeconds: 7200 })
  const session = await signIn(jwt, await issue(app))
  const first = await jwt({ token: session })
  t.equal(first.error, undefined)
  t.equal(first.deferredBecause, undefined)
  const limited = await jwt({ token: first })
  t.equal(calls(), 2)
  t.equal(limited.deferredBecause, 'rate_limited')
  t.equal(limited.error, undefined, 'not signed out')
  t.equal(limited.refreshToken, first.refreshToken)
  t.ok((limited.retryAt ?? 0) > Date.now() + 5000, 'waits for the window')
  t.equal(decide(limited, Date.now(), 7200), 'wait')
  await jwt({ token: limited })
  t.equal(calls(), 2, 'no call before Retry-After')
})

test('the Auth.js callback keeps the session when Rotor cannot be reached', async (t) => {
  const jwt = createJwtCallback({ rotorUrl: `http://127.0.0.1:${await freePort()}/`, refreshMarginSeconds: 7200, defaultRetryAfterSeconds: 7 })
  const app = await build(t)
  const session = await signIn(jwt, await issue(app))
  const before = Date.now()
  const deferred = await jwt({ token: session })
  t.equal(deferred.deferredBecause, 'network_error')
  t.equal(deferred.refreshToken, session.refreshToken)
  t.ok((deferred.retryAt ?? 0) >= before + 7000)
  t.equal((await refreshWith(app, session.refreshToken as string)).statusCode, 200, 'the refresh token is still good')
})

/** A fetch that answers what the test says, as a proxy in front of Rotor might. */
const answer = (response: () => Response): NonNullable<RotorRefreshOptions['fetch']> => async () => response()

test('the Auth.js callback waits, and does not sign out, on an answer it cannot use', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const session = await createJwtCallback({ rotorUrl: 'http://unused' })({ token: { sub: 'kept' }, user: { rotor: pair } })
  t.equal(session.sub, 'kept', 'a user without id keeps the token\'s sub')

  const proxy = createJwtCallback({ rotorUrl: 'http://unused', refreshMarginSeconds: 7200, defaultRetryAfterSeconds: 9, fetch: answer(() => new Response('<h1>Bad Gateway</h1>', { status: 502 })) })
  const before = Date.now()
  const badGateway = await proxy({ token: session })
  t.match(badGateway, { deferredBecause: 'http_502', refreshToken: pair.refresh_token })
  t.equal(badGateway.error, undefined)
  t.ok((badGateway.retryAt ?? 0) >= before + 9000, 'no Retry-After: the default wait')

  const empty = createJwtCallback({ rotorUrl: 'http://unused', refreshMarginSeconds: 7200, fetch: answer(() => Response.json({})) })
  t.match(await empty({ token: session }), { deferredBecause: 'bad_response', refreshToken: pair.refresh_token })

  const later = Date.now() + 10 * 3600_000
  const noExp = createJwtCallback({
    rotorUrl: 'http://unused', route: 'simplejwt', now: () => later, fetch: answer(() => Response.json({ access: 'a.e30.s', refresh: 'r' }))
  })
  const noExpToken = await noExp({ token: session })
  t.match(noExpToken, { accessToken: 'a.e30.s', refreshToken: 'r' })
  t.ok(Math.abs((noExpToken.accessTokenExpires ?? 0) - later) < 1000, 'an access token without exp counts as expired')
})

test('expiryOf reads exp without verifying, and gives up on anything else', async (t) => {
  const app = await build(t)
  const { access_token: token } = await issue(app)
  t.equal(expiryOf(token), (decodeJwt(token).payload['exp'] as number) * 1000)
  t.equal(expiryOf('no-dots'), undefined)
  t.equal(expiryOf('a.e30.s'), undefined, 'no exp')
  t.equal(expiryOf('a.!!!.s'), undefined, 'no base64url')
})

test('the session callback shows the access token and the error, never the refresh token', async (t) => {
  const session = { user: { name: 'Alice' }, expires: '2030-01-01T00:00:00.000Z' }
  const live = sessionCallback({ session, token: { accessToken: 'at', refreshToken: 'rt', accessTokenExpires: 1 } })
  t.same(live, { ...session, accessToken: 'at' })
  const ended = sessionCallback({ session, token: { error: 'RefreshTokenError', errorCode: 'token_reused' } })
  t.same(ended, { ...session, error: 'RefreshTokenError' })
})
