// Where a session's pair lives, and how its holders take turns. The default in a browser is
// IndexedDB: every tab of the origin reads the same record, and a transaction committed in one tab
// is what the next transaction in any tab reads (localStorage gives no such promise across the
// renderer processes tabs run in). Turns are taken with the Web Locks API, and changes announced
// on a BroadcastChannel; where either is missing, the fallbacks below keep one tab correct.
import type { Pair, SignOutReason } from './wire.js'
import type { DpopKey } from './dpop.js'

/** One session's record. `generation` grows by one with every write, in every tab. */
export interface StoredSession {
  generation: number
  /** The current pair; absent once signed out. */
  pair?: Pair
  /** Why the session ended, once it has. */
  signedOut?: SignOutReason
  /** With `dpop: true`: the key the session is bound to (made before the login, gone at sign-out). */
  dpop?: DpopKey
}

/**
 * Where the client keeps a session. Bring your own to keep it elsewhere (a cookie-backed store
 * in a BFF, sessionStorage for one tab only); `read` and `write` are all it must do.
 */
export interface RotorStorage {
  read: (key: string) => Promise<StoredSession | undefined>
  /**
   * Writes `value` if the stored generation is still `expected` (`undefined`: nothing stored) and
   * answers whether it did. It announces the change to `subscribe`rs elsewhere.
   */
  write: (key: string, value: StoredSession, expected: number | undefined) => Promise<boolean>
  /**
   * Runs `task` while no other holder of `key`'s lock runs: across the tabs that share this
   * storage. Without it, the client serialises within its own process only.
   */
  lock?: <T>(key: string, task: () => Promise<T>) => Promise<T>
  /** Calls `listener` when another tab or client changed `key`. Answers how to stop. */
  subscribe?: (key: string, listener: () => void) => () => void
  /** Lets go of whatever the storage holds open (a database connection, a channel). */
  close?: () => void
}

/** The slice of the Web Locks API the client uses (so that it type-checks without the DOM lib). */
interface LockManagerLike {
  request: <T>(name: string, callback: () => Promise<T>) => Promise<T>
}

/** Web Locks, where the runtime has them (browsers; Node from 24.5, within one process). */
export function webLocks (): LockManagerLike | undefined {
  return (globalThis as { navigator?: { locks?: LockManagerLike } }).navigator?.locks
}

/** For promises whose failure is reported elsewhere, or not needed. */
export function ignore (): void {}

/** An in-process lock per key: each task starts when the one before it has settled. */
export function inProcessLock (): <T>(key: string, task: () => Promise<T>) => Promise<T> {
  const tails = new Map<string, Promise<void>>()
  return async function lock<T> (key: string, task: () => Promise<T>): Promise<T> {
    const before = tails.get(key) ?? Promise.resolve()
    let release!: () => void
    const mine = new Promise<void>((resolve) => { release = resolve })
    const tail = before.then(() => mine)
    tails.set(key, tail)
    await before
    try {
      return await task()
    } finally {
      release()
      if (tails.get(key) === tail) tails.delete(key)
    }
  }
}

/** Listeners per key, for the storages that announce changes in-process. */
function listeners (): { add: (key: string, listener: () => void) => () => void, notify: (key: string) => void } {
  const byKey = new Map<string, Set<() => void>>()
  return {
    add (key, listener) {
      const set = byKey.get(key) ?? new Set()
      byKey.set(key, set)
      set.add(listener)
      return () => { set.delete(listener) }
    },
    notify (key) {
      for (const listener of byKey.get(key) ?? []) listener()
    }
  }
}

/**
 * Keeps sessions in this process's memory: the default in Node, and in a browser without
 * IndexedDB (each tab then has its own session). Clients given the same instance share it.
 */
export function memoryStorage (): RotorStorage {
  const records = new Map<string, StoredSession>()
  const watchers = listeners()
  return {
    async read (key) {
      const record = records.get(key)
      return record === undefined ? undefined : structuredClone(record)
    },
    async write (key, value, expected) {
      if (records.get(key)?.generation !== expected) return false
      records.set(key, structuredClone(value))
      watchers.notify(key)
      return true
    },
    lock: inProcessLock(),
    subscribe: watchers.add
  }
}

/** The slices of IndexedDB the client uses. */
interface IdbRequestLike<T> { result: T, error: unknown, onsuccess: (() => void) | null, onerror: (() => void) | null }
interface IdbOpenRequestLike extends IdbRequestLike<IdbDatabaseLike> { onupgradeneeded: (() => void) | null }
interface IdbStoreLike {
  get: (key: string) => IdbRequestLike<unknown>
  put: (value: unknown, key: string) => unknown
}
interface IdbTransactionLike {
  objectStore: (name: string) => IdbStoreLike
  oncomplete: (() => void) | null
  onabort: (() => void) | null
  error: unknown
}
interface IdbDatabaseLike {
  objectStoreNames: { contains: (name: string) => boolean }
  createObjectStore: (name: string) => unknown
  transaction: (store: string, mode: 'readonly' | 'readwrite', options?: { durability?: 'strict' | 'relaxed' | 'default' }) => IdbTransactionLike
  close: () => void
  onversionchange: (() => void) | null
}
interface IdbFactoryLike { open: (name: string, version?: number) => IdbOpenRequestLike }
interface ChannelLike {
  postMessage: (message: unknown) => void
  close: () => void
  onmessage: ((event: { data: unknown }) => void) | null
  unref?: () => void
}

