// The client: one session's pair, kept fresh. A refresh happens only under the session's lock and
// only after the record has been read again inside it: if another tab (or another call in this
// one) rotated meanwhile, its pair is adopted and Rotor is not asked. Only Rotor's verdict on the
// refresh token signs out; an outage, a rate limit or a lost answer is waited out.
import { ignore, indexedDbStorage, inProcessLock, memoryStorage, type RotorStorage, type StoredSession } from './storage.js'
import { pairOf, refresh, revoke, type Outcome, type Pair, type Prover, type RouteFamily, type SignOutReason, type TokenPairInput, type WireOptions } from './wire.js'
import { createDpopKey, dpopProof, type DpopKey } from './dpop.js'

export interface RotorClientOptions {
  /** Where Rotor answers, e.g. `https://auth.example.com` (no trailing path). */
  baseUrl: string
  /** `v1` (default): Rotor's routes. `simplejwt`: the routes a SimpleJWT front end already calls. */
  routes?: RouteFamily
  /**
   * Where the pair lives. Default: `indexedDbStorage()` where IndexedDB exists (shared by the
   * origin's tabs), else `memoryStorage()` (this process only).
   */
  storage?: RotorStorage
  /** The session's name in the storage: two sessions on one origin need two names. Default `default`. */
  name?: string
  /**
   * Refresh this long before the access token expires. Default 30. Never more than half the
   * token's lifetime, so short-lived tokens are not refreshed on every call.
   */
  refreshBeforeExpirySeconds?: number
  /** Called once in every tab (or client) when the session ends, with the reason. */
  onSignedOut?: (reason: SignOutReason) => void
  /** How long one call to Rotor may take. Default 10000 ms. */
  timeoutMs?: number
  /**
   * How long `getAccessToken()` keeps trying, once the access token has expired, while Rotor
   * cannot be reached or answers 503/429; then it rejects with `RotorUnavailableError` (the
   * session is kept: the next call tries again). Default 60.
   */
  maxWaitSeconds?: number
  /** The longest a single wait may be, whatever `Retry-After` says. Default 30. */
  maxRetryAfterSeconds?: number
  /** The fetch to use (a server's own, or one with a proxy agent). Default: the global fetch. */
  fetch?: typeof fetch
  /**
   * DPoP (RFC 9449): the session is bound to a P-256 key this client makes with WebCrypto, its
   * private half non-extractable, kept in the storage (IndexedDB: shared by the origin's tabs;
   * Node: in memory). Send `dpopThumbprint()` with the login as `dpop_jkt`; every refresh then
   * carries a proof of the key, and a refresh token copied elsewhere is refused. Default false.
   */
  dpop?: boolean
}

export interface RotorClient {
  /** Stores a pair (after login): every tab of the origin uses it from now on. */
  setTokens: (pair: TokenPairInput) => Promise<void>
  /**
   * A valid access token, refreshed first when it expires within `refreshBeforeExpirySeconds`;
   * `null` once signed out (or before `setTokens`). Rejects with `RotorUnavailableError` when
   * Rotor could not be reached for `maxWaitSeconds`, and with `RotorRefusedError` on an answer
   * that says the client is misconfigured (a 404 for a wrong `baseUrl`).
   */
  getAccessToken: () => Promise<string | null>
  /**
   * `fetch` with `Authorization: Bearer <access token>` (none once signed out). When the answer
   * is a 401 saying the token expired, it refreshes once and sends the request again.
   */
  fetch: (input: Parameters<typeof fetch>[0], init?: RequestInit) => Promise<Response>
  /**
   * Revokes the session at Rotor and ends it in every tab. Answers whether Rotor confirmed the
   * revocation (the session is ended here either way).
   */
  signOut: () => Promise<boolean>
  /**
   * With `dpop: true`: the thumbprint (RFC 7638) of the key the next session is bound to, for the
   * login request (`dpop_jkt`); the key is made on first call, once for all the origin's tabs,
   * and a new one after each sign-out.
   */
  dpopThumbprint: () => Promise<string>
  /** Stops listening to the other tabs (the client is not used after this). */
  close: () => void
}

