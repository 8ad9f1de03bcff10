import { test } from 'tap'
import { createHmac, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadKeyMaterial } from '../../plugins/key-material.js'
import { API_KEY, build, introspectToken, issue, refreshWith, testConfig } from '../support/app.js'
import type { Test } from '../support/tap.js'

const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

interface Keys { privateKey: KeyObject, publicPem: string, kid: string, refreshKey: Buffer, refreshKid: string, path: string }

/** A keys file of one Ed25519 key, and the refresh key Rotor derives from it. */
function makeKeys (t: Test & { testdir: () => string }, algorithm: 'EdDSA' | 'ES256' = 'EdDSA'): Keys {
  const { privateKey, publicKey } = algorithm === 'EdDSA' ? generateKeyPairSync('ed25519') : generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const path = join(t.testdir(), 'keys.json')
  writeFileSync(path, JSON.stringify({ keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'k1' }] }))
  const { active: material } = loadKeyMaterial(testConfig({ JWT_KEYS_FILE: path, JWT_ALGORITHM: algorithm }))
  return { privateKey, publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString(), kid: 'k1', refreshKey: material.refreshKey, refreshKid: material.refreshKid, path }
}

function claims (overrides: Record<string, unknown> = {}, type = 'refresh'): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { iss: 'rotor', sub: 'mallory', iat: now, exp: now + 600, jti: 'AAAAAAAAAAAAAAAAAAAAAA', sid: 'BBBBBBBBBBBBBBBBBBBBBB', auth_time: now, token_type: type, ...overrides }
}

function refreshToken (keys: Keys, payload: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  const input = `${b64({ alg: 'HS256', typ: 'rt+jwt', kid: keys.refreshKid, ...header })}.${b64(payload)}`
  return `${input}.${createHmac('sha256', keys.refreshKey).update(input).digest('base64url')}`
}

function accessToken (keys: Keys, payload: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  const input = `${b64({ alg: 'EdDSA', typ: 'at+jwt', kid: keys.kid, ...header })}.${b64(payload)}`
  return `${input}.${sign(null, Buffer.from(input), keys.privateKey).toString('base64url')}`
}

test('a crafted refresh token signed with the right key but a wrong claim is refused', async (t) => {
  const keys = makeKeys(t)
  const app = await build(t, { JWT_KEYS_FILE: keys.path, JWT_AUDIENCE: 'web' })
  const now = Math.floor(Date.now() / 1000)
  t.equal((await refreshWith(app, refreshToken(keys, claims({ aud: 'web' })))).statusCode, 200, 'the crafting is right')
  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['another issuer', claims({ iss: 'evil', aud: 'web' }), 'token_invalid'],
    ['another audience', claims({ aud: 'other' }), 'token_invalid'],
    ['no sid', { ...claims({ aud: 'web' }), sid: undefined }, 'token_invalid'],
    ['a numeric sid', claims({ aud: 'web', sid: 5 }), 'token_invalid'],
    ['token_type access', claims({ aud: 'web', token_type: 'access' }), 'token_invalid'],
    ['not valid before a minute from now', claims({ aud: 'web', nbf: now + 60 }), 'token_invalid'],
    ['issued a minute from now', claims({ aud: 'web', iat: now + 60 }), 'token_invalid'],
    ['expired a minute ago', claims({ aud: 'web', exp: now - 60 }), 'token_expired']
  ]
  for (const [name, payload, code] of cases) {
    const response = await refreshWith(app, refreshToken(keys, payload))
    t.equal(response.statusCode, 401, name)
    t.equal(response.json().code, code, name)
  }
})

test('LEEWAY forgives clock skew on exp, nbf and iat, and no more', async (t) => {
  const keys = makeKeys(t)
  const app = await build(t, { JWT_KEYS_FILE: keys.path, LEEWAY: '2m' })
  const now = Math.floor(Date.now() / 1000)
  for (const skew of [{ exp: now - 60 }, { nbf: now + 60 }, { iat: now + 60 }]) {
    t.equal((await refreshWith(app, refreshToken(keys, claims({ ...skew, jti: `J${String(Object.values(skew)[0])}AAAAAAAAAAAAAAAAAAA` })))).statusCode, 200, JSON.stringify(skew))
  }
  for (const skew of [{ exp: now - 180 }, { nbf: now + 180 }, { iat: now + 180 }]) {
    t.equal((await refreshWith(app, refreshToken(keys, claims(skew)))).statusCode, 401, JSON.stringify(skew))
  }
})

