import { test } from 'tap'
import * as oidc from 'openid-client'
import { calculateJwkThumbprint, exportJWK } from 'jose'
import { decodeJwt } from '../support/app.js'
import { startRedis } from '../support/redis.js'
import { ACCESS_TOKEN_TTL, GATEWAY, GATEWAY_SECRET, issueOverSocket, startRotor, type Rotor } from '../support/oauth.js'

/**
 * panva's openid-client (v6), unmodified, against a Rotor listening on a real socket: RFC 8414
 * discovery, the refresh grant, RFC 7662 introspection and RFC 7009 revocation. Only configuration
 * is passed: `algorithm: 'oauth2'` (Rotor publishes RFC 8414 metadata, not an OpenID provider's),
 * and `allowInsecureRequests`, as the issuer is plain http on the loopback.
 */

const options = { algorithm: 'oauth2' as const, execute: [oidc.allowInsecureRequests] }

/** A public client (a browser app): no secret, its client_id in the body. */
async function publicClient (rotor: Rotor): Promise<oidc.Configuration> {
  return await oidc.discovery(new URL(rotor.issuer), 'my-spa', undefined, oidc.None(), options)
}

/** A confidential client, the backend: an API key's name as client_id, its secret by HTTP Basic. */
async function gatewayClient (rotor: Rotor, secret = GATEWAY_SECRET): Promise<oidc.Configuration> {
  return await oidc.discovery(new URL(rotor.issuer), GATEWAY, undefined, oidc.ClientSecretBasic(secret), options)
}

/** What the client threw, when it threw openid-client's ResponseBodyError (an RFC 6749 §5.2 answer). */
async function refusal (promise: Promise<unknown>): Promise<{ status: number, error: string, description: string | undefined } | { thrown: unknown }> {
  try {
    await promise
  } catch (error) {
    if (!(error instanceof oidc.ResponseBodyError)) return { thrown: error }
    return { status: error.status, error: error.error, description: error.error_description }
  }
  return { thrown: 'nothing: the call succeeded' }
}

const sid = (token: string): unknown => decodeJwt(token).payload['sid']

test('openid-client discovers Rotor\'s RFC 8414 metadata and checks its issuer', async (t) => {
  const rotor = await startRotor(t)
  const config = await publicClient(rotor)
  t.match(config.serverMetadata(), {
    issuer: rotor.issuer,
    token_endpoint: `${rotor.issuer}/oauth2/token`,
    revocation_endpoint: `${rotor.issuer}/oauth2/revoke`,
    introspection_endpoint: `${rotor.issuer}/oauth2/introspect`,
    jwks_uri: `${rotor.issuer}/.well-known/jwks.json`,
    grant_types_supported: ['refresh_token']
  })
  t.equal(config.clientMetadata().client_id, 'my-spa')

  // The same server under another name: the issuer in the document no longer matches the one
  // asked for, and openid-client refuses it (RFC 8414 §3.3): it really reads and checks it.
  const aliased = rotor.issuer.replace('127.0.0.1', 'localhost')
  const mismatch = await oidc.discovery(new URL(aliased), 'my-spa', undefined, oidc.None(), options).then(() => null, (error: unknown) => error)
  t.type(mismatch, Error, 'a document for another issuer is refused')
  t.match(mismatch, { code: 'OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED' })
})

test('openid-client\'s refresh grant rotates: a new refresh token of the same session, and a sane expires_in', async (t) => {
  const rotor = await startRotor(t)
  const config = await publicClient(rotor)
  const pair = await issueOverSocket(rotor)

  const first = await oidc.refreshTokenGrant(config, pair.refresh_token)
  t.equal(first.token_type, 'bearer', 'Bearer (openid-client lower-cases it)')
  t.type(first.refresh_token, 'string')
  const rotated = first.refresh_token ?? ''
  t.not(rotated, pair.refresh_token, 'a new refresh token')
  t.equal(sid(rotated), sid(pair.refresh_token), 'of the same session')
  t.equal(sid(first.access_token), sid(pair.refresh_token), 'and an access token of that session')
  t.match(decodeJwt(first.access_token).payload, { sub: 'alice', iss: rotor.issuer })
  const expiresIn = first.expiresIn()
  t.ok(expiresIn !== undefined && expiresIn > ACCESS_TOKEN_TTL - 10 && expiresIn <= ACCESS_TOKEN_TTL, `expires_in ${String(expiresIn)} is about ACCESS_TOKEN_TTL`)
  t.type(first['refresh_expires_in'], 'number', 'Rotor\'s extra member reaches the client')

  const second = await oidc.refreshTokenGrant(config, rotated)
  t.not(second.refresh_token, rotated, 'the rotated token rotates again')
  t.equal(sid(second.refresh_token ?? ''), sid(pair.refresh_token), 'still the same session')
})

