import { test } from 'tap'
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import type { Response } from 'light-my-request'
import { generateKeyPairSync, sign } from 'node:crypto'
import { CompactSign, exportJWK, generateKeyPair } from 'jose'
import { API_KEY, build, decodeJwt, introspectToken, listen, LogCapture, type Pair } from '../support/app.js'
import { dpopKey, forgedProof, proofFor, type DpopKey } from '../support/dpop.js'
import { BoundedMap, currentNonce } from '../../src/dpop.js'
import { refresh } from '../../src/rotation.js'

/*
 * DPoP (contract, "DPoP (RFC 9449)"): a session bound at issuance to a key's thumbprint is
 * refreshed, on every refresh route, only with a proof signed by that key; everything else about
 * unbound sessions is as before.
 */

/** inject's request URL as Rotor sees it (no JWT_ISSUER URL): http, host localhost:80. */
const HTU = 'http://localhost:80/v1/tokens/refresh'

async function issueBound (app: FastifyInstance, key: DpopKey | null, sub = 'alice'): Promise<Pair> {
  const body = key === null ? { sub } : { sub, dpop_jkt: key.jkt }
  const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: body })
  if (response.statusCode !== 200) throw new Error(`issue answered ${response.statusCode} ${response.body}`)
  return response.json<Pair>()
}

async function refreshWithProof (app: FastifyInstance, refreshToken: string, proof?: string | string[]): Promise<Response> {
  const headers: Record<string, string | string[]> = proof === undefined ? {} : { dpop: proof }
  return app.inject({ method: 'POST', url: '/v1/tokens/refresh', headers, payload: { refresh_token: refreshToken } })
}

function codeOf (response: Response): unknown {
  return response.json<Record<string, unknown>>()['code']
}

test('a bound session: every token carries cnf.jkt, introspection returns it, and it refreshes with a proof of its key', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  for (const token of [pair.access_token, pair.refresh_token]) t.same(decodeJwt(token).payload['cnf'], { jkt: key.jkt }, 'cnf.jkt in the token')
  t.same((await introspectToken(app, pair.access_token))['cnf'], { jkt: key.jkt }, '/v1 introspection returns cnf')

  const refreshed = await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))
  t.equal(refreshed.statusCode, 200, refreshed.body)
  const next = refreshed.json<Pair>()
  t.same(decodeJwt(next.refresh_token).payload['cnf'], { jkt: key.jkt }, 'the rotated tokens stay bound')
  t.same(decodeJwt(next.access_token).payload['cnf'], { jkt: key.jkt })
  t.equal(next.token_type, 'Bearer', '/v1 answers as the contract says')

  const unbound = await issueBound(app, null)
  t.notOk('cnf' in decodeJwt(unbound.refresh_token).payload, 'an unbound session carries no cnf')
  t.equal((await refreshWithProof(app, unbound.refresh_token)).statusCode, 200, 'and refreshes without a proof, as before')
  const again = (await refreshWithProof(app, unbound.refresh_token)).json<Pair>()
  t.equal((await refreshWithProof(app, again.refresh_token, 'not even a JWT')).statusCode, 200, 'a DPoP header on an unbound session is ignored')
})

test('a bound refresh token without a proof is 401 token_invalid, and the session stays alive for its key holder', async (t) => {
  const app = await build(t)
  const key = await dpopKey('EdDSA')
  const pair = await issueBound(app, key)
  const stolen = await refreshWithProof(app, pair.refresh_token)
  t.equal(stolen.statusCode, 401)
  t.equal(codeOf(stolen), 'token_invalid')
  const thief = await dpopKey('EdDSA')
  const signedByAnother = await refreshWithProof(app, pair.refresh_token, await proofFor(thief, { htu: HTU }))
  t.equal(signedByAnother.statusCode, 400)
  t.equal(codeOf(signedByAnother), 'invalid_dpop_proof', 'a proof of another key')
  const owner = await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))
  t.equal(owner.statusCode, 200, 'the owner refreshes: nothing was recorded for the thief\'s tries')
})

test('a client whose clock is ahead (by less than DPOP_PROOF_MAX_AGE) refreshes; its proof is still used once', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const ahead = await proofFor(key, { htu: HTU, iat: Math.floor(Date.now() / 1000) + 45 })
  const first = await refreshWithProof(app, pair.refresh_token, ahead)
  t.equal(first.statusCode, 200, first.body)
  t.equal(codeOf(await refreshWithProof(app, first.json<Pair>().refresh_token, ahead)), 'invalid_dpop_proof', 'replayed: refused')
})