const STORE = 'sessions'

/** What `indexedDbStorage` needs from the runtime; the globals by default. */
export interface IndexedDbStorageOptions {
  /** The database's name, and the prefix of the lock and channel names. Default `@rotor/client`. */
  database?: string
  /** For runtimes and tests that bring their own. Default: the global `indexedDB`. */
  indexedDB?: unknown
}

function settled<T> (request: IdbRequestLike<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => { resolve(request.result) }
    request.onerror = () => { reject(request.error) }
  })
}

/** Settles when the transaction has committed (or rejects when it was aborted: an error aborts it). */
function finished (transaction: IdbTransactionLike): Promise<void> {
  const done = new Promise<void>((resolve, reject) => {
    transaction.oncomplete = () => { resolve() }
    transaction.onabort = () => { reject(new Error('an IndexedDB transaction was aborted', { cause: transaction.error })) }
  })
  // Awaited by the caller; a request's own error, which comes first, must not leave this unhandled.
  done.catch(ignore)
  return done
}

/**
 * The lock of clients in this tab (or process) where Web Locks are missing: keyed by database and
 * session, so clients of one session take turns even with storages of their own.
 */
const tabLock = inProcessLock()

/**
 * Keeps sessions in IndexedDB, shared by the origin's tabs: the default where `indexedDB` exists.
 * A write resolves once its transaction has committed, so the next tab to take the lock reads it.
 */
export function indexedDbStorage (options: IndexedDbStorageOptions = {}): RotorStorage {
  const name = options.database ?? '@rotor/client'
  const factory = (options.indexedDB ?? (globalThis as { indexedDB?: unknown }).indexedDB) as IdbFactoryLike | undefined
  if (factory === undefined) throw new TypeError('indexedDbStorage: this runtime has no indexedDB (use memoryStorage, or pass options.indexedDB)')
  const watchers = listeners()
  let opening: Promise<IdbDatabaseLike> | undefined
  let channel: ChannelLike | undefined

  function database (): Promise<IdbDatabaseLike> {
    opening ??= new Promise<IdbDatabaseLike>((resolve, reject) => {
      const request = (factory as IdbFactoryLike).open(name, 1)
      request.onupgradeneeded = () => {
        if (!request.result.objectStoreNames.contains(STORE)) request.result.createObjectStore(STORE)
      }
      request.onsuccess = () => {
        const db = request.result
        // Another tab upgrades the schema (a newer client): step aside, reopen on next use.
        db.onversionchange = () => { db.close(); opening = undefined }
        resolve(db)
      }
      // A newer client upgraded the database past version 1 (VersionError), or storage is off.
      request.onerror = () => { opening = undefined; reject(request.error) }
    })
    return opening
  }

  /** The channel that tells the origin's other tabs a key changed; none where BroadcastChannel is missing. */
  function tabs (): ChannelLike | undefined {
    const BroadcastChannelClass = (globalThis as unknown as { BroadcastChannel?: new (name: string) => ChannelLike }).BroadcastChannel
    if (channel === undefined && BroadcastChannelClass !== undefined) {
      channel = new BroadcastChannelClass(name)
      // Node: an open channel must not keep the process alive.
      channel.unref?.()
      channel.onmessage = (event) => {
        const data = event.data as { key?: unknown } | null
        if (typeof data?.key === 'string') watchers.notify(data.key)
      }
    }
    return channel
  }

  return {
    async read (key) {
      const transaction = (await database()).transaction(STORE, 'readonly')
      const value = await settled(transaction.objectStore(STORE).get(key))
      return value === undefined ? undefined : value as StoredSession
    },
    async write (key, value, expected) {
      // One readwrite transaction reads and writes: IndexedDB runs those of every tab one at a
      // time, so this compare-and-set holds even where Web Locks are missing.
      const transaction = (await database()).transaction(STORE, 'readwrite', { durability: 'strict' })
      const done = finished(transaction)
      const store = transaction.objectStore(STORE)
      const current = await settled(store.get(key)) as StoredSession | undefined
      const wrote = current?.generation === expected
      if (wrote) store.put(value, key)
      await done
      if (wrote) {
        // Hints only: whoever hears one reads the record again.
        tabs()?.postMessage({ key, generation: value.generation })
        watchers.notify(key)
      }
      return wrote
    },
    async lock (key, task) {
      const locks = webLocks()
      return locks === undefined ? await tabLock(`${name}:${key}`, task) : await locks.request(`${name}:${key}`, task)
    },
    subscribe (key, listener) {
      tabs()
      return watchers.add(key, listener)
    },
    close () {
      channel?.close()
      channel = undefined
      void opening?.then((db) => { db.close() }, ignore)
      opening = undefined
    }
  }
}
