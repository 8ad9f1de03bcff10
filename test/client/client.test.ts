import { test } from 'tap'
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { createRotorClient, expiryOf, memoryStorage, RotorRefusedError, RotorUnavailableError, type RotorClientOptions, type RotorStorage, type SignOutReason, type StoredSession } from '@rotor/client'
import { build, introspectToken, issue, listen, REDIS_URL, refreshWith, type Pair } from '../support/app.js'
import { metric } from '../support/metrics.js'
import { freePort, TcpProxy } from '../support/net.js'
import type { Test } from '../support/tap.js'

// @rotor/client in Node, against a real Rotor over real sockets (and, for answers Rotor never
// gives, a scripted server). The browser side (tabs, Web Locks, IndexedDB) is in client-browser.test.ts.

/** A fetch that counts the refreshes it sends. */
function counting (): { fetch: typeof fetch, refreshes: () => number, requests: string[] } {
  const requests: string[] = []
  return {
    requests,
    refreshes: () => requests.filter((url) => url.endsWith('/v1/tokens/refresh') || url.endsWith('/api/auth/token/refresh/')).length,
    fetch: async (input, init) => {
      requests.push(String(input instanceof Request ? input.url : input))
      return await fetch(input, init)
    }
  }
}

/** The pair, as if its access token had just expired: the client must refresh before using it. */
function expired (pair: Pair): Pair {
  return { ...pair, expires_in: 0 }
}

/** A server answering what a test scripts, one answer per request; records the requests. */
async function scripted (t: Test, answers: Array<(response: ServerResponse) => void>): Promise<{ url: string, seen: Array<{ path: string, at: number }> }> {
  const seen: Array<{ path: string, at: number }> = []
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    seen.push({ path: request.url ?? '', at: Date.now() })
    request.resume()
    const answer = answers.shift()
    if (answer === undefined) {
      response.writeHead(500).end()
      return
    }
    answer(response)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen }
}

function json (status: number, body: unknown, headers: Record<string, string> = {}): (response: ServerResponse) => void {
  return (response) => { response.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body)) }
}

function signOuts (): { reasons: SignOutReason[], onSignedOut: (reason: SignOutReason) => void } {
  const reasons: SignOutReason[] = []
  return { reasons, onSignedOut: (reason) => { reasons.push(reason) } }
}

/** A client with the defaults tests want: memory storage, short waits. */
function client (options: RotorClientOptions) {
  const made = createRotorClient({ storage: memoryStorage(), maxRetryAfterSeconds: 1, ...options })
  return made
}

test('a fresh access token is handed out as it is; one about to expire is refreshed first, and the pair rotates', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const counter = counting()
  const c = client({ baseUrl: base, fetch: counter.fetch })
  t.equal(await c.getAccessToken(), null, 'nothing before setTokens')
  const pair = await issue(app)
  await c.setTokens(pair)
  t.equal(await c.getAccessToken(), pair.access_token, 'a token with its life ahead')
  t.equal(counter.refreshes(), 0, 'Rotor was not asked')

  await c.setTokens(expired(pair))
  const access = await c.getAccessToken()
  t.not(access, pair.access_token, 'a new access token')
  t.equal(counter.refreshes(), 1)
  t.equal((await introspectToken(app, String(access)))['active'], true, 'which Rotor accepts')
  t.equal((await introspectToken(app, pair.refresh_token))['active'], false, 'the old refresh token was rotated')
  t.equal(await c.getAccessToken(), access, 'and kept: no second refresh')
  t.equal(counter.refreshes(), 1)
})

test('the refresh margin: refreshBeforeExpirySeconds ahead, but never more than half the token\'s life', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '4s' })
  const base = await listen(app)
  const pair = await issue(app)
  const counter = counting()
  const c = client({ baseUrl: base, fetch: counter.fetch })
  await c.setTokens(pair)
  t.equal(await c.getAccessToken(), pair.access_token, 'a 4 s token is not refreshed 30 s (the default) early, or it would be at every call')
  t.equal(counter.refreshes(), 0)
  await new Promise((resolve) => setTimeout(resolve, 2100))
  t.not(await c.getAccessToken(), pair.access_token, 'but once half its life is over')
  t.equal(counter.refreshes(), 1)
})