test('proofs of each algorithm Rotor takes (ES256, EdDSA, RS256) refresh their sessions', async (t) => {
  const app = await build(t)
  for (const alg of ['ES256', 'EdDSA', 'RS256'] as const) {
    const key = await dpopKey(alg)
    const pair = await issueBound(app, key)
    const response = await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))
    t.equal(response.statusCode, 200, `${alg}: ${response.body}`)
    const next = await refreshWithProof(app, response.json<Pair>().refresh_token, await proofFor(key, { htu: HTU }))
    t.equal(next.statusCode, 200, `${alg}, the key already known: ${next.body}`)
  }
})

test('the domain\'s refresh() called without a request (a tool, a test) refuses a bound session as a request without a proof', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const ctx = { keyring: app.keyring, denylist: app.denylist, config: app.config, log: app.log }
  await t.rejects(refresh(ctx, pair.refresh_token), { code: 'token_invalid' })
  const unbound = await issueBound(app, null)
  t.equal((await refresh(ctx, unbound.refresh_token)).session.jkt, undefined, 'an unbound one refreshes')
})

test('issuance refuses a malformed thumbprint and a caller\'s own cnf claim', async (t) => {
  const app = await build(t)
  for (const body of [{ sub: 'a', dpop_jkt: 'short' }, { sub: 'a', dpop_jkt: 'x'.repeat(42) + '=' }, { sub: 'a', dpop_jkt: 7 }, { sub: 'a', claims: { cnf: { jkt: 'x'.repeat(43) } } }]) {
    const response = await app.inject({ method: 'POST', url: '/v1/tokens', headers: { authorization: `Bearer ${API_KEY}` }, payload: body })
    t.equal(response.statusCode, 400, JSON.stringify(body))
    t.equal(codeOf(response), 'invalid_request')
  }
})