/** Rotor could not be reached, or kept answering 503/429, for `maxWaitSeconds`. The session is kept. */
export class RotorUnavailableError extends Error {
  override readonly name = 'RotorUnavailableError'
  /** Why: `denylist_unavailable`, `rate_limited`, `network_error`, `http_502`... */
  readonly code: string
  /** Rotor's `Retry-After` on its last answer, in ms, when it sent one. */
  readonly retryAfterMs: number | undefined
  constructor (code: string, retryAfterMs?: number) {
    super(`Rotor could not refresh the session (${code}); the session is kept and the next call tries again`)
    this.code = code
    this.retryAfterMs = retryAfterMs
  }
}

/** Rotor answered something that is neither a pair nor a verdict on the token: check baseUrl and routes. */
export class RotorRefusedError extends Error {
  override readonly name = 'RotorRefusedError'
  readonly status: number
  readonly code: string
  constructor (status: number, code: string) {
    super(`Rotor answered ${status} (${code}) to a refresh: check the client's baseUrl and routes options`)
    this.status = status
    this.code = code
  }
}

/** 401 answers of a backend that mean "this access token is too old": refresh once and send again. */
const EXPIRED_CODES = new Set(['token_expired', 'token_not_valid'])

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** A lock for storages that bring none, per storage: clients sharing one storage take turns. */
const ownLocks = new WeakMap<RotorStorage, <T>(key: string, task: () => Promise<T>) => Promise<T>>()

function defaultStorage (): RotorStorage {
  return (globalThis as { indexedDB?: unknown }).indexedDB === undefined ? memoryStorage() : indexedDbStorage()
}

function nonNegative (value: number | undefined, fallback: number, option: string): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new TypeError(`createRotorClient: ${option} must be a number ≥ 0`)
  return value
}