test('the SimpleJWT shape is accepted by setTokens, and its expiry read from the token when expires_in is missing', async (t) => {
  const app = await build(t, { ACCESS_TOKEN_TTL: '90s' })
  const base = await listen(app)
  const pair = await issue(app)
  const exp = expiryOf(pair.access_token)
  t.ok(exp !== undefined && Math.abs(exp - (Date.now() + 90_000)) < 2000, 'expiryOf reads exp, in ms')
  t.equal(expiryOf('not.a-jwt.at-all'), undefined)
  t.equal(expiryOf('a.eyJleHAiOiJzb29uIn0.c'), undefined, 'an exp that is not a number')
  const counter = counting()
  const c = client({ baseUrl: base, routes: 'simplejwt', fetch: counter.fetch })
  await c.setTokens({ access: pair.access_token, refresh: pair.refresh_token })
  t.equal(await c.getAccessToken(), pair.access_token)
  t.equal(counter.refreshes(), 0)
  await t.rejects(c.setTokens({ access: '', refresh: 'x' }), TypeError, 'an empty token is refused')
  await t.rejects(c.setTokens({ access_token: 'x' } as never), TypeError, 'a missing one too')
})

test('concurrent callers make one refresh: within one client, and across clients that share a storage', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const storage = memoryStorage()
  const counter = counting()
  const first = client({ baseUrl: base, storage, fetch: counter.fetch })
  const second = client({ baseUrl: base, storage, fetch: counter.fetch })
  await first.setTokens(expired(await issue(app)))
  const tokens = await Promise.all([
    ...Array.from({ length: 10 }, async () => await first.getAccessToken()),
    ...Array.from({ length: 10 }, async () => await second.getAccessToken())
  ])
  t.equal(new Set(tokens).size, 1, 'every caller got the same access token')
  t.equal(counter.refreshes(), 1, 'Rotor was asked once')
  t.equal(await metric(base, 'rotor_tokens_refreshed_total{retry="false"}'), 1, 'and rotated once')
  t.equal(await metric(base, 'rotor_tokens_refreshed_total{retry="true"}'), 0, 'with no repeat within the grace window either')
})

test('Rotor\'s verdicts on the refresh token sign out, with their reason, once, in every client of the session', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0', REFRESH_TOKEN_TTL: '2s' })
  const base = await listen(app)

  const verdict = async (name: string, pairFor: () => Promise<Pair>, expected: SignOutReason, routes: 'v1' | 'simplejwt' = 'v1'): Promise<void> => {
    const storage = memoryStorage()
    const here = signOuts()
    const there = signOuts()
    const a = client({ baseUrl: base, storage, routes, onSignedOut: here.onSignedOut })
    const b = client({ baseUrl: base, storage, routes, onSignedOut: there.onSignedOut })
    const pair = await pairFor()
    await a.setTokens(expired(pair))
    t.equal(await a.getAccessToken(), null, `${name}: no token`)
    t.same(here.reasons, [expected], `${name}: the client that refreshed is told ${expected}`)
    t.same(there.reasons, [expected], `${name}: so is the other client of the session`)
    t.equal(await b.getAccessToken(), null)
    t.equal(await a.getAccessToken(), null)
    t.equal(here.reasons.length + there.reasons.length, 2, `${name}: each is told once`)
  }

  await verdict('reuse', async () => {
    const pair = await issue(app)
    t.equal((await refreshWith(app, pair.refresh_token)).statusCode, 200, 'someone else rotated it first (an attacker)')
    return pair
  }, 'token_reused')
  await verdict('revocation', async () => {
    const pair = await issue(app)
    await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
    return pair
  }, 'token_revoked')
  await verdict('a malformed token', async () => ({ access_token: 'not-a-jwt', refresh_token: 'not-a-jwt', expires_in: 0 } as unknown as Pair), 'token_invalid')
  await verdict('SimpleJWT\'s route', async () => {
    const pair = await issue(app)
    await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
    return pair
  }, 'token_not_valid', 'simplejwt')
  await verdict('an expired refresh token', async () => {
    const pair = await issue(app)
    await new Promise((resolve) => setTimeout(resolve, 3100))
    return pair
  }, 'token_expired')
})