test('every faulty proof is 400 invalid_dpop_proof, never a 5xx, and leaves the session alive', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const rsa = await dpopKey('RS256')
  const nowSec = Math.floor(Date.now() / 1000)
  const claims = { htm: 'POST', htu: HTU, iat: nowSec, jti: 'j-1' }
  const header = { alg: 'ES256', typ: 'dpop+jwt', jwk: key.jwk }
  const { privateKey } = await generateKeyPair('ES256', { extractable: true })
  const privateJwk = await exportJWK(privateKey)
  const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey.export({ format: 'jwk' })
  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 })
  const shortRsa = { ...rsa, jwk: rsa1024.publicKey.export({ format: 'jwk' }) }
  // jose will not sign with a 1024-bit key: node:crypto will.
  const signWith = (jwsHeader: Record<string, unknown>): string => {
    const input = `${Buffer.from(JSON.stringify(jwsHeader)).toString('base64url')}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`
    return `${input}.${sign('sha256', Buffer.from(input), rsa1024.privateKey).toString('base64url')}`
  }
  const cases: Array<[string, () => Promise<string | string[]>]> = [
    ['alg none', async () => forgedProof({ ...header, alg: 'none' }, claims)],
    ['an HS256 proof', async () => forgedProof({ ...header, alg: 'HS256' }, claims, 'c2lnbmF0dXJl')],
    ['a jwk with private members', async () => proofFor({ ...key, jwk: privateJwk, privateKey }, { htu: HTU })],
    ['no jwk', async () => proofFor(key, { htu: HTU }, { jwk: undefined })],
    ['a jwk that is an array', async () => forgedProof({ ...header, jwk: [key.jwk] }, claims, 'AAAA')],
    ['a jwk without y', async () => forgedProof({ ...header, jwk: { ...key.jwk, y: undefined } }, claims, 'AAAA')],
    ['a jwk whose point is not on the curve', async () => forgedProof({ ...header, jwk: { ...key.jwk, y: key.jwk.x } }, claims, 'AAAA')],
    ['a P-384 key under ES256', async () => forgedProof({ ...header, jwk: p384 }, claims, 'AAAA')],
    ['an EC key under EdDSA', async () => forgedProof({ ...header, alg: 'EdDSA' }, claims, 'AAAA')],
    ['an EC key under RS256', async () => forgedProof({ ...header, alg: 'RS256' }, claims, 'AAAA')],
    ['an RSA key of 1024 bits', async () => signWith({ alg: 'RS256', typ: 'dpop+jwt', jwk: shortRsa.jwk })],
    ['a critical header extension', async () => signWith({ alg: 'RS256', typ: 'dpop+jwt', jwk: rsa.jwk, crit: ['exp'], exp: 1 })],
    ['an alg Rotor does not take (ES384)', async () => forgedProof({ ...header, alg: 'ES384' }, claims, 'AAAA')],
    ['an alg that is an object key name (constructor)', async () => forgedProof({ ...header, alg: 'constructor' }, claims, 'AAAA')],
    ['a signature of the wrong length', async () => forgedProof(header, claims, 'AAAA')],
    ['a header that is no JSON', async () => `bm90IGpzb24.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.AAAA`],
    ['four segments', async () => `${await proofFor(key, { htu: HTU })}.AAAA`],
    ['a symmetric jwk', async () => forgedProof({ ...header, alg: 'HS256', jwk: { kty: 'oct', k: 'c2VjcmV0' } }, claims, 'c2lnbmF0dXJl')],
    ['a wrong typ', async () => proofFor(key, { htu: HTU }, { typ: 'JWT' })],
    ['a wrong htm', async () => proofFor(key, { htu: HTU, htm: 'GET' })],
    ['a wrong htu', async () => proofFor(key, { htu: 'http://localhost:80/v1/tokens/introspect' })],
    ['an htu of another host', async () => proofFor(key, { htu: 'https://evil.example/v1/tokens/refresh' })],
    ['an htu that is no URL', async () => proofFor(key, { htu: 'refresh' })],
    ['an htu of another scheme', async () => proofFor(key, { htu: 'ws://localhost:80/v1/tokens/refresh' })],
    ['a stale iat', async () => proofFor(key, { htu: HTU, iat: nowSec - 61 })],
    ['an iat more than DPOP_PROOF_MAX_AGE ahead', async () => proofFor(key, { htu: HTU, iat: nowSec + 62 })],
    ['no iat', async () => proofFor(key, { htu: HTU, iat: undefined })],
    ['an iat that is a string', async () => proofFor(key, { htu: HTU, iat: String(nowSec) as unknown as number })],
    ['no jti', async () => proofFor(key, { htu: HTU, jti: '' })],
    ['a jti of 257 characters', async () => proofFor(key, { htu: HTU, jti: 'j'.repeat(257) })],
    ['another key', async () => proofFor(rsa, { htu: HTU })],
    ['a bad signature', async () => (await proofFor(key, { htu: HTU })).slice(0, -4) + 'AAAA'],
    ['two DPoP headers', async () => [await proofFor(key, { htu: HTU }), await proofFor(key, { htu: HTU })]],
    ['an oversized proof', async () => proofFor(key, { htu: HTU, jti: 'j'.repeat(250), ...{ pad: 'p'.repeat(4000) } } as never)],
    ['a payload that is no JSON', async () => new CompactSign(new TextEncoder().encode('not json')).setProtectedHeader(header).sign(key.privateKey)],
    ['a payload that is a JSON array', async () => new CompactSign(new TextEncoder().encode('[1]')).setProtectedHeader(header).sign(key.privateKey)],
    ['garbage', async () => '\u00ff\u00fe not a jws'],
    ['an empty header', async () => '']
  ]
  const pair = await issueBound(app, key)
  for (const [name, make] of cases) {
    const response = await refreshWithProof(app, pair.refresh_token, await make())
    t.equal(response.statusCode, 400, `${name}: ${response.body}`)
    t.equal(codeOf(response), 'invalid_dpop_proof', name)
  }
  t.equal((await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))).statusCode, 200, 'none of them touched the session')
})

