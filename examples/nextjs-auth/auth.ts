/**
 * Auth.js (next-auth v5) keeping a Rotor session alive: the `jwt` callback refreshes the access
 * token through Rotor shortly before it expires.
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
 *   `token_not_valid`) and 400: the session is over. The Rotor tokens are dropped and
 *   `error: 'RefreshTokenError'` is set, so the app signs the user out. Never retry these: a
 *   replayed refresh token is exactly what reuse detection looks for;
 * - 503 (`denylist_unavailable`), 429 (`rate_limited`), another 5xx, a timeout, no connection:
 *   not the user's fault. The session is kept as it is, and Rotor is not asked again before its
 *   `Retry-After` has passed. The access token is still good for a while (the refresh starts
 *   `refreshMarginSeconds` early); once it has expired, backends answer 401 until a refresh works.
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
 * Works in the Node and the Edge runtime (fetch, atob and AbortSignal.timeout only).
 */

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
  /** For tests. */
  fetch?: (input: string, init: RequestInit) => Promise<Response>
  now?: () => number
}

/** The access token's `exp` in ms, read without verifying (it came straight from Rotor). */
export function expiryOf (accessToken: string): number | undefined {
  try {
    const part = accessToken.split('.')[1] ?? ''
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'))
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
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

function retryAfterOf (response: Response, fallback: number): number {
  const value = Number(response.headers.get('retry-after'))
  return Number.isFinite(value) && value > 0 ? value : fallback
}

/** Calls Rotor once with the refresh token and says what came of it. Never throws. */
export async function callRotor (refreshToken: string, options: RotorRefreshOptions): Promise<RefreshOutcome> {
  const simplejwt = options.route === 'simplejwt'
  const now = options.now ?? Date.now
  const fallback = options.defaultRetryAfterSeconds ?? 5
  const doFetch = options.fetch ?? fetch
  let response: Response
  let body: Record<string, unknown>
  try {
    response = await doFetch(`${options.rotorUrl.replace(/\/$/, '')}${simplejwt ? '/api/auth/token/refresh/' : '/v1/tokens/refresh'}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(simplejwt ? { refresh: refreshToken } : { refresh_token: refreshToken }),
      // A POST: Next.js's fetch cache never keeps it.
      signal: AbortSignal.timeout(options.timeoutMs ?? 5000)
    })
    body = await response.json().catch(() => ({})) as Record<string, unknown>
  } catch {
    // No answer at all (timeout, connection refused): Rotor may even have rotated. Retrying the
    // same token later is safe within REFRESH_REUSE_GRACE, and after it Rotor says token_reused.
    return { kind: 'deferred', code: 'network_error', retryAfterSeconds: fallback }
  }
  const code = typeof body['code'] === 'string' ? body['code'] : `http_${response.status}`
  if (response.status === 200) {
    const access = simplejwt ? body['access'] : body['access_token']
    const refresh = simplejwt ? body['refresh'] : body['refresh_token']
    if (typeof access !== 'string' || typeof refresh !== 'string') return { kind: 'deferred', code: 'bad_response', retryAfterSeconds: fallback }
    const expiresIn = body['expires_in']
    const expires = typeof expiresIn === 'number' ? now() + expiresIn * 1000 : expiryOf(access) ?? now()
    return { kind: 'refreshed', access, refresh, expires }
  }
  // 401: the refresh token is dead (reused, revoked, expired, invalid); 400: there is none to send.
  if (response.status === 401 || response.status === 400) return { kind: 'ended', code }
  // 503 denylist_unavailable, 429 rate_limited, a 5xx of a proxy: try again later.
  return { kind: 'deferred', code, retryAfterSeconds: retryAfterOf(response, fallback) }
}

/**
 * The `jwt` callback. Concurrent calls for the same refresh token in this process share one
 * request to Rotor (across processes, Rotor's grace window gives them the same pair).
 */
export function createJwtCallback (options: RotorRefreshOptions): (params: JwtCallbackParams) => Promise<RotorJWT> {
  const now = options.now ?? Date.now
  const margin = options.refreshMarginSeconds ?? 60
  const inFlight = new Map<string, Promise<RefreshOutcome>>()

  return async function jwt ({ token, user }: JwtCallbackParams): Promise<RotorJWT> {
    // Sign-in: authorize() returned the pair Rotor issued for this user.
    if (user?.rotor !== undefined) {
      const pair = user.rotor
      return withPair({ ...token, ...(user.id === undefined ? {} : { sub: user.id }) }, pair.access_token, pair.refresh_token, now() + pair.expires_in * 1000)
    }
    const decision = decide(token, now(), margin)
    if (decision !== 'refresh') return token
    const refreshToken = token.refreshToken as string

    let pending = inFlight.get(refreshToken)
    if (pending === undefined) {
      pending = callRotor(refreshToken, options).finally(() => inFlight.delete(refreshToken))
      inFlight.set(refreshToken, pending)
    }
    const outcome = await pending
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