test('an onSignedOut that throws does not break the client', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const c = client({ baseUrl: base, onSignedOut: () => { throw new Error('the app\'s handler failed') } })
  await c.setTokens(await issue(app))
  t.equal(await c.signOut(), true)
  t.equal(await c.getAccessToken(), null)
})

test('Rotor\'s 503 is waited out: a token that still works is handed out at once, an expired one is refreshed once Redis is back', async (t) => {
  const proxy = new TcpProxy(Number(new URL(REDIS_URL).port))
  const port = await proxy.listen()
  t.teardown(() => { proxy.close() })
  const app = await build(t, { REDIS_URL: `redis://127.0.0.1:${port}`, ACCESS_TOKEN_TTL: '6s' })
  const base = await listen(app)
  const pair = await issue(app)
  const told = signOuts()
  const counter = counting()
  const c = client({ baseUrl: base, fetch: counter.fetch, onSignedOut: told.onSignedOut, maxRetryAfterSeconds: 30 })
  await c.setTokens(pair)
  proxy.partition()
  // Half of the token's 6 s: the refresh is due, and the token still has ~3 s to live.
  await new Promise((resolve) => setTimeout(resolve, 3100))
  t.equal(await c.getAccessToken(), pair.access_token, 'the refresh was due but Rotor answered 503 (after its 1 s command timeout): the still-valid token is handed out')
  t.equal(counter.refreshes(), 1)
  t.equal(await c.getAccessToken(), pair.access_token, 'and Rotor is not asked again before its Retry-After')
  t.equal(counter.refreshes(), 1)

  await c.setTokens(expired(pair))
  const started = Date.now()
  setTimeout(() => { proxy.heal() }, 1500)
  const access = await c.getAccessToken()
  t.not(access, null, 'refreshed once the store was back')
  t.not(access, pair.access_token)
  t.ok(Date.now() - started >= 1500, `waited ${Date.now() - started} ms for it`)
  t.ok(counter.refreshes() >= 2, 'after a 503')
  t.same(told.reasons, [], 'nobody was signed out')
})

test('a client gives up waiting after maxWaitSeconds with RotorUnavailableError, and keeps the session', async (t) => {
  const port = await freePort()
  const told = signOuts()
  const c = client({ baseUrl: `http://127.0.0.1:${port}`, maxWaitSeconds: 1, onSignedOut: told.onSignedOut })
  await c.setTokens({ access_token: 'a.b.c', refresh_token: 'r', expires_in: 0 })
  const error = await c.getAccessToken().catch((caught: unknown) => caught)
  t.type(error, RotorUnavailableError)
  t.match(error, { code: 'network_error', retryAfterMs: undefined }, 'nobody listens there (and so nobody said when to come back)')
  t.same(told.reasons, [])
  const again = await c.getAccessToken().catch((caught: unknown) => caught)
  t.type(again, RotorUnavailableError, 'the next call tries again (and the session is still there to try with)')
})