for (const store of ['Redis', 'the in-process store'] as const) {
  const env = store === 'Redis' ? {} : { REDIS_URL: '' }

  test(`${store}: a proof is used once, even when replayed concurrently over a real socket`, async (t) => {
    const app = await build(t, env)
    const base = await listen(app)
    const htu = `${base}/v1/tokens/refresh`
    const key = await dpopKey()
    const pair = await issueBound(app, key)
    const proof = await proofFor(key, { htu })
    const answers = await Promise.all(Array.from({ length: 8 }, async () => fetch(htu, {
      method: 'POST', headers: { 'content-type': 'application/json', dpop: proof }, body: JSON.stringify({ refresh_token: pair.refresh_token })
    })))
    const statuses = answers.map((answer) => answer.status).sort()
    t.same(statuses, [200, 400, 400, 400, 400, 400, 400, 400], 'one rotation; the replays refused')
    for (const answer of answers.filter((a) => a.status === 400)) t.equal((await answer.json() as Record<string, unknown>)['code'], 'invalid_dpop_proof')

    // Two tabs, each its own proof, the same refresh token at once: the grace window answers both.
    const next = (await answers.find((answer) => answer.status === 200)!.json()) as Pair
    const tabs = await Promise.all([1, 2].map(async () => fetch(htu, {
      method: 'POST', headers: { 'content-type': 'application/json', dpop: await proofFor(key, { htu }) }, body: JSON.stringify({ refresh_token: next.refresh_token })
    })))
    t.same(tabs.map((tab) => tab.status), [200, 200], 'concurrent tabs with fresh proofs both get the pair')
    const [a, b] = await Promise.all(tabs.map(async (tab) => await tab.json() as Pair))
    t.equal(a?.refresh_token, b?.refresh_token, 'the same successor')
  })

  test(`${store}: without rotation (ROTATE_REFRESH_TOKENS=false) a proof is still used once`, async (t) => {
    const app = await build(t, { ...env, ROTATE_REFRESH_TOKENS: 'false' })
    const key = await dpopKey()
    const pair = await issueBound(app, key)
    const proof = await proofFor(key, { htu: HTU })
    t.equal((await refreshWithProof(app, pair.refresh_token, proof)).statusCode, 200)
    const replay = await refreshWithProof(app, pair.refresh_token, proof)
    t.equal(replay.statusCode, 400)
    t.equal(codeOf(replay), 'invalid_dpop_proof')
    t.equal((await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))).statusCode, 200, 'a new proof works')
  })
}

test('with the denylist off a bound session still needs its key (replays are not recorded: nothing is written per session)', async (t) => {
  const app = await build(t, { DENYLIST_ENABLED: 'false' })
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  t.equal(codeOf(await refreshWithProof(app, pair.refresh_token)), 'token_invalid')
  t.equal((await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))).statusCode, 200)
})

test('behind a proxy, htu is built from JWT_ISSUER', async (t) => {
  const app = await build(t, { JWT_ISSUER: 'https://auth.example.com/rotor/' })
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const local = await app.inject({
    method: 'POST', url: '/v1/tokens/refresh?via=proxy', headers: { dpop: await proofFor(key, { htu: HTU }) }, payload: { refresh_token: pair.refresh_token }
  })
  t.equal(codeOf(local), 'invalid_dpop_proof', 'Rotor\'s own view of the URL is not the client\'s')
  const viaIssuer = await app.inject({
    method: 'POST',
    url: '/v1/tokens/refresh?via=proxy',
    headers: { dpop: await proofFor(key, { htu: 'HTTPS://Auth.Example.com:443/rotor/v1/tokens/refresh?x=1' }) },
    payload: { refresh_token: pair.refresh_token }
  })
  t.equal(viaIssuer.statusCode, 200, 'the issuer\'s URL, normalised (case, default port, query)')
  t.equal(codeOf(await refreshWithProof(app, viaIssuer.json<Pair>().refresh_token, await proofFor(key, { htu: 'https://auth.example.com/v1/tokens/refresh' }))),
    'invalid_dpop_proof', 'the issuer\'s path is part of it')
})

test('a Host header no URL parser takes matches no htu, not even one that is no URL either', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  for (const htu of ['nonsense', 'http://ex ample/v1/tokens/refresh']) {
    const response = await app.inject({
      method: 'POST', url: '/v1/tokens/refresh', headers: { host: 'ex ample', dpop: await proofFor(key, { htu }) }, payload: { refresh_token: pair.refresh_token }
    })
    t.equal(response.statusCode, 400, htu)
    t.equal(codeOf(response), 'invalid_dpop_proof')
  }
})

