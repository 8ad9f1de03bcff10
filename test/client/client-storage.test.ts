import { test } from 'tap'
import { IDBFactory } from 'fake-indexeddb'
import { createRotorClient, indexedDbStorage, type RotorClientOptions, type SignOutReason } from '@rotor/client'
import { build, issue, listen } from '../support/app.js'
import { scrape, sum } from '../support/metrics.js'
import type { Test } from '../support/tap.js'

// The IndexedDB storage in Node, on fake-indexeddb (an implementation of the IndexedDB spec that
// passes most of its web-platform tests): two storages on one factory are two tabs of one origin.
// Node's own BroadcastChannel carries the announcements between them, as a browser's does between
// tabs. The same code runs in real Chromium tabs in client-browser.test.ts.

/** Replaces a global for the test (Node 24 has navigator.locks, Node 20 has no navigator). */
function replaceGlobal (t: Test, name: string, value: unknown): void {
  const before = Object.getOwnPropertyDescriptor(globalThis, name)
  Object.defineProperty(globalThis, name, { value, configurable: true, writable: true })
  t.teardown(() => {
    if (before === undefined) Reflect.deleteProperty(globalThis, name)
    else Object.defineProperty(globalThis, name, before)
  })
}

/** A Web Locks stand-in that records the names asked for, one holder at a time per name. */
function recordingLocks (): { names: string[], locks: { request: <T>(name: string, task: () => Promise<T>) => Promise<T> } } {
  const names: string[] = []
  const tails = new Map<string, Promise<unknown>>()
  return {
    names,
    locks: {
      async request<T> (name: string, task: () => Promise<T>): Promise<T> {
        names.push(name)
        const run = (tails.get(name) ?? Promise.resolve()).then(task, task)
        tails.set(name, run.catch(() => {}))
        return await run
      }
    }
  }
}

async function refreshCount (base: string): Promise<number> {
  return sum(await scrape(base), 'rotor_tokens_refreshed_total')
}

/** Two tabs of one origin: a client each, with a storage each, on one IndexedDB. */
function tabs (factory: InstanceType<typeof IDBFactory>, options: RotorClientOptions, told: SignOutReason[][]) {
  return [0, 1].map((index) => {
    told[index] = []
    return createRotorClient({ ...options, storage: indexedDbStorage({ indexedDB: factory }), onSignedOut: (reason) => { told[index]?.push(reason) } })
  })
}

async function settle (): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 100))
}

test('two tabs share the pair through IndexedDB; one refreshes, the other adopts; a sign-out reaches both', async (t) => {
  const app = await build(t)
  const base = await listen(app)

  for (const [locksName, locks] of [['Web Locks', recordingLocks()], ['no Web Locks', undefined]] as const) {
    t.test(`with ${locksName}`, async (t) => {
      replaceGlobal(t, 'navigator', locks === undefined ? undefined : { locks: locks.locks })
      const factory = new IDBFactory()
      const told: SignOutReason[][] = []
      const [a, b] = tabs(factory, { baseUrl: base }, told)
      if (a === undefined || b === undefined) throw new Error('two tabs')
      t.teardown(() => { a.close(); b.close() })
      const pair = await issue(app)
      await a.setTokens({ ...pair, expires_in: 0 })
      const before = await refreshCount(base)
      const tokens = await Promise.all([a.getAccessToken(), b.getAccessToken(), a.getAccessToken(), b.getAccessToken()])
      t.equal(new Set(tokens).size, 1, 'both tabs hold the same access token')
      t.not(tokens[0], pair.access_token)
      t.equal(await refreshCount(base) - before, 1, 'one refresh for both tabs')
      if (locks !== undefined) t.same([...new Set(locks.names)], ['@rotor/client:default'], 'the lock is the Web Lock named after the database and the session')

      t.equal(await b.signOut(), true)
      await settle()
      t.same(told, [['signed_out'], ['signed_out']], 'both tabs were told')
      t.equal(await a.getAccessToken(), null)
    })
  }
})

test('a tab that took no part hears of the rotation and the sign-out over the BroadcastChannel', async (t) => {
  const app = await build(t)
  const base = await listen(app)
  const factory = new IDBFactory()
  const told: SignOutReason[][] = []
  const [a, b] = tabs(factory, { baseUrl: base, name: 'shop' }, told)
  if (a === undefined || b === undefined) throw new Error('two tabs')
  t.teardown(() => { a.close(); b.close() })
  const pair = await issue(app)
  await a.setTokens(pair)
  t.equal(await b.getAccessToken(), pair.access_token, 'b reads what a wrote')
  const next = await issue(app)
  await a.setTokens(next)
  await settle()
  t.equal(await b.getAccessToken(), next.access_token, 'b was told to read again')

  const stray = new BroadcastChannel('@rotor/client')
  stray.postMessage(null)
  stray.postMessage({ key: 42 })
  stray.close()
  await a.signOut()
  await settle()
  t.same(told, [['signed_out'], ['signed_out']], 'messages that are not the client\'s are ignored; the sign-out is heard')
})