test('openid-client introspects as a confidential client (key name and secret by HTTP Basic); inactive after revocation', async (t) => {
  const rotor = await startRotor(t)
  const gateway = await gatewayClient(rotor)
  const pair = await issueOverSocket(rotor, 'bob')

  const access = await oidc.tokenIntrospection(gateway, pair.access_token)
  t.match(access, { active: true, sub: 'bob', token_type: 'Bearer', iss: rotor.issuer, sid: sid(pair.access_token) }, 'an access token')
  t.type(access.exp, 'number')
  const refresh = await oidc.tokenIntrospection(gateway, pair.refresh_token)
  t.match(refresh, { active: true, sub: 'bob', token_type: 'refresh_token', client_id: GATEWAY }, 'a refresh token, with the client that issued it')

  await oidc.tokenRevocation(gateway, pair.refresh_token, { token_type_hint: 'refresh_token' })
  t.same(await oidc.tokenIntrospection(gateway, pair.refresh_token), { active: false }, 'the revoked refresh token')
  t.same(await oidc.tokenIntrospection(gateway, pair.access_token), { active: false }, 'and its session\'s access token')
  t.same(await oidc.tokenIntrospection(gateway, 'not-a-token'), { active: false }, 'garbage')

  // A wrong secret: 401 invalid_client with a Basic challenge, which openid-client reports as such.
  const impostor = await gatewayClient(rotor, 'wrong-secret-0123456789')
  const refused: unknown = await oidc.tokenIntrospection(impostor, pair.access_token).then(() => null, (error: unknown) => error)
  t.type(refused, oidc.WWWAuthenticateChallengeError, 'a wrong secret is refused')
  t.match(refused, { status: 401, cause: [{ scheme: 'basic', parameters: { realm: 'rotor' } }] })
})

test('openid-client\'s revocation ends the session, for a public client and for the backend\'s Basic', async (t) => {
  const rotor = await startRotor(t)
  const spa = await publicClient(rotor)
  const gateway = await gatewayClient(rotor)

  for (const [label, config] of [['a public client', spa], ['the backend, by HTTP Basic', gateway]] as const) {
    const pair = await issueOverSocket(rotor)
    const current = (await oidc.refreshTokenGrant(spa, pair.refresh_token)).refresh_token ?? ''
    await oidc.tokenRevocation(config, current)
    t.match(await refusal(oidc.refreshTokenGrant(spa, current)), { status: 400, error: 'invalid_grant' }, `${label}: the current refresh token is refused`)
    t.same(await oidc.tokenIntrospection(gateway, current), { active: false }, `${label}: and inactive`)
  }

  // RFC 7009 §2.2: an invalid token is not an error.
  await oidc.tokenRevocation(spa, 'not-a-token')
  t.pass('revoking garbage answers 200')
})

test('a reuse through openid-client is detected and revokes the session (REFRESH_REUSE_GRACE=0)', async (t) => {
  const rotor = await startRotor(t, { REFRESH_REUSE_GRACE: '0' })
  const spa = await publicClient(rotor)
  const gateway = await gatewayClient(rotor)
  const pair = await issueOverSocket(rotor)
  const a = pair.refresh_token
  const rotated = await oidc.refreshTokenGrant(spa, a)
  const b = rotated.refresh_token ?? ''
  t.not(b, a, 'A rotated to B')

  const replay = await refusal(oidc.refreshTokenGrant(spa, a))
  t.match(replay, { status: 400, error: 'invalid_grant', description: /already used/ }, 'A again is refused as a reuse')
  t.match(await refusal(oidc.refreshTokenGrant(spa, b)), { status: 400, error: 'invalid_grant' }, 'and B is refused too: the session was revoked')
  t.same(await oidc.tokenIntrospection(gateway, rotated.access_token), { active: false }, 'the access token from A\'s rotation is inactive')
})