test('DPOP_NONCES=true: a proof without the current nonce is 400 use_dpop_nonce with DPoP-Nonce; with it, 200 and the next nonce', async (t) => {
  const app = await build(t, { DPOP_NONCES: 'true', DPOP_PROOF_MAX_AGE: '30s' })
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const asked = await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))
  t.equal(asked.statusCode, 400)
  t.equal(codeOf(asked), 'use_dpop_nonce')
  const nonce = asked.headers['dpop-nonce']
  t.type(nonce, 'string', 'the answer carries a nonce')
  const stale = currentNonce(app.keyring, app.config, Date.now() - 61_000)
  t.equal(codeOf(await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU, nonce: stale }))), 'use_dpop_nonce', 'a nonce two windows old is refused')
  const ok = await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU, nonce: String(nonce) }))
  t.equal(ok.statusCode, 200, ok.body)
  t.equal(ok.headers['dpop-nonce'], nonce, 'a refresh answer carries the current nonce')
  const unbound = await issueBound(app, null)
  const plain = await refreshWithProof(app, unbound.refresh_token)
  t.equal(plain.statusCode, 200)
  t.equal(plain.headers['dpop-nonce'], undefined, 'unbound sessions see nothing of nonces')
})

test('the SimpleJWT route and /oauth2/token require the proof too, each in its own error shape', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const simpleUrl = 'http://localhost:80/api/auth/token/refresh/'
  const simple = (proof?: string): Promise<Response> => app.inject({
    method: 'POST', url: '/api/auth/token/refresh/', headers: proof === undefined ? {} : { dpop: proof }, payload: { refresh: pair.refresh_token }
  })
  t.match((await simple()).json(), { code: 'token_not_valid' }, 'no proof: SimpleJWT\'s 401')
  const badSimple = await simple(await proofFor(key, { htu: HTU }))
  t.equal(badSimple.statusCode, 400)
  t.equal(codeOf(badSimple), 'invalid_dpop_proof', 'a proof for another URL')
  const simpleOk = await simple(await proofFor(key, { htu: simpleUrl }))
  t.equal(simpleOk.statusCode, 200, simpleOk.body)
  const { refresh } = simpleOk.json<{ refresh: string }>()

  const form = (proof?: string): Promise<Response> => app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(proof === undefined ? {} : { dpop: proof }) },
    payload: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refresh }).toString()
  })
  const oauthUrl = 'http://localhost:80/oauth2/token'
  const noProof = await form()
  t.equal(noProof.statusCode, 400)
  t.equal(noProof.json().error, 'invalid_grant', 'no proof: the grant is refused (RFC 6749 §5.2)')
  const badProof = await form(await proofFor(key, { htu: oauthUrl, htm: 'PUT' }))
  t.equal(badProof.statusCode, 400)
  t.equal(badProof.json().error, 'invalid_dpop_proof', 'RFC 9449 §5\'s error code')
  const ok = await form(await proofFor(key, { htu: oauthUrl }))
  t.equal(ok.statusCode, 200, ok.body)
  t.equal(ok.json().token_type, 'DPoP', 'RFC 9449 §5: a bound pair is of type DPoP on the OAuth wire')
  const introspected = await app.inject({
    method: 'POST',
    url: '/oauth2/introspect',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Bearer ${API_KEY}` },
    payload: new URLSearchParams({ token: ok.json().access_token }).toString()
  })
  t.same(introspected.json().cnf, { jkt: key.jkt }, '/oauth2/introspect returns cnf')
})

test('the OpenAPI document tells of the DPoP header on every refresh route', async (t) => {
  const app = await build(t)
  const document = (await app.inject({ method: 'GET', url: '/openapi.json' })).json<{ paths: Record<string, Record<string, { description?: string }>> }>()
  for (const path of ['/v1/tokens/refresh', '/api/auth/token/refresh/', '/oauth2/token']) {
    t.match(document.paths[path]?.['post']?.description, /DPoP/, path)
  }
})

test('CORS lets a page send DPoP and read DPoP-Nonce; proofs never reach the log', async (t) => {
  const logs = new LogCapture()
  const app = await build(t, { DPOP_NONCES: 'true' }, logs)
  const preflight = await app.inject({
    method: 'OPTIONS',
    url: '/v1/tokens/refresh',
    headers: { origin: 'http://localhost:3000', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type, dpop' }
  })
  t.match(String(preflight.headers['access-control-allow-headers']), /dpop/)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const proof = await proofFor(key, { htu: HTU })
  const asked = await app.inject({
    method: 'POST', url: '/v1/tokens/refresh', headers: { origin: 'http://localhost:3000', dpop: proof }, payload: { refresh_token: pair.refresh_token }
  })
  t.equal(codeOf(asked), 'use_dpop_nonce')
  t.match(String(asked.headers['access-control-expose-headers']), /dpop-nonce/)
  await refreshWithProof(app, pair.refresh_token, proof.slice(0, -2))
  t.notOk(logs.text.includes(proof.split('.')[2]!.slice(0, 20)), 'no proof signature in the log')
  t.notOk(logs.text.includes(proof.split('.')[1]!.slice(0, 20)), 'no proof payload in the log')
})

test('the imported-key cache keeps its newest entries, never more than its capacity', async (t) => {
  const map = new BoundedMap<string, number>(2)
  map.set('a', 1)
  map.set('b', 2)
  map.set('a', 3)
  map.set('c', 4)
  t.equal(map.size, 2)
  t.equal(map.get('b'), undefined, 'the oldest left')
  t.equal(map.get('a'), 3, 'a key set again is new again')
  t.equal(map.get('c'), 4)
})

test('generated DPoP headers at a bound session\'s refresh: never a 5xx, never a 200, and the session lives on', async (t) => {
  const app = await build(t)
  const key = await dpopKey()
  const pair = await issueBound(app, key)
  const valid = await proofFor(key, { htu: HTU })
  const [head = '', body = '', signature = ''] = valid.split('.')
  const segment = fc.oneof(fc.constantFrom(head, body, signature, ''), fc.jsonValue({ maxDepth: 3 }).map((value) => Buffer.from(JSON.stringify(value)).toString('base64url')))
  const jwkLike = fc.record({ kty: fc.constantFrom('EC', 'OKP', 'RSA', 'oct', 7), crv: fc.constantFrom('P-256', 'Ed25519', 'P-384'), x: fc.oneof(fc.constant(key.jwk.x), fc.string()), y: fc.oneof(fc.constant(key.jwk.y), fc.string()), n: fc.string(), e: fc.string(), d: fc.string() }, { requiredKeys: [] })
  const forged = fc.tuple(fc.record({ typ: fc.constantFrom('dpop+jwt', 'JWT', undefined), alg: fc.constantFrom('ES256', 'EdDSA', 'RS256', 'none', 'HS256', '__proto__', 'toString'), jwk: fc.oneof(jwkLike, fc.jsonValue({ maxDepth: 2 })), crit: fc.constantFrom(undefined, ['b64']) }, { requiredKeys: [] }), fc.jsonValue({ maxDepth: 2 }), fc.string({ maxLength: 100 }))
    .map(([header, payload, sig]) => forgedProof(header as Record<string, unknown>, payload as Record<string, unknown>, Buffer.from(sig).toString('base64url')))
  const mutated = fc.tuple(fc.nat({ max: valid.length - 1 }), fc.constantFrom('A', '.', '-', '_', '=', ' ')).map(([at, c]) => valid.slice(0, at) + c + valid.slice(at + 1))
  // The generators can rebuild the valid proof itself, or one that decodes to the same bytes (the
  // last character of a base64url segment carries unused bits): that one is no fault, and is left out.
  const decodesToValid = (proof: string): boolean => {
    const parts = proof.split('.')
    return parts.length === 3 && parts[0] === head && parts[1] === body && Buffer.from(parts[2] ?? '', 'base64url').equals(Buffer.from(signature, 'base64url'))
  }
  const header = fc.oneof(fc.string({ maxLength: 200 }), fc.tuple(segment, segment, segment).map((parts) => parts.join('.')), forged, mutated, fc.constant('a'.repeat(5000)))
    .filter((proof) => !decodesToValid(proof))
  const statuses = new Set<number>()
  await fc.assert(fc.asyncProperty(fc.array(header, { minLength: 1, maxLength: 2 }), async (proofs) => {
    const printable = proofs.filter((proof) => /^[\t\x20-\x7e]*$/.test(proof))
    if (printable.length === 0) return
    const response = await refreshWithProof(app, pair.refresh_token, printable.length === 1 ? printable[0] : printable)
    statuses.add(response.statusCode)
    if (response.statusCode >= 500 || response.statusCode === 200) throw new Error(`answered ${response.statusCode}: ${response.body}`)
  }), { seed: 20261204, numRuns: 600 })
  t.ok([...statuses].every((status) => status === 400), `only 400s: ${[...statuses].join(', ')}`)
  t.equal((await refreshWithProof(app, pair.refresh_token, await proofFor(key, { htu: HTU }))).statusCode, 200, 'the session lives on')
})