test('answers Rotor never gives on purpose: 429 and Retry-After, a 502, a 200 without a pair, a 404', async (t) => {
  const pair = { access_token: 'a.b.c', refresh_token: 'r', expires_in: 0 }
  const fresh = { access_token: 'fresh.access.token', refresh_token: 'fresh-refresh', token_type: 'Bearer', expires_in: 300, refresh_expires_in: 3600 }

  t.test('429 with Retry-After: 1 is waited for, at least that long, jittered by at most a quarter', async (t) => {
    const server = await scripted(t, [json(429, { code: 'rate_limited' }, { 'retry-after': '1' }), json(200, fresh)])
    const c = client({ baseUrl: server.url })
    await c.setTokens(pair)
    t.equal(await c.getAccessToken(), fresh.access_token)
    const [first, second] = server.seen
    const gap = (second?.at ?? 0) - (first?.at ?? 0)
    t.ok(gap >= 1000 && gap < 3000, `asked again after ${gap} ms, not before Retry-After (plus up to 250 ms of jitter)`)
  })

  t.test('Retry-After as an HTTP date, and one longer than maxRetryAfterSeconds is cut to it', async (t) => {
    const server = await scripted(t, [
      json(503, { code: 'denylist_unavailable' }, { 'retry-after': new Date(Date.now() + 10_000).toUTCString() }),
      json(503, { code: 'denylist_unavailable' }, { 'retry-after': '3600' }),
      json(200, fresh)
    ])
    const c = client({ baseUrl: server.url, maxRetryAfterSeconds: 0.3 })
    await c.setTokens(pair)
    t.equal(await c.getAccessToken(), fresh.access_token)
    const gaps = server.seen.slice(1).map((entry, index) => entry.at - (server.seen[index]?.at ?? 0))
    t.ok(gaps.every((gap) => gap >= 290 && gap < 5000), `both waits (9+ s and an hour) cut to ~0.3 s: ${gaps.join(', ')} ms`)
  })

  t.test('a 502 of a proxy, a 200 that is no pair, and an unreadable Retry-After back off', async (t) => {
    const server = await scripted(t, [
      (response) => { response.writeHead(502).end('Bad Gateway') },
      json(200, { hello: 'captive portal' }),
      json(503, {}, { 'retry-after': 'soon' }),
      json(503, {}, { 'retry-after': '-1' }),
      json(200, fresh)
    ])
    const c = client({ baseUrl: server.url })
    await c.setTokens(pair)
    t.equal(await c.getAccessToken(), fresh.access_token)
    t.equal(server.seen.length, 5)
    const gaps = server.seen.slice(1).map((entry, index) => entry.at - (server.seen[index]?.at ?? 0))
    t.ok(gaps[0] !== undefined && gaps[0] >= 500 && gaps[1] !== undefined && gaps[1] >= 1000, `exponential backoff: ${gaps.join(', ')} ms`)
  })

  t.test('with maxWaitSeconds: 0 a server does not wait: it learns when Rotor asked to be called again', async (t) => {
    const server = await scripted(t, [json(503, { code: 'denylist_unavailable' }, { 'retry-after': '2' })])
    const c = client({ baseUrl: server.url, maxWaitSeconds: 0 })
    await c.setTokens(pair)
    t.match(await c.getAccessToken().catch((caught: unknown) => caught), { name: 'RotorUnavailableError', code: 'denylist_unavailable', retryAfterMs: 2000 })
    t.equal(server.seen.length, 1)
  })

  t.test('a 404 (a wrong baseUrl) rejects with RotorRefusedError and signs nobody out', async (t) => {
    const server = await scripted(t, [json(404, { code: 'not_found' }), (response) => { response.writeHead(401).end() }])
    const told = signOuts()
    const c = client({ baseUrl: `${server.url}/`, onSignedOut: told.onSignedOut })
    await c.setTokens(pair)
    const error = await c.getAccessToken().catch((caught: unknown) => caught)
    t.type(error, RotorRefusedError)
    t.match(error, { status: 404, code: 'not_found' })
    t.equal(server.seen[0]?.path, '/v1/tokens/refresh', 'a trailing slash of baseUrl is not doubled')
    t.match(await c.getAccessToken().catch((caught: unknown) => caught), { status: 401, code: 'http_401' }, 'a 401 without one of Rotor\'s codes (something in between) does not sign out either')
    t.same(told.reasons, [])
  })
})

