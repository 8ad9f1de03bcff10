// What the store is to the rest of Rotor: the records of one token, the atomic rotation, and the
// interface both stores (memory.ts, redis.ts) implement.

/** What the store knows of one token: enough to find every record that could refuse it. */
export interface TokenRef {
  sub: string
  sid: string
  jti: string
  /** The session's issuance time (µs), compared with a subject-wide revocation. */
  issuedUs: number
}

/**
 * One session as the subject's index lists it. Kept in the same atomic steps as the denylist:
 * written at issuance and at every rotation, gone once the session expired or was revoked.
 */
export interface SessionEntry {
  sid: string
  /** When the session was issued (µs): `created_at` and `auth_time` are its second. */
  createdUs: number
  /** When a pair was last minted for it (s): the issuance, then every rotation. */
  lastRefreshedAt: number
  /** Its refresh token's `exp` (s), which never passes SESSION_MAX_TTL. */
  expiresAt: number
  /** The name of the API key that issued it; null for legacy exchanges and sessions before Rotor 0.3. */
  clientId: string | null
  /** The label the backend gave at issuance (≤ 128 characters), or null. */
  device: string | null
}

/** What the index does when it writes: the subject's cap, and how long the revocations it writes must last. */
export interface SessionIndexSettings {
  /** MAX_SESSIONS_PER_SUBJECT: one more ends the subject's oldest. */
  maxPerSubject: number
  /** LEEWAY (s): a session lives until its expiresAt plus this. */
  leewaySec: number
  /** How far past its refresh token an access token of the session may live (s): max(0, access TTL − refresh TTL). */
  accessOverhangSec: number
}

/** A session the index ended to make room for a newer one (MAX_SESSIONS_PER_SUBJECT). */
export type Evicted = string[]

export interface RotateInput extends TokenRef {
  /** The id the successor refresh token gets (derived): once it is rotated too, the window is over. */
  childJti: string
  nowMs: number
  /** How long the rotated jti must stay recorded: the old token's remaining life. */
  ttlMs: number
  graceMs: number
  /** false: shadow mode, a reuse revokes nothing. */
  enforce: boolean
  /** How long a session revocation must last for every token of the session to have expired. */
  sessionTtlMs: number
  /** The session as the index lists it after this rotation (its successor's expiry, refreshed now). */
  entry: SessionEntry
  /**
   * A bound session's DPoP proof: its one-time id (as `consumeOnce` records it) and how long the
   * record must last. Seen before: nothing is done, and the outcome is `replayed`.
   */
  proof?: { id: string, ttlMs: number } | undefined
  /**
   * The request's rate-limit budget, counted by the rotation in the same step (see
   * plugins/rate-limit.ts): over its limit, nothing else is done and the outcome is `limited`.
   * Only the Redis store takes one; the in-process store never gets one (its rate limit is the
   * plugin's own, in-process).
   */
  budget?: BudgetRef | undefined
}

/** A request's rate-limit budget: its Redis key, the requests it allows per window, the window (ms). */
export interface BudgetRef { key: string, max: number, windowMs: number }

/** What counting a request did to its budget: the requests of the window so far (this one included), and the window's time left (ms). */
export interface BudgetCount { current: number, ttlMs: number }

export type RotateOutcome =
  | { status: 'rotated' | 'grace', rotatedAtMs: number, evicted: Evicted, spent?: BudgetCount | undefined }
  | { status: 'reused' | 'revoked' | 'replayed', spent?: BudgetCount | undefined }
  | { status: 'limited', spent: BudgetCount }

export type TokenState = 'active' | 'revoked' | 'rotated'

/**
 * The denylist. Every method either does all it says or throws StoreUnavailableError; every key
 * it writes has a TTL. `rotate` is one atomic step: check the session, check and record the jti,
 * decide reuse.
 */
export interface Denylist {
  /**
   * Rotates a refresh token, in one atomic step: refuses it if its session or subject is revoked,
   * records its jti (with `ttlMs`, the token's remaining life) and decides whether a second
   * presentation is a retry within the grace window or a reuse (which revokes the session when
   * `enforce` is set).
   *
   * @param input - the token's ids, the successor's jti, the clock and the window's settings
   * @returns `rotated` (first presentation) or `grace` (a retry; `rotatedAtMs` is the first
   * rotation's time, from which the same successor is derived); `reused` or `revoked`
   * @throws StoreUnavailableError when the store cannot be reached or did not confirm the write
   *
   * @example
   * const outcome = await denylist.rotate({ sub, sid, jti, issuedUs, childJti, nowMs: Date.now(),
   *   ttlMs: 3_600_000, graceMs: 10_000, enforce: true, sessionTtlMs: 7 * 86_400_000 })
   * if (outcome.status === 'reused') throw new TokenReusedError({ sub, sid, jti }, true)
   */
  rotate: (input: RotateInput) => Promise<RotateOutcome>
  state: (ref: TokenRef) => Promise<TokenState>
  revokeToken: (ref: TokenRef, ttlMs: number) => Promise<void>
  /** Revokes a session (its refresh tokens and access tokens) and drops it from the index. */
  revokeSession: (ref: TokenRef, ttlMs: number) => Promise<void>
  /** Every session of `sub` issued at or before `untilUs` is revoked (the mark only moves forward) and leaves the index. */
  revokeSubject: (sub: string, untilUs: number, ttlMs: number) => Promise<void>
  /**
   * Lists a new session in its subject's index (or updates it), in one atomic step that also
   * drops the expired ones and, past MAX_SESSIONS_PER_SUBJECT, revokes the oldest others.
   *
   * @returns the sids revoked to make room (usually none)
   * @throws StoreUnavailableError when the store cannot be reached
   */
  recordSession: (sub: string, entry: SessionEntry, nowMs: number) => Promise<Evicted>
  /** The subject's live sessions, newest first (by issuance). */
  listSessions: (sub: string, nowMs: number) => Promise<SessionEntry[]>
  /**
   * Ends the listed sessions of `sub` named by `sids`, or all of them but `except`: each is revoked
   * and leaves the index, atomically. Sessions not listed (unknown, ended, expired) are left alone.
   *
   * @returns the sids it ended
   */
  endSessions: (sub: string, which: { sids: string[] } | { except: string }, nowMs: number) => Promise<string[]>
  /** Records a one-time id (an exchanged legacy token's jti, a DPoP proof's); false when it was recorded already (atomic, like SET NX). */
  consumeOnce: (sub: string, id: string, ttlMs: number) => Promise<boolean>
  /**
   * When the store began (ms since the epoch): its data holds nothing older. 0 for the in-process
   * store (it lives and dies with the process); throws StoreUnavailableError while not known.
   */
  epoch: () => number
  /** Resolves when the store answers; throws StoreUnavailableError otherwise. */
  ping: () => Promise<void>
  close: () => void
}