test('headers cannot choose the key or the algorithm', async (t) => {
  const keys = makeKeys(t)
  const app = await build(t, { JWT_KEYS_FILE: keys.path })
  const attacker = generateKeyPairSync('ed25519')
  const payload = claims({}, 'access')
  const body = b64(payload)
  const hmacWithPublicKey = (header: Record<string, unknown>): string => {
    const input = `${b64(header)}.${body}`
    return `${input}.${createHmac('sha256', keys.publicPem).update(input).digest('base64url')}`
  }
  const signedByAttacker = (header: Record<string, unknown>): string => {
    const input = `${b64(header)}.${body}`
    return `${input}.${sign(null, Buffer.from(input), attacker.privateKey).toString('base64url')}`
  }
  const attackerJwk = attacker.publicKey.export({ format: 'jwk' })
  const forged: Array<[string, string]> = [
    ['alg none, no signature', `${b64({ alg: 'none', typ: 'at+jwt', kid: 'k1' })}.${body}.`],
    ['alg none, with a signature', `${b64({ alg: 'none', typ: 'at+jwt', kid: 'k1' })}.${body}.AAAA`],
    ['HS256 keyed with the public key', hmacWithPublicKey({ alg: 'HS256', typ: 'at+jwt', kid: 'k1' })],
    ['an embedded jwk', signedByAttacker({ alg: 'EdDSA', typ: 'at+jwt', kid: 'k1', jwk: attackerJwk })],
    ['a jku', signedByAttacker({ alg: 'EdDSA', typ: 'at+jwt', kid: 'k1', jku: 'http://127.0.0.1:1/jwks.json' })],
    ['an x5u', signedByAttacker({ alg: 'EdDSA', typ: 'at+jwt', kid: 'k1', x5u: 'http://127.0.0.1:1/cert.pem' })],
    ['no kid', accessToken(keys, payload, { kid: undefined })],
    ['an unknown kid', accessToken(keys, payload, { kid: 'k2' })],
    ['a kid with a path', accessToken(keys, payload, { kid: '../../etc/passwd' })],
    ['a kid with injection text', accessToken(keys, payload, { kid: "k1' OR '1'='1" })],
    ['the refresh kid on an access token', accessToken(keys, payload, { kid: keys.refreshKid })],
    ['typ of a refresh token', accessToken(keys, payload, { typ: 'rt+jwt' })],
    ['a crit header', accessToken(keys, payload, { crit: ['exp'] })],
    ['a stripped signature', accessToken(keys, payload).replace(/\.[^.]+$/, '.')],
    ['a truncated signature', accessToken(keys, payload).slice(0, -10)],
    ['a payload altered under the old signature', (() => { const [h, , s] = accessToken(keys, payload).split('.'); return `${h ?? ''}.${b64({ ...payload, sub: 'admin' })}.${s ?? ''}` })()],
    ['a payload that is not JSON', (() => { const input = `${b64({ alg: 'EdDSA', typ: 'at+jwt', kid: 'k1' })}.${Buffer.from('{nope').toString('base64url')}`; return `${input}.${sign(null, Buffer.from(input), keys.privateKey).toString('base64url')}` })()],
    ['a header that is not JSON', `${Buffer.from('{nope').toString('base64url')}.${body}.AAAA`],
    ['a header that is a JSON string', `${b64('k1')}.${body}.AAAA`],
    ['non-base64url segments', `${b64({ alg: 'EdDSA' })}.${body}.%%%`],
    ['a very long token', accessToken(keys, { ...payload, pad: 'x'.repeat(10_000) })],
    ['duplicate header keys choosing another kid', signedByAttacker({ alg: 'EdDSA', typ: 'at+jwt', kid: 'k1' }).replace(/^[^.]+/, Buffer.from('{"alg":"EdDSA","typ":"at+jwt","kid":"k1","kid":"k2"}').toString('base64url'))],
    ['duplicate payload keys under the old signature', (() => { const [h, , s] = accessToken(keys, payload).split('.'); return `${h ?? ''}.${Buffer.from(JSON.stringify(payload).replace('{', '{"sub":"admin",')).toString('base64url')}.${s ?? ''}` })()]
  ]
  t.match(await introspectToken(app, accessToken(keys, payload)), { active: true }, 'the crafting is right')
  for (const [name, token] of forged) {
    t.same(await introspectToken(app, token), { active: false }, name)
    const refresh = await refreshWith(app, token)
    t.equal(refresh.statusCode, 401, `${name}: refresh`)
    t.equal(refresh.json().code, 'token_invalid', `${name}: refresh code`)
  }
})

test('an ECDSA signature of zeros is refused under ES256', async (t) => {
  const keys = makeKeys(t, 'ES256')
  const app = await build(t, { JWT_KEYS_FILE: keys.path, JWT_ALGORITHM: 'ES256' })
  const genuine = await issue(app)
  const [h, p] = genuine.access_token.split('.')
  const zeros = `${h ?? ''}.${p ?? ''}.${Buffer.alloc(64).toString('base64url')}`
  t.same(await introspectToken(app, zeros), { active: false })
  t.match(await introspectToken(app, genuine.access_token), { active: true })
})

test('an access token refreshes nothing, and a refresh token is no access token at introspection of the wrong kind', async (t) => {
  const app = await build(t)
  const pair = await issue(app)
  const refresh = await refreshWith(app, pair.access_token)
  t.equal(refresh.json().code, 'token_invalid')
  t.match(await introspectToken(app, pair.refresh_token), { active: true, token_type: 'refresh' }, 'introspection says which kind it is')
  const revoke = await app.inject({ method: 'POST', url: '/v1/tokens/revoke', headers: { authorization: `Bearer ${API_KEY}` }, payload: { token: pair.access_token } })
  t.equal(revoke.statusCode, 200)
})