test('client.fetch adds the bearer token, refreshes once on a 401 that says it expired, and sends the request again with its body', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  /** Access tokens the backend takes for expired. */
  const stale = new Set<string>()
  const backend = createServer((request, response) => {
    let body = ''
    request.on('data', (chunk: Buffer) => { body += String(chunk) })
    request.on('end', () => {
      const token = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1]
      if (token === undefined) return json(401, { code: 'not_authenticated' })(response)
      if (request.url === '/other') return json(401, { code: 'permission_denied' })(response)
      if (request.url === '/bearer-header') return response.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"' }).end()
      if (stale.has(token)) return json(401, { code: request.url === '/simplejwt' ? 'token_not_valid' : 'token_expired' })(response)
      json(200, { body, token })(response)
    })
  })
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { backend.closeAllConnections(); backend.close() })
  const api = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`
  const counter = counting()
  const c = client({ baseUrl: base, fetch: counter.fetch })

  const anonymous = await c.fetch(`${api}/me`, { headers: { authorization: 'Bearer stale' } })
  t.same(await anonymous.json(), { code: 'not_authenticated' }, 'signed out: no Authorization header at all')

  const pair = await issue(app)
  await c.setTokens(pair)
  const ok = await c.fetch(`${api}/me`, { method: 'POST', body: 'hello' })
  t.same(await ok.json(), { body: 'hello', token: pair.access_token })
  t.equal(counter.refreshes(), 0)

  stale.add(pair.access_token)
  const refreshed = await c.fetch(new Request(`${api}/me`, { method: 'POST', body: 'again' }))
  const answer = await refreshed.json() as { body: string, token: string }
  t.equal(refreshed.status, 200, 'the backend said token_expired: refreshed, and sent again')
  t.equal(answer.body, 'again', 'with its body')
  t.not(answer.token, pair.access_token)
  t.equal(counter.refreshes(), 1)

  stale.add(String(await c.getAccessToken()))
  t.equal((await c.fetch(`${api}/simplejwt`)).status, 200, 'SimpleJWT\'s token_not_valid: refreshed too')
  t.equal((await c.fetch(`${api}/bearer-header`)).status, 401, 'WWW-Authenticate invalid_token: refreshed, and the backend said no again')
  t.equal(counter.refreshes(), 3)
  const other = await c.fetch(`${api}/other`)
  t.same({ status: other.status, body: await other.json() }, { status: 401, body: { code: 'permission_denied' } }, 'a 401 about something else is the answer')
  t.equal(counter.refreshes(), 3, 'and is not refreshed for')
})

test('client.fetch gives the first answer back when the refresh cannot help', async (t) => {
  const app = await build(t, { REFRESH_REUSE_GRACE: '0' })
  const base = await listen(app)
  const backend = createServer((_request, response) => { json(401, { code: 'token_expired' })(response) })
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { backend.closeAllConnections(); backend.close() })
  const api = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`
  const told = signOuts()
  const c = client({ baseUrl: base, onSignedOut: told.onSignedOut })
  const pair = await issue(app)
  await c.setTokens(pair)
  await refreshWith(app, pair.refresh_token)
  const answer = await c.fetch(`${api}/me`)
  t.same({ status: answer.status, body: await answer.json() }, { status: 401, body: { code: 'token_expired' } }, 'the backend\'s answer')
  t.same(told.reasons, ['token_reused'], 'the refresh found the session stolen')
})

test('signOut ends the session at Rotor and in every client, at once', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const storage = memoryStorage()
  const here = signOuts()
  const there = signOuts()
  const a = client({ baseUrl: base, storage, onSignedOut: here.onSignedOut })
  const b = client({ baseUrl: base, storage, onSignedOut: there.onSignedOut })
  t.equal(await a.signOut(), true, 'nothing to sign out of: nothing happens')
  t.same(here.reasons, [])
  const pair = await issue(app)
  await a.setTokens(pair)
  t.equal(await b.getAccessToken(), pair.access_token, 'the other client uses the same session')
  t.equal(await b.signOut(), true, 'Rotor confirmed the revocation')
  t.same(here.reasons, ['signed_out'])
  t.same(there.reasons, ['signed_out'])
  t.equal(await a.getAccessToken(), null)
  t.equal((await introspectToken(app, pair.refresh_token))['active'], false, 'the refresh token is dead at Rotor')
  t.equal(await a.signOut(), true, 'signing out twice is fine')
  t.equal(here.reasons.length, 1, 'and tells nobody again')

  const later = signOuts()
  const opened = client({ baseUrl: base, storage, onSignedOut: later.onSignedOut })
  t.equal(await opened.getAccessToken(), null)
  t.same(later.reasons, [], 'a client made after the sign-out is not told about it (a login page must not loop)')

  const next = await issue(app)
  await opened.setTokens(next)
  t.equal(await a.getAccessToken(), next.access_token, 'a new login is every client\'s')
  await opened.signOut()
  t.same([here.reasons, later.reasons], [['signed_out', 'signed_out'], ['signed_out']], 'and its end is told again')
})

