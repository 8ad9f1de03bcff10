/**
 * Auth.js (next-auth v5) keeping a Rotor session alive: the `jwt` callback refreshes the access
 * token through Rotor shortly before it expires, with `@rotor/client` (its one-refresh-at-a-time
 * lock, its table of which answers sign out, its handling of Retry-After).
 *
 * This file needs no next-auth to type-check: the few Auth.js types it touches are declared
 * below. In a Next.js app, wire it up in `auth.ts`:
 *
 *   import NextAuth from 'next-auth'
 *   import Credentials from 'next-auth/providers/credentials'
 *   import { createJwtCallback, sessionCallback } from './rotor-auth'
 *
 *   export const { handlers, auth, signIn, signOut } = NextAuth({
 *     session: { strategy: 'jwt' },
 *     providers: [Credentials({
 *       // Your backend checks the password, then asks Rotor for a pair (POST /v1/tokens with its
 *       // API key: the API key never reaches the browser) and returns it: { id, rotor: pair }.
 *       authorize: async (credentials) => loginThroughYourBackend(credentials)
 *     })],
 *     callbacks: {
 *       jwt: createJwtCallback({ rotorUrl: process.env.ROTOR_URL! }),
 *       session: sessionCallback
 *     }
 *   })
 *
 * and in the browser: `if (session?.error === 'RefreshTokenError') signIn()`.
 *
 * What the callback does with Rotor's answers:
 * - 200: the new pair replaces the old one (Rotor rotates the refresh token on every refresh);
 * - 401 (`token_reused`, `token_revoked`, `token_expired`, `token_invalid`; SimpleJWT's
 *   `token_not_valid`): the session is over. The Rotor tokens are dropped and
 *   `error: 'RefreshTokenError'` is set, so the app signs the user out. Never retry these: a
 *   replayed refresh token is exactly what reuse detection looks for;
 * - 503 (`denylist_unavailable`), 429 (`rate_limited`), another 5xx, a timeout, no connection:
 *   not the user's fault. The session is kept as it is, and Rotor is not asked again before its
 *   `Retry-After` has passed. The access token is still good for a while (the refresh starts
 *   `refreshMarginSeconds` early); once it has expired, backends answer 401 until a refresh works.
 *   Any other answer (a 404 for a wrong `rotorUrl`, a 400) keeps the session too: only Rotor's
 *   verdict on the token signs out.
 *
 * Where to call it from: refresh where the cookie can be written, i.e. in middleware (call
 * `auth()` there) or in route handlers. A refresh made while rendering a Server Component cannot
 * update the cookie: the next request presents the old refresh token again. Within Rotor's
 * `REFRESH_REUSE_GRACE` (10 s by default) Rotor answers it with the same pair, so concurrent
 * requests are fine; later it is reuse, and Rotor ends the session.
 *
 * The Next.js server refreshes for every user from one address: list it in Rotor's
 * `RATE_LIMIT_ALLOW`, or all users share one rate-limit budget.
 *
 * Works in the Node and the Edge runtime (fetch, atob and AbortSignal.timeout only, here and in
 * @rotor/client).
 */
import { createRotorClient, expiryOf, type RotorStorage, type RotorUnavailableError, type StoredSession } from '@rotor/client'

export { expiryOf }

/** A Rotor token response (`POST /v1/tokens`, `POST /v1/tokens/refresh`). */
export interface RotorPair {
  access_token: string
  refresh_token: string
  /** `Bearer`. */
  token_type: string
  expires_in: number
  refresh_expires_in: number
}

/** The user object your `authorize()` returns: whatever you like, plus the pair from Rotor. */
export interface RotorUser {
  id?: string
  name?: string | null
  email?: string | null
  rotor?: RotorPair
}

/** The JWT Auth.js keeps in its (encrypted) session cookie, with what this module adds. */
export interface RotorJWT {
  sub?: string
  name?: string | null
  email?: string | null
  picture?: string | null
  /** Rotor's access token, for calls to your backends (`Authorization: Bearer ...`). */
  accessToken?: string
  /** Rotor's refresh token; it never leaves the server (the cookie is encrypted). */
  refreshToken?: string
  /** When the access token expires, in ms since the epoch. */
  accessTokenExpires?: number
  /** Set when the session is over: the app signs the user out. */
  error?: 'RefreshTokenError'
  /** Rotor's code for the end of the session, e.g. `token_reused`. */
  errorCode?: string
  /** Rotor is not asked again before this time (ms since the epoch): after a 503 or a 429. */
  retryAt?: number
  /** Why the last refresh was deferred (`denylist_unavailable`, `rate_limited`, `network_error`...). */
  deferredBecause?: string
  [claim: string]: unknown
}

