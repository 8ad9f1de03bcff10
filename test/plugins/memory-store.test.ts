import { test } from 'tap'
import { MemoryDenylist } from '../../plugins/store/memory.js'
import { API_KEY, build, introspectToken, issue, refreshWith, type Pair } from '../support/app.js'

const ISSUED_US = 1_796_000_000_000_000
const ref = { sub: 's', sid: 'sid-1', jti: 'jti-1', issuedUs: ISSUED_US }
const entry = { sid: 'sid-1', createdUs: ISSUED_US, lastRefreshedAt: 0, expiresAt: 2_000_000_000, clientId: null, device: null }
const rotation = { ...ref, childJti: 'jti-2', ttlMs: 1000, graceMs: 0, enforce: true, sessionTtlMs: 5000, entry }

test('the in-process store: revocations work as with Redis', async (t) => {
  const app = await build(t, { REDIS_URL: '' })
  const pair = await issue(app, { sub: 'mem' })
  const rotated = (await refreshWith(app, pair.refresh_token)).json<Pair>()
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: rotated.access_token } })
  t.same(await introspectToken(app, rotated.access_token), { active: false }, 'access token revoked')
  t.match(await introspectToken(app, rotated.refresh_token), { active: true })
  t.same(await introspectToken(app, pair.refresh_token), { active: false }, 'a rotated refresh token is inactive')
  await app.inject({ method: 'POST', url: '/v1/tokens/revoke', payload: { token: rotated.refresh_token } })
  t.equal((await refreshWith(app, rotated.refresh_token)).json().code, 'token_revoked')
  const other = await issue(app, { sub: 'mem2' })
  await app.inject({ method: 'POST', url: '/v1/subjects/mem2/revoke', headers: { authorization: `Bearer ${API_KEY}` } })
  t.equal((await refreshWith(app, other.refresh_token)).json().code, 'token_revoked', 'log out everywhere')
  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.same(ready.json(), { status: 'ok', store: 'memory' })
})

test('the in-process store forgets a record when its TTL has passed', async (t) => {
  const store = new MemoryDenylist()
  t.teardown(() => { store.close() })
  const now = Date.now()
  t.match(await store.rotate({ ...rotation, nowMs: now }), { status: 'rotated', rotatedAtMs: now })
  t.equal(await store.state(ref), 'rotated')
  t.equal(store.size, 1)
  t.match(await store.rotate({ ...rotation, nowMs: now + 10 }), { status: 'reused' }, 'no window: reuse')
  t.equal(await store.state(ref), 'revoked', 'and the session is revoked')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  t.equal(store.size, 1, 'the jti record expired; the session record has not')
  await new Promise((resolve) => setTimeout(resolve, 4000))
  t.equal(store.size, 0)
  t.equal(await store.state(ref), 'active')
})

test('the in-process store: a subject revocation only moves forward', async (t) => {
  const store = new MemoryDenylist()
  t.teardown(() => { store.close() })
  await store.revokeSubject('s', ISSUED_US + 2000, 10_000)
  await store.revokeSubject('s', ISSUED_US + 1500, 10_000)
  t.equal(await store.state({ ...ref, issuedUs: ISSUED_US + 2000 }), 'revoked', 'issued at the mark: revoked')
  t.equal(await store.state({ ...ref, issuedUs: ISSUED_US + 2001 }), 'active', 'a microsecond later: not')
  await store.ping()
})

test('the in-process store treats a record past its TTL as absent, before any sweep', async (t) => {
  const store = new MemoryDenylist()
  t.teardown(() => { store.close() })
  await store.revokeToken(ref, 1)
  await new Promise((resolve) => setTimeout(resolve, 5))
  t.equal(await store.state(ref), 'active')
})