test('with Redis down, openid-client reports the 503 as an unexpected status; the answer under it is temporarily_unavailable', async (t) => {
  const redis = await startRedis(t)
  const rotor = await startRotor(t, { REDIS_URL: redis.url })
  const spa = await publicClient(rotor)
  const pair = await issueOverSocket(rotor)
  await redis.stop()
  const thrown: unknown = await oidc.refreshTokenGrant(spa, pair.refresh_token).then(() => null, (error: unknown) => error)
  // openid-client (oauth4webapi's parseOAuthResponseErrorBody) reads an RFC 6749 error body only
  // from a 4xx answer: a 5xx is a ClientError "unexpected HTTP response status code" whose cause
  // is the Response itself, never a ResponseBodyError. The status, Retry-After and Rotor's body
  // are all there for a caller that looks.
  t.notOk(thrown instanceof oidc.ResponseBodyError, 'not a ResponseBodyError: openid-client leaves 5xx bodies unread')
  t.type(thrown, oidc.ClientError)
  t.match(thrown, { code: 'OAUTH_RESPONSE_IS_NOT_CONFORM' })
  const response = (thrown as { cause?: unknown }).cause
  t.type(response, Response, 'the cause is the HTTP response')
  if (!(response instanceof Response)) return
  t.equal(response.status, 503)
  t.match(response.headers.get('retry-after'), /^\d+$/, 'with Retry-After')
  t.match(await response.json(), { error: 'temporarily_unavailable', error_description: /retry/ }, 'RFC 6749\'s shape, for the caller that reads it')
})

for (const nonces of [false, true]) {
  test(`openid-client's DPoP (RFC 9449) refreshes a bound session${nonces ? ', following DPOP_NONCES\' use_dpop_nonce' : ''}; without its key the grant is refused`, async (t) => {
    const rotor = await startRotor(t, nonces ? { DPOP_NONCES: 'true' } : {})
    const config = await publicClient(rotor)
    t.same(config.serverMetadata()['dpop_signing_alg_values_supported'], ['ES256', 'EdDSA', 'RS256'], 'RFC 9449 §5.1 metadata')
    const keyPair = await oidc.randomDPoPKeyPair('ES256')
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey), 'sha256')
    const pair = await issueOverSocket(rotor, 'dora', jkt)
    const DPoP = oidc.getDPoPHandle(config, keyPair)

    const withoutKey = await refusal(oidc.refreshTokenGrant(config, pair.refresh_token))
    t.match(withoutKey, { status: 400, error: 'invalid_grant' }, 'the bound refresh token alone is refused')
    let first: Awaited<ReturnType<typeof oidc.refreshTokenGrant>>
    try {
      first = await oidc.refreshTokenGrant(config, pair.refresh_token, undefined, { DPoP })
    } catch (error) {
      // openid-client leaves the retry after use_dpop_nonce to its caller (it keeps the nonce).
      t.ok(nonces && error instanceof oidc.ResponseBodyError && error.error === 'use_dpop_nonce', `only a nonce may be asked for: ${String(error)}`)
      first = await oidc.refreshTokenGrant(config, pair.refresh_token, undefined, { DPoP })
    }
    t.equal(first.token_type, 'dpop', 'a bound pair is of type DPoP (RFC 9449 §5)')
    t.same(decodeJwt(first.access_token).payload['cnf'], { jkt }, 'bound to the client\'s key')
    const second = await oidc.refreshTokenGrant(config, first.refresh_token ?? '', undefined, { DPoP })
    t.equal(sid(second.refresh_token ?? ''), sid(pair.refresh_token), 'and it goes on rotating with fresh proofs')
  })
}