/** What Auth.js passes to the `jwt` callback, as much of it as this module reads. */
export interface JwtCallbackParams {
  token: RotorJWT
  user?: RotorUser | null
  account?: { provider: string, type: string } | null
  trigger?: 'signIn' | 'signUp' | 'update'
}

/** What Auth.js passes to the `session` callback, as much of it as this module reads. */
export interface SessionCallbackParams {
  session: { user?: { name?: string | null, email?: string | null }, expires: string, [key: string]: unknown }
  token: RotorJWT
}

export interface RotorRefreshOptions {
  /** Rotor's base URL as the Next.js server reaches it, e.g. `http://rotor:8080`. */
  rotorUrl: string
  /**
   * `v1`: `POST /v1/tokens/refresh`, whose errors say why (`token_reused`, `token_revoked`...).
   * `simplejwt`: `POST /api/auth/token/refresh/`, for a front end written for SimpleJWT (every
   * refused token is `token_not_valid` there). Default `v1`.
   */
  route?: 'v1' | 'simplejwt'
  /** Refresh this long before the access token expires. Default 60 s. */
  refreshMarginSeconds?: number
  /** How long a refresh may take. Default 5000 ms. */
  timeoutMs?: number
  /** Wait this long after a 503/429/network error that gave no `Retry-After`. Default 5 s. */
  defaultRetryAfterSeconds?: number
  /**
   * How long this process hands a refresh's new pair to requests that bring the cookie it
   * replaced (requests that were under way with the old cookie). Keep it at or below Rotor's
   * `REFRESH_REUSE_GRACE`, which does the same across processes. Default 10; never less than
   * `timeoutMs` and a second, so that the pair of a slow refresh is not forgotten before it is used.
   */
  reuseGraceSeconds?: number
  /** For tests. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>
  now?: () => number
}

/** The token without anything this module added: Rotor's tokens, expiry, retry and error state. */
function withoutRotor (token: RotorJWT): RotorJWT {
  const { accessToken: _a, refreshToken: _r, accessTokenExpires: _e, retryAt: _t, deferredBecause: _d, error: _x, errorCode: _c, ...rest } = token
  return rest
}

/** A token holding a fresh pair. */
function withPair (token: RotorJWT, access: string, refresh: string, expires: number): RotorJWT {
  return { ...withoutRotor(token), accessToken: access, refreshToken: refresh, accessTokenExpires: expires }
}

/** What to do for this token now. */
export type Decision = 'keep' | 'refresh' | 'wait' | 'signed-out'

export function decide (token: RotorJWT, nowMs: number, marginSeconds: number): Decision {
  if (token.error !== undefined || token.refreshToken === undefined) return 'signed-out'
  if (token.accessTokenExpires !== undefined && nowMs < token.accessTokenExpires - marginSeconds * 1000) return 'keep'
  if (token.retryAt !== undefined && nowMs < token.retryAt) return 'wait'
  return 'refresh'
}

/** The outcome of one call to Rotor. */
export type RefreshOutcome =
  | { kind: 'refreshed', access: string, refresh: string, expires: number }
  | { kind: 'ended', code: string }
  | { kind: 'deferred', code: string, retryAfterSeconds: number }

/**
 * The pairs this process's refreshes produced, by the refresh token they replaced, each kept for
 * `keepMs`: a storage of the application's own for @rotor/client (read and write are all one
 * needs). Requests that bring the same old cookie at once take turns on the client's lock and
 * find the pair the first one got, instead of presenting the old refresh token again.
 */
export function successorStorage (keepMs: number): RotorStorage {
  const records = new Map<string, { record: StoredSession, until: number }>()
  const live = (key: string): StoredSession | undefined => {
    const entry = records.get(key)
    if ((entry?.until ?? Infinity) <= Date.now()) records.delete(key)
    return records.get(key)?.record
  }
  return {
    read: async (key) => live(key),
    async write (key, value, expected) {
      for (const key of records.keys()) live(key)
      if (live(key)?.generation !== expected) return false
      records.set(key, { record: value, until: Date.now() + keepMs })
      return true
    }
  }
}

/**
 * Refreshes `refreshToken` once and says what came of it. Never throws. Concurrent calls for the
 * same token (with the same `storage`) make one request to Rotor and share its answer.
 */
export async function callRotor (refreshToken: string, options: RotorRefreshOptions, storage: RotorStorage): Promise<RefreshOutcome> {
  const now = options.now ?? Date.now
  const fallback = options.defaultRetryAfterSeconds ?? 5
  const client = createRotorClient({
    baseUrl: options.rotorUrl,
    routes: options.route ?? 'v1',
    storage,
    name: refreshToken,
    // A request is waiting: never wait out an outage here, defer and let a later request try.
    maxWaitSeconds: 0,
    timeoutMs: options.timeoutMs ?? 5000,
    ...(options.fetch === undefined ? {} : { fetch: options.fetch as typeof fetch })
  })
  // The first request with this cookie records its pair as due; the others find it recorded.
  await storage.write(refreshToken, { generation: 1, pair: { access: '', refresh: refreshToken, accessExpiresAt: 0, obtainedAt: 0 } }, undefined)
  try {
    await client.getAccessToken()
  } catch (error) {
    // 503, 429, a 5xx, no answer (RotorUnavailableError, with Rotor's Retry-After when it sent
    // one); an answer that is no verdict on the token, such as a 404 (RotorRefusedError): not the
    // user's fault. The session is kept and a later request asks again.
    const { code, retryAfterMs } = error as RotorUnavailableError
    return { kind: 'deferred', code, retryAfterSeconds: (retryAfterMs ?? fallback * 1000) / 1000 }
  }
  // The storage keeps every record for longer than a refresh can take, so it is still there.
  const record = await storage.read(refreshToken) as StoredSession
  if (record.pair === undefined) {
    // Signed out: 401 token_reused, token_revoked, token_expired, token_invalid (token_not_valid).
    return { kind: 'ended', code: String(record.signedOut) }
  }
  // The client counts expiry on this machine's clock; `now` may be the caller's own.
  return { kind: 'refreshed', access: record.pair.access, refresh: record.pair.refresh, expires: now() + record.pair.accessExpiresAt - Date.now() }
}

/**
 * The `jwt` callback. Concurrent calls for the same refresh token in this process share one
 * request to Rotor, and calls that bring it within `reuseGraceSeconds` get the pair it produced
 * (across processes, Rotor's grace window does the same).
 */
export function createJwtCallback (options: RotorRefreshOptions): (params: JwtCallbackParams) => Promise<RotorJWT> {
  const now = options.now ?? Date.now
  const margin = options.refreshMarginSeconds ?? 60
  // Records outlive the longest refresh (timeoutMs), so a refresh's new pair is never lost.
  const successors = successorStorage(Math.max((options.reuseGraceSeconds ?? 10) * 1000, (options.timeoutMs ?? 5000) + 1000))

  return async function jwt ({ token, user }: JwtCallbackParams): Promise<RotorJWT> {
    // Sign-in: authorize() returned the pair Rotor issued for this user.
    if (user?.rotor !== undefined) {
      const pair = user.rotor
      return withPair({ ...token, ...(user.id === undefined ? {} : { sub: user.id }) }, pair.access_token, pair.refresh_token, now() + pair.expires_in * 1000)
    }
    const decision = decide(token, now(), margin)
    if (decision !== 'refresh') return token
    const outcome = await callRotor(token.refreshToken as string, options, successors)
    switch (outcome.kind) {
      case 'refreshed':
        return withPair(token, outcome.access, outcome.refresh, outcome.expires)
      case 'ended':
        // Sign the user out: the app sees session.error. Rotor's tokens go; they are worthless.
        return { ...withoutRotor(token), error: 'RefreshTokenError', errorCode: outcome.code }
      case 'deferred':
        // Keep the session and its tokens; ask again after Retry-After.
        return { ...token, retryAt: now() + outcome.retryAfterSeconds * 1000, deferredBecause: outcome.code }
    }
  }
}

/**
 * The `session` callback: what `useSession()` / `auth()` show. Never the refresh token. The
 * access token is included for pages that call your backends from the browser; leave it out if
 * only the server calls them (it reads the JWT with `auth()` on the server).
 */
export function sessionCallback ({ session, token }: SessionCallbackParams): SessionCallbackParams['session'] {
  return {
    ...session,
    ...(token.accessToken === undefined ? {} : { accessToken: token.accessToken }),
    ...(token.error === undefined ? {} : { error: token.error })
  }
}