export function createRotorClient (options: RotorClientOptions): RotorClient {
  if (typeof options.baseUrl !== 'string' || !/^https?:\/\//.test(options.baseUrl)) throw new TypeError('createRotorClient: baseUrl must be an http(s) URL')
  const routes = options.routes ?? 'v1'
  if (routes !== 'v1' && routes !== 'simplejwt') throw new TypeError('createRotorClient: routes must be "v1" or "simplejwt"')
  const storage = options.storage ?? defaultStorage()
  /** A storage this client made is this client's to close. */
  const ownStorage = options.storage === undefined
  const key = options.name ?? 'default'
  const marginMs = nonNegative(options.refreshBeforeExpirySeconds, 30, 'refreshBeforeExpirySeconds') * 1000
  const maxWaitMs = nonNegative(options.maxWaitSeconds, 60, 'maxWaitSeconds') * 1000
  const maxRetryAfterMs = nonNegative(options.maxRetryAfterSeconds, 30, 'maxRetryAfterSeconds') * 1000
  const fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init))
  const dpop = options.dpop ?? false
  if (typeof dpop !== 'boolean') throw new TypeError('createRotorClient: dpop must be true or false')
  const wire: WireOptions = { baseUrl: options.baseUrl, routes, fetch: fetchImpl, timeoutMs: nonNegative(options.timeoutMs, 10_000, 'timeoutMs'), now: Date.now }
  let lock = storage.lock
  if (lock === undefined) {
    lock = ownLocks.get(storage) ?? inProcessLock()
    ownLocks.set(storage, lock)
  }
  const locked = lock

  /**
   * The highest generation this client has seen. Its writes go above it, so generations only
   * grow even when the record vanished (site data cleared) and the storage restarts from nothing.
   */
  let highest = 0
  /**
   * The generation whose sign-out `onSignedOut` was told about. A record that was signed out
   * before this client first read it is where it starts, not news: a page opened after a sign-out
   * is not told again (an app that navigates to its login page there would loop).
   */
  let toldGeneration = -1
  let baseline = false
  /** The refresh this client has in flight, shared by every caller. */
  let flight: Promise<string | null> | undefined
  /** After a failed refresh while the access token was still good: not before this time (ms). */
  let retryNotBefore = 0
  let failures = 0

  /** Takes note of a record read from (or written to) the storage; tells about a sign-out once. */
  function adopt (record: StoredSession | undefined): StoredSession | undefined {
    if (!baseline) {
      baseline = true
      if (record?.signedOut !== undefined) toldGeneration = record.generation
    }
    highest = Math.max(highest, record?.generation ?? 0)
    if (record?.signedOut !== undefined && record.generation > toldGeneration) {
      toldGeneration = record.generation
      try {
        options.onSignedOut?.(record.signedOut)
      } catch {
        // The application's callback failing must not break the client.
      }
    }
    return record
  }

  /** The generation a write after `stored` takes. */
  function after (stored: StoredSession | undefined): number {
    return Math.max(stored?.generation ?? 0, highest) + 1
  }

  const unsubscribe = storage.subscribe?.(key, () => {
    // A hint that another tab or client wrote: read the record again (and tell about a sign-out).
    void storage.read(key).then(adopt, ignore)
  })
  // The starting point, read now: a sign-out in another tab before this one's first call is news.
  void storage.read(key).then(adopt, ignore)

  /** Whether the pair's access token is good for at least the margin (at most half its life). */
  function fresh (pair: Pair, now: number): boolean {
    const margin = Math.min(marginMs, Math.max(0, (pair.accessExpiresAt - pair.obtainedAt) / 2))
    return now < pair.accessExpiresAt - margin
  }

  /** How long to wait before asking again: Retry-After (bounded) or a backoff, jittered. */
  function delayAfter (outcome: Extract<Outcome, { kind: 'retry' }>): number {
    failures++
    const base = Math.min(outcome.retryAfterMs ?? 500 * 2 ** Math.min(failures - 1, 10), maxRetryAfterMs)
    // Jitter upwards only: never earlier than Rotor asked, and tabs that failed together spread out.
    return base + Math.random() * Math.min(base / 4, 1000)
  }

  /**
   * Writes the record that follows `previous` if nobody wrote since; answers what is stored
   * afterwards. Someone else's write stands: a sign-out or a login in another tab (they take no
   * lock, so that they never wait behind a refresh that is waiting out an outage), or a refresh
   * where the storage has no cross-tab lock.
   */
  async function advance (previous: StoredSession | undefined, next: Omit<StoredSession, 'generation'>): Promise<StoredSession | undefined> {
    // A new pair keeps the session's DPoP key; a sign-out lets it go.
    const bound = next.pair === undefined ? undefined : previous?.dpop
    const value = { ...next, ...(bound === undefined ? {} : { dpop: bound }), generation: after(previous) }
    if (await storage.write(key, value, previous?.generation)) return adopt(value)
    return adopt(await storage.read(key))
  }

  /**
   * Under the lock: reads the record again and refreshes only if it still holds the pair that
   * needed it. `stale`: the access token a backend refused (refresh even if it looks fresh).
   */
  async function refreshLocked (stale: string | undefined): Promise<string | null> {
    const deadline = Date.now() + maxWaitMs
    for (;;) {
      const current = adopt(await storage.read(key))
      const pair = current?.pair
      if (pair === undefined) return null
      const now = Date.now()
      const needed = stale === undefined ? !fresh(pair, now) : pair.access === stale
      if (!needed) return pair.access
      if (now < retryNotBefore && now < pair.accessExpiresAt) return pair.access
      const outcome = await refresh(wire, pair.refresh, proverOf(current?.dpop))
      switch (outcome.kind) {
        case 'rotated': {
          failures = 0
          retryNotBefore = 0
          // Lost to a sign-out or a login written meanwhile (neither takes the lock): theirs stands.
          return (await advance(current, { pair: outcome.pair }))?.pair?.access ?? null
        }
        case 'ended':
          await advance(current, { signedOut: outcome.reason })
          return null
        case 'refused':
          throw new RotorRefusedError(outcome.status, outcome.code)
        case 'retry': {
          const delay = delayAfter(outcome)
          // The access token still works: hand it out and try again later, without waiting now.
          if (Date.now() < pair.accessExpiresAt) {
            retryNotBefore = Date.now() + delay
            return pair.access
          }
          if (Date.now() + delay > deadline) throw new RotorUnavailableError(outcome.code, outcome.retryAfterMs)
          await sleep(delay)
        }
      }
    }
  }

  /** Signs proofs with the session's key, if it has one (a session set without a key refreshes as a bearer session). */
  function proverOf (key: DpopKey | undefined): Prover | undefined {
    return key === undefined ? undefined : async (htm, htu, nonce) => await dpopProof(key, htm, htu, nonce)
  }

  /** One refresh in flight per client; across clients and tabs, one per session (the lock). */
  function refreshOnce (stale?: string): Promise<string | null> {
    flight ??= locked(key, () => refreshLocked(stale)).finally(() => { flight = undefined })
    return flight
  }

  async function getAccessToken (): Promise<string | null> {
    // Read every time (a few hundred µs in IndexedDB): what another tab wrote is never missed, even
    // by a tab that was frozen or has no BroadcastChannel.
    const current = adopt(await storage.read(key))
    if (current?.pair === undefined) return null
    if (fresh(current.pair, Date.now())) return current.pair.access
    return await refreshOnce()
  }

  async function saysExpired (response: Response): Promise<boolean> {
    if (/error="?invalid_token"?/i.test(response.headers.get('www-authenticate') ?? '')) return true
    try {
      // A body that is not an object (null, not JSON) throws here, and says nothing.
      return EXPIRED_CODES.has((await response.clone().json() as { code: string }).code)
    } catch {
      return false
    }
  }

  function authorized (request: Request, token: string | null): Request {
    const headers = new Headers(request.headers)
    if (token === null) headers.delete('authorization')
    else headers.set('authorization', `Bearer ${token}`)
    return new Request(request, { headers })
  }

  return {
    async setTokens (input) {
      const pair = pairOf(input, Date.now())
      failures = 0
      retryNotBefore = 0
      for (;;) {
        const stored = await storage.read(key)
        const value = { generation: after(stored), pair, ...(stored?.dpop === undefined ? {} : { dpop: stored.dpop }) }
        if (await storage.write(key, value, stored?.generation)) {
          adopt(value)
          return
        }
      }
    },

    getAccessToken,

    async fetch (input, init) {
      const request = new Request(input, init)
      const token = await getAccessToken()
      const first = await fetchImpl(authorized(request.clone(), token))
      if (first.status !== 401 || token === null || !await saysExpired(first)) return first
      const next = await refreshOnce(token)
      if (next === null || next === token) return first
      await first.body?.cancel()
      return await fetchImpl(authorized(request, next))
    },

    async signOut () {
      // Ended here first, in every tab at once; then revoked at Rotor (which may be slow or down).
      for (;;) {
        const current = adopt(await storage.read(key))
        if (current?.pair === undefined) return true
        if (await storage.write(key, { generation: after(current), signedOut: 'signed_out' }, current.generation)) {
          adopt(await storage.read(key))
          return await revoke(wire, current.pair.refresh)
        }
      }
    },

    async dpopThumbprint () {
      if (!dpop) throw new TypeError('dpopThumbprint: the client was created without dpop: true')
      // Under the session's lock: tabs asking at once share one key.
      return await locked(key, async () => {
        for (;;) {
          const current = adopt(await storage.read(key))
          if (current?.dpop !== undefined) return current.dpop.jkt
          const made = await createDpopKey()
          // A session in progress keeps its pair; a sign-out already told is not written again
          // (every tab would hear of it once more, and a login page that redirects on it would loop).
          const value = { ...(current?.pair === undefined ? {} : { pair: current.pair }), dpop: made, generation: after(current) }
          if (await storage.write(key, value, current?.generation)) return made.jkt
        }
      })
    },

    close () {
      unsubscribe?.()
      if (ownStorage) storage.close?.()
    }
  }
}