test('signOut when Rotor cannot be reached still ends the session here, and says it could not revoke', async (t) => {
  const c = client({ baseUrl: `http://127.0.0.1:${await freePort()}`, routes: 'simplejwt' })
  await c.setTokens({ access: 'a.b.c', refresh: 'r' })
  t.equal(await c.signOut(), false)
  t.equal(await c.getAccessToken(), null)
})

test('SimpleJWT\'s routes: refresh through /api/auth/token/refresh/, sign out through the blacklist', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const counter = counting()
  const c = client({ baseUrl: base, routes: 'simplejwt', fetch: counter.fetch })
  const pair = await issue(app)
  await c.setTokens({ ...expired(pair) })
  const access = await c.getAccessToken()
  t.not(access, pair.access_token)
  t.same(counter.requests.map((url) => new URL(url).pathname), ['/api/auth/token/refresh/'])
  t.equal(await c.signOut(), true)
  t.same(counter.requests.map((url) => new URL(url).pathname), ['/api/auth/token/refresh/', '/api/auth/token/blacklist/'])
  t.equal((await introspectToken(app, String(access)))['active'], false, 'the session is over')
})

test('createRotorClient refuses options it cannot work with', async (t) => {
  t.throws(() => createRotorClient({ baseUrl: 'localhost:8080' }), TypeError)
  t.throws(() => createRotorClient({ baseUrl: 'http://rotor', routes: 'oauth' as 'v1' }), TypeError)
  t.throws(() => createRotorClient({ baseUrl: 'http://rotor', refreshBeforeExpirySeconds: -1 }), TypeError)
  t.throws(() => createRotorClient({ baseUrl: 'http://rotor', timeoutMs: Number.NaN }), TypeError)
  const c = createRotorClient({ baseUrl: 'http://rotor' })
  t.equal(await c.getAccessToken(), null, 'Node without IndexedDB: memory storage by default')
  c.close()
})

/**
 * A storage of the application's own, without lock or announcements (a BFF's session store), whose
 * next write is preceded by another tab's: the compare-and-set race, made to happen on purpose.
 */
function racing () {
  const records = new Map<string, StoredSession>()
  let before: (() => void) | undefined
  let afterRead: (() => void) | undefined
  const storage: RotorStorage = {
    async read (key) {
      const record = records.get(key)
      afterRead?.()
      afterRead = undefined
      return record
    },
    async write (key, value, expected) {
      before?.()
      before = undefined
      if (records.get(key)?.generation !== expected) return false
      records.set(key, value)
      return true
    }
  }
  function change (record: Omit<StoredSession, 'generation'> | undefined): void {
    if (record === undefined) records.delete('default')
    else records.set('default', { ...record, generation: (records.get('default')?.generation ?? 0) + 1 })
  }
  return {
    storage,
    /** Before the next write, `record` is written by someone else (undefined: the record is deleted). */
    nextWriteLosesTo (record: Omit<StoredSession, 'generation'> | undefined) {
      before = () => { change(record) }
    },
    /** Right after the next read, the record is deleted. */
    deletedAfterNextRead () {
      afterRead = () => { change(undefined) }
    }
  }
}

test('memoryStorage writes only over the generation it is told, and hands out copies', async (t) => {
  const storage = memoryStorage()
  t.equal(await storage.write('k', { generation: 1, signedOut: 'signed_out' }, undefined), true)
  t.equal(await storage.write('k', { generation: 2, signedOut: 'signed_out' }, undefined), false, 'something is stored: undefined is stale')
  t.equal(await storage.write('k', { generation: 2, signedOut: 'token_reused' }, 0), false, 'a stale generation')
  const read = await storage.read('k')
  t.same(read, { generation: 1, signedOut: 'signed_out' })
  if (read !== undefined) read.generation = 99
  t.same(await storage.read('k'), { generation: 1, signedOut: 'signed_out' }, 'a copy: changing it changes nothing stored')
})