test('where BroadcastChannel is missing a tab learns of a sign-out at its next call', async (t) => {
  replaceGlobal(t, 'BroadcastChannel', undefined)
  const app = await build(t)
  const base = await listen(app)
  const factory = new IDBFactory()
  const told: SignOutReason[][] = []
  const [a, b] = tabs(factory, { baseUrl: base }, told)
  if (a === undefined || b === undefined) throw new Error('two tabs')
  const pair = await issue(app)
  await a.setTokens({ ...pair, expires_in: 0 })
  await b.getAccessToken()
  await a.signOut()
  t.same(told, [['signed_out'], []], 'b heard nothing yet')
  t.equal(await b.getAccessToken(), null, 'and finds it at its next call')
  t.same(told, [['signed_out'], ['signed_out']])
  a.close()
  b.close()
})

test('a browser\'s BroadcastChannel (no unref) is used as it is', async (t) => {
  const posted: unknown[] = []
  replaceGlobal(t, 'BroadcastChannel', class {
    onmessage: unknown = null
    postMessage (message: unknown): void { posted.push(message) }
    close (): void {}
  })
  const storage = indexedDbStorage({ indexedDB: new IDBFactory() })
  t.equal(await storage.write('k', { generation: 1, signedOut: 'signed_out' }, undefined), true)
  t.same(posted, [{ key: 'k', generation: 1 }])
  t.equal(await storage.write('k', { generation: 2, signedOut: 'signed_out' }, 0), false, 'a stale compare-and-set writes nothing')
  t.same(posted, [{ key: 'k', generation: 1 }], 'and announces nothing')
  storage.close?.()
})

test('the database deleted under the client (another tab, "clear site data"): it opens a new one and reads nothing', async (t) => {
  const factory = new IDBFactory()
  const c = createRotorClient({ baseUrl: 'http://127.0.0.1:1', storage: indexedDbStorage({ indexedDB: factory, database: 'app' }) })
  t.teardown(() => { c.close() })
  await c.setTokens({ access_token: 'a.b.c', refresh_token: 'r', expires_in: 600 })
  t.equal(await c.getAccessToken(), 'a.b.c')
  await new Promise<void>((resolve, reject) => {
    const request = factory.deleteDatabase('app')
    request.onsuccess = () => { resolve() }
    request.onerror = () => { reject(request.error) }
  })
  const fresh = createRotorClient({ baseUrl: 'http://127.0.0.1:1', storage: indexedDbStorage({ indexedDB: factory, database: 'app' }) })
  t.equal(await fresh.getAccessToken(), null, 'the record went with the database')
  await c.setTokens({ access_token: 'd.e.f', refresh_token: 'r2', expires_in: 600 })
  t.equal(await fresh.getAccessToken(), 'd.e.f', 'the first client reopened it and wrote again')
  fresh.close()
})

test('a database a newer client upgraded cannot be opened: the call rejects, nobody is signed out, and the next call tries again', async (t) => {
  const factory = new IDBFactory()
  await new Promise<void>((resolve) => {
    const request = factory.open('@rotor/client', 2)
    request.onsuccess = () => { request.result.close(); resolve() }
  })
  const told: SignOutReason[] = []
  const c = createRotorClient({ baseUrl: 'http://127.0.0.1:1', storage: indexedDbStorage({ indexedDB: factory }), onSignedOut: (reason) => { told.push(reason) } })
  await t.rejects(c.getAccessToken(), { name: 'VersionError' })
  await t.rejects(c.getAccessToken(), { name: 'VersionError' }, 'opened again, and refused again')
  t.same(told, [])
  c.close()
})

test('an aborted transaction rejects the read or write it carried', async (t) => {
  const factory = new IDBFactory()
  const storage = indexedDbStorage({ indexedDB: factory })
  await storage.write('k', { generation: 1, signedOut: 'signed_out' }, undefined)
  // Every transaction from here on is aborted once its first request is made (as a quota error would).
  const database = Object.getPrototypeOf(await new Promise<object>((resolve) => {
    const request = factory.open('@rotor/client', 1)
    request.onsuccess = () => { request.result.close(); resolve(request.result) }
  })) as { transaction: (...args: unknown[]) => { abort: () => void } }
  const original = database.transaction
  database.transaction = function (this: unknown, ...args: unknown[]) {
    const transaction = original.apply(this, args)
    queueMicrotask(() => { transaction.abort() })
    return transaction
  }
  t.teardown(() => { database.transaction = original })
  await t.rejects(storage.read('k'), { name: 'AbortError' })
  await t.rejects(storage.write('k', { generation: 2, signedOut: 'signed_out' }, 1), { name: 'AbortError' })
  database.transaction = original
  t.same(await storage.read('k'), { generation: 1, signedOut: 'signed_out' }, 'nothing was written')
  storage.close?.()
})

test('without IndexedDB there is no IndexedDB storage; with it, it is the default', async (t) => {
  t.throws(() => indexedDbStorage(), TypeError)
  const factory = new IDBFactory()
  replaceGlobal(t, 'indexedDB', factory)
  const c = createRotorClient({ baseUrl: 'http://127.0.0.1:1' })
  await c.setTokens({ access_token: 'a.b.c', refresh_token: 'r', expires_in: 600 })
  const other = indexedDbStorage()
  t.match(await other.read('default'), { generation: 1, pair: { access: 'a.b.c', refresh: 'r' } }, 'the default client wrote to the global indexedDB')
  other.close?.()
  c.close()
})
