import { test } from 'tap'
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { build, decodeJwt, introspectToken, issue, refreshWith, type Pair } from '../support/app.js'

function privateJwk (key: KeyObject, kid: string): Record<string, unknown> {
  return { ...key.export({ format: 'jwk' }), kid }
}

function keysFile (dir: string, keys: Array<Record<string, unknown>>): string {
  const path = join(dir, 'keys.json')
  writeFileSync(path, JSON.stringify({ keys }))
  return path
}

const generators: Record<string, () => KeyObject> = {
  EdDSA: () => generateKeyPairSync('ed25519').privateKey,
  ES256: () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  RS256: () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
}

for (const [algorithm, generate] of Object.entries(generators)) {
  test(`${algorithm}: a keys file signs access tokens that the JWKS verifies, and refresh works`, async (t) => {
    const dir = t.testdir()
    const path = keysFile(dir, [privateJwk(generate(), `${algorithm}-1`)])
    const app = await build(t, { JWT_ALGORITHM: algorithm, JWT_KEYS_FILE: path })
    const pair = await issue(app)
    const { header } = decodeJwt(pair.access_token)
    t.equal(header['alg'], algorithm)
    t.equal(header['kid'], `${algorithm}-1`)
    const jwks = (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json<{ keys: Array<Record<string, unknown>> }>()
    t.equal(jwks.keys.length, 1)
    t.equal(jwks.keys[0]?.['alg'], algorithm)
    t.notOk('d' in (jwks.keys[0] ?? {}), 'no private part')
    const { createPublicKey, verify } = await import('node:crypto')
    const publicKey = createPublicKey({ key: jwks.keys[0] as import('node:crypto').JsonWebKey, format: 'jwk' })
    const [h = '', p = '', s = ''] = pair.access_token.split('.')
    const digest = algorithm === 'EdDSA' ? null : 'sha256'
    const ok = verify(digest, Buffer.from(`${h}.${p}`), algorithm === 'ES256' ? { key: publicKey, dsaEncoding: 'ieee-p1363' } : publicKey, Buffer.from(s, 'base64url'))
    t.ok(ok, 'the access token verifies with the published key alone')
    t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
  })
}

test('HS256 with JWT_SECRET: nothing is published, refresh and access keys differ', async (t) => {
  const app = await build(t, { JWT_ALGORITHM: 'HS256', JWT_SECRET: randomBytes(32).toString('hex') })
  const pair = await issue(app)
  t.equal(decodeJwt(pair.access_token).header['alg'], 'HS256')
  t.not(decodeJwt(pair.access_token).header['kid'], decodeJwt(pair.refresh_token).header['kid'])
  t.same((await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json(), { keys: [] })
  t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
  t.equal((await refreshWith(app, pair.access_token)).json().code, 'token_invalid', 'an access token cannot refresh')
})

test('instances sharing a keys file accept each other\'s refresh tokens', async (t) => {
  const dir = t.testdir()
  const path = keysFile(dir, [privateJwk(generators['EdDSA']?.() as KeyObject, 'shared')])
  const one = await build(t, { JWT_KEYS_FILE: path })
  const two = await build(t, { JWT_KEYS_FILE: path })
  const pair = await issue(one)
  t.equal((await refreshWith(two, pair.refresh_token)).statusCode, 200)
  t.match(await introspectToken(two, pair.access_token), { active: true })
})

test('instances with different keys refuse each other\'s tokens', async (t) => {
  const one = await build(t)
  const two = await build(t)
  const pair = await issue(one)
  t.equal((await refreshWith(two, pair.refresh_token)).json().code, 'token_invalid')
  t.same(await introspectToken(two, pair.access_token), { active: false })
})

test('JWT_ACTIVE_KID signs; every key in the file still verifies', async (t) => {
  const dir = t.testdir()
  const old = privateJwk(generators['EdDSA']?.() as KeyObject, 'old')
  const fresh = privateJwk(generators['EdDSA']?.() as KeyObject, 'new')
  // One deployment before and after the rotation: one store. (Under another prefix the second app
  // would find no store marker, take the store for lost, and refuse tokens minted in an earlier second.)
  const store = { REDIS_KEY_PREFIX: `rotor-test:${randomBytes(6).toString('hex')}:` }
  const before = await build(t, { ...store, JWT_KEYS_FILE: keysFile(dir, [old]) })
  const pairBefore = await issue(before)
  const after = await build(t, { ...store, JWT_KEYS_FILE: keysFile(dir, [old, fresh]), JWT_ACTIVE_KID: 'new' })
  const pairAfter = await issue(after)
  t.equal(decodeJwt(pairAfter.access_token).header['kid'], 'new')
  t.not(decodeJwt(pairAfter.refresh_token).header['kid'], decodeJwt(pairBefore.refresh_token).header['kid'], 'the refresh key rotates with the signing key')
  t.match(await introspectToken(after, pairBefore.access_token), { active: true }, 'a token of the old key still verifies')
  const rotated = await refreshWith(after, pairBefore.refresh_token)
  t.equal(rotated.statusCode, 200, 'a refresh token of the old key still refreshes')
  t.equal(decodeJwt(rotated.json<Pair>().access_token).header['kid'], 'new', 'and the new pair is signed by the active key')
  const jwks = (await after.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json<{ keys: Array<{ kid: string }> }>()
  t.same(jwks.keys.map((key) => key.kid).sort(), ['new', 'old'])
})

for (const algorithm of ['ES256', 'RS256', 'HS256']) {
  test(`${algorithm} with no keys file signs with a key generated at start`, async (t) => {
    const app = await build(t, { JWT_ALGORITHM: algorithm })
    const pair = await issue(app)
    const { header } = decodeJwt(pair.access_token)
    t.equal(header['alg'], algorithm)
    t.match(header['kid'], /^dev-/)
    t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200)
    const jwks = (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json<{ keys: unknown[] }>()
    t.equal(jwks.keys.length, algorithm === 'HS256' ? 0 : 1)
  })
}