test('a storage of the application\'s own: clients that share it take turns, and a write that lost a race gives way or tries again', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const race = racing()
  const counter = counting()
  const a = client({ baseUrl: base, storage: race.storage, fetch: counter.fetch })
  const b = client({ baseUrl: base, storage: race.storage, fetch: counter.fetch })

  const pair = await issue(app)
  race.nextWriteLosesTo({ signedOut: 'signed_out' })
  await a.setTokens(expired(pair))
  t.match(await race.storage.read('default'), { pair: { access: pair.access_token } }, 'setTokens lost to a sign-out, tried again, and won: a login stands')

  const tokens = await Promise.all([a.getAccessToken(), b.getAccessToken()])
  t.equal(tokens[0], tokens[1])
  t.equal(counter.refreshes(), 1, 'two clients, one lock (the client\'s own, per storage): one refresh')

  const login = await issue(app, { sub: 'bob' })
  await a.setTokens(expired(await issue(app)))
  race.nextWriteLosesTo({ pair: { access: login.access_token, refresh: login.refresh_token, accessExpiresAt: Date.now() + 60_000, obtainedAt: Date.now() } })
  t.equal(await a.getAccessToken(), login.access_token, 'a refresh whose write lost to a login in another tab gives way: the login stands')

  await a.setTokens(expired(await issue(app)))
  race.nextWriteLosesTo({ signedOut: 'token_revoked' })
  t.equal(await a.getAccessToken(), null, 'a refresh whose write lost to a sign-out gives way: signed out')
  await a.setTokens(expired(await issue(app)))
  race.nextWriteLosesTo(undefined)
  t.equal(await a.getAccessToken(), null, 'one whose record was deleted meanwhile (site data cleared) has nothing')
  await a.setTokens(expired(await issue(app)))
  race.deletedAfterNextRead()
  t.equal(await a.getAccessToken(), null, 'nor one that finds it deleted when it has the lock')

  await a.setTokens(await issue(app))
  race.nextWriteLosesTo({ pair: { access: pair.access_token, refresh: 'other', accessExpiresAt: Date.now() + 60_000, obtainedAt: Date.now() } })
  t.equal(await b.signOut(), true)
  t.match(await race.storage.read('default'), { signedOut: 'signed_out' }, 'signOut lost to a rotation, read again, and signed out')
  a.close()
  b.close()
})

test('answers that are not JSON, and a fetch of the application\'s own that gives bodiless answers', async (t) => {
  t.equal(expiryOf('nodots'), undefined)
  const fresh = { access_token: 'fresh.access.token', refresh_token: 'fresh-refresh', expires_in: 300 }
  const seen: string[] = []
  let revocation = 200
  const own: typeof fetch = async (input) => {
    const url = String(input instanceof Request ? input.url : input)
    seen.push(url)
    if (url.endsWith('/v1/tokens/refresh')) return Response.json(fresh)
    if (url.endsWith('/v1/tokens/revoke')) return new Response(null, { status: revocation })
    if (url.endsWith('/text')) return new Response('Unauthorized', { status: 401 })
    return new Response(null, { status: 401, headers: { 'www-authenticate': 'Bearer error="invalid_token"' } })
  }
  const c = client({ baseUrl: 'http://rotor.internal', fetch: own })
  await c.setTokens({ access_token: 'old.access.token', refresh_token: 'r', expires_in: 300 })
  t.equal((await c.fetch('http://api.internal/text')).status, 401, 'a 401 whose body is not JSON says nothing about the token')
  t.equal(seen.length, 1, 'no refresh for it')
  t.equal((await c.fetch('http://api.internal/me')).status, 401)
  t.same(seen.slice(1).map((url) => new URL(url).pathname), ['/me', '/v1/tokens/refresh', '/me'], 'invalid_token: refreshed, sent again')
  t.equal(await c.signOut(), true, 'a bodiless 200 to the revocation')
  await c.setTokens(fresh)
  revocation = 503
  t.equal(await c.signOut(), false, 'a 503 to it: not revoked (but signed out here)')
  t.equal(await c.getAccessToken(), null)
})

test('SimpleJWT\'s blacklist refusing a token that is already dead still counts as revoked', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const pair = await issue(app)
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: pair.refresh_token } })
  const c = client({ baseUrl: base, routes: 'simplejwt' })
  await c.setTokens(pair)
  t.equal(await c.signOut(), true)
})
