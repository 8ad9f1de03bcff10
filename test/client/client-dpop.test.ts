import { test } from 'tap'
import { IDBFactory } from 'fake-indexeddb'
import { createDpopKey, createRotorClient, indexedDbStorage, memoryStorage, type RotorClientOptions } from '@rotor/client'
import { API_KEY, build, decodeJwt, listen, type Pair } from '../support/app.js'
import type { Test } from '../support/tap.js'

// @rotor/client with `dpop: true` in Node, against a real Rotor over a real socket: the session
// is bound to the client's key, refreshes carry proofs, and the refresh token alone is refused.

async function rotor (t: Test, env: Record<string, string> = {}): Promise<string> {
  const app = await build(t, { ACCESS_TOKEN_TTL: '2s', ...env })
  return await listen(app)
}

/** The login: a backend issues the session bound to the thumbprint the front end sent. */
async function login (base: string, jkt: string | null, sub = 'alice'): Promise<Pair> {
  const response = await fetch(`${base}/v1/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(jkt === null ? { sub } : { sub, dpop_jkt: jkt })
  })
  if (response.status !== 200) throw new Error(`issue answered ${response.status}`)
  return await response.json() as Pair
}

function client (options: RotorClientOptions) {
  return createRotorClient({ storage: memoryStorage(), maxRetryAfterSeconds: 1, ...options })
}

/** The pair, as if its access token had just expired: the client must refresh before using it. */
function expired (pair: Pair): Pair {
  return { ...pair, expires_in: 0 }
}

test('a bound session refreshes with proofs of the client\'s key; its refresh token alone is refused and the session lives on', async (t) => {
  const base = await rotor(t)
  const rotorClient = client({ baseUrl: base, dpop: true })
  t.teardown(() => { rotorClient.close() })
  const jkt = await rotorClient.dpopThumbprint()
  t.match(jkt, /^[A-Za-z0-9_-]{43}$/, 'an RFC 7638 SHA-256 thumbprint')
  t.equal(await rotorClient.dpopThumbprint(), jkt, 'the same key until sign-out')
  const pair = await login(base, jkt)
  await rotorClient.setTokens(expired(pair))
  const access = await rotorClient.getAccessToken()
  t.not(access, pair.access_token, 'refreshed')
  t.same(decodeJwt(String(access)).payload['cnf'], { jkt }, 'the new access token is bound to the client\'s key')

  // A thief with the original refresh token (rotated meanwhile) and one with no key at all.
  const stolen = await fetch(`${base}/v1/tokens/refresh`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: pair.refresh_token }) })
  t.equal(stolen.status, 401)
  t.equal((await stolen.json() as { code: string }).code, 'token_invalid', 'no proof: refused before the store is asked (no reuse recorded)')
  await new Promise((resolve) => setTimeout(resolve, 2100))
  const later = await rotorClient.getAccessToken()
  t.ok(later !== null && later !== access, 'the user\'s session lives on and refreshes again')

  t.equal(await rotorClient.signOut(), true)
  const next = await rotorClient.dpopThumbprint()
  t.not(next, jkt, 'a new key after sign-out')
})

test('a new key after a sign-out tells no tab of that sign-out again', async (t) => {
  const base = await rotor(t)
  const storage = memoryStorage()
  const told: string[] = []
  const tab = (name: string) => createRotorClient({ baseUrl: base, dpop: true, storage, onSignedOut: (reason) => { told.push(`${name}:${reason}`) } })
  const [a, b] = [tab('a'), tab('b')]
  t.teardown(() => { a.close(); b.close() })
  await a.setTokens(await login(base, await a.dpopThumbprint()))
  await a.signOut()
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(told.sort(), ['a:signed_out', 'b:signed_out'], 'each tab told once')
  await b.dpopThumbprint()
  await a.getAccessToken()
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(told.sort(), ['a:signed_out', 'b:signed_out'], 'and not again when the login page makes its new key')
  t.equal(await a.getAccessToken(), null, 'still signed out until the next setTokens')
})

test('with DPOP_NONCES=true the client takes the server\'s nonce and signs again', async (t) => {
  const base = await rotor(t, { DPOP_NONCES: 'true' })
  const requests: string[] = []
  const rotorClient = client({
    baseUrl: base,
    dpop: true,
    fetch: async (input, init) => {
      requests.push(String(input))
      return await fetch(input, init)
    }
  })
  t.teardown(() => { rotorClient.close() })
  await rotorClient.setTokens(expired(await login(base, await rotorClient.dpopThumbprint())))
  const first = await rotorClient.getAccessToken()
  t.ok(first, 'refreshed')
  t.equal(requests.length, 2, 'one 400 use_dpop_nonce, then the refresh with the nonce')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  await rotorClient.setTokens(expired({ ...(await login(base, await rotorClient.dpopThumbprint())) }))
  t.ok(await rotorClient.getAccessToken())
  t.equal(requests.length, 3, 'the nonce from the last answer is used: no second refusal')
})

test('two clients sharing IndexedDB share the key: either refreshes the bound session', async (t) => {
  const base = await rotor(t)
  const indexedDB = new IDBFactory()
  const a = createRotorClient({ baseUrl: base, dpop: true, storage: indexedDbStorage({ indexedDB }) })
  const b = createRotorClient({ baseUrl: base, dpop: true, storage: indexedDbStorage({ indexedDB }) })
  t.teardown(() => { a.close(); b.close() })
  const [jktA, jktB] = await Promise.all([a.dpopThumbprint(), b.dpopThumbprint()])
  t.equal(jktA, jktB, 'asked at once, one key')
  await a.setTokens(expired(await login(base, jktA)))
  const fromB = await b.getAccessToken()
  t.same(decodeJwt(String(fromB)).payload['cnf'], { jkt: jktA }, 'the other client refreshed with the stored key')
})

test('a client without dpop refuses to make a thumbprint; a key-less record refreshes as bearer', async (t) => {
  const base = await rotor(t)
  const plain = client({ baseUrl: base })
  t.teardown(() => { plain.close() })
  await t.rejects(plain.dpopThumbprint(), TypeError)
  t.throws(() => createRotorClient({ baseUrl: base, dpop: 'yes' as unknown as boolean }), TypeError)
  const bound = client({ baseUrl: base, dpop: true })
  t.teardown(() => { bound.close() })
  await bound.setTokens(expired(await login(base, null)))
  t.ok(await bound.getAccessToken(), 'an unbound session set on a dpop client still refreshes')
  const pair = await login(base, null, 'carl')
  await bound.setTokens(pair)
  await bound.dpopThumbprint()
  t.equal(await bound.getAccessToken(), pair.access_token, 'making a key keeps the session in progress')
})

test('without WebCrypto (an http page that is not localhost) making a key says what is missing', async (t) => {
  const descriptor = Object.getOwnPropertyDescriptor(globalThis, 'crypto')
  Object.defineProperty(globalThis, 'crypto', { value: undefined, configurable: true })
  t.teardown(() => { if (descriptor !== undefined) Object.defineProperty(globalThis, 'crypto', descriptor) })
  await t.rejects(createDpopKey(), { name: 'TypeError', message: /secure context/ })
})
