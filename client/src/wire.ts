// What the client says to Rotor and what it makes of the answers: the two route families (Rotor's
// `/v1` routes and the SimpleJWT-compatible ones) and the one table that decides which answer
// signs the user out and which is only a reason to try again.

/** Which of Rotor's route families the client talks to. */
export type RouteFamily = 'v1' | 'simplejwt'

/**
 * Why a session ended. Rotor's own codes (`token_reused`, `token_revoked`, `token_invalid`,
 * `token_expired`; `token_not_valid` on the SimpleJWT routes, which say no more than that), or
 * `signed_out` when `signOut()` ended it.
 */
export type SignOutReason = 'token_reused' | 'token_revoked' | 'token_invalid' | 'token_not_valid' | 'token_expired' | 'signed_out'

/** A pair as Rotor's `/v1` routes answer it, or as SimpleJWT's do. */
export type TokenPairInput =
  | { access_token: string, refresh_token: string, expires_in?: number, refresh_expires_in?: number }
  | { access: string, refresh: string }

/** A pair with what the client needs to know about it. */
export interface Pair {
  access: string
  refresh: string
  /** When the access token expires, in ms on this machine's clock. */
  accessExpiresAt: number
  /** When this machine received the pair, in ms. */
  obtainedAt: number
}

/** What one refresh call came to. */
export type Outcome =
  | { kind: 'rotated', pair: Pair }
  | { kind: 'ended', reason: SignOutReason }
  | { kind: 'retry', code: string, retryAfterMs?: number }
  | { kind: 'refused', status: number, code: string }

const PATHS: Record<RouteFamily, { refresh: string, revoke: string }> = {
  v1: { refresh: '/v1/tokens/refresh', revoke: '/v1/tokens/revoke' },
  simplejwt: { refresh: '/api/auth/token/refresh/', revoke: '/api/auth/token/blacklist/' }
}

/** The answers that end a session: Rotor has refused the refresh token for good. */
const ENDING: ReadonlySet<string> = new Set<SignOutReason>(['token_reused', 'token_revoked', 'token_invalid', 'token_not_valid', 'token_expired'])

/** The `exp` claim of a JWT in ms, read without verifying it; undefined when there is none. */
export function expiryOf (jwt: string): number | undefined {
  try {
    const part = (jwt.split('.')[1] ?? '').replace(/-/g, '+').replace(/_/g, '/')
    const exp = (JSON.parse(atob(part)) as { exp?: number }).exp
    // Number.isFinite is false for anything that is not a number.
    return Number.isFinite(exp) ? Number(exp) * 1000 : undefined
  } catch {
    return undefined
  }
}

/**
 * The pair in either shape, with its access token's expiry: `expires_in` counted from `now` (so
 * a skewed clock on this machine does not matter) less a second, since `exp` counts from a
 * whole second and the token may end up to a second before `expires_in` says; else the token's
 * own `exp`; else now.
 */
export function pairOf (input: TokenPairInput, now: number): Pair {
  const [access, refresh, expiresIn] = 'access_token' in input
    ? [input.access_token, input.refresh_token, input.expires_in]
    : [input.access, input.refresh, undefined]
  if (typeof access !== 'string' || typeof refresh !== 'string' || access === '' || refresh === '') {
    throw new TypeError('a token pair needs access_token and refresh_token (or access and refresh) as strings')
  }
  const accessExpiresAt = typeof expiresIn === 'number' && Number.isFinite(expiresIn) ? now + (expiresIn - 1) * 1000 : expiryOf(access) ?? now
  return { access, refresh, accessExpiresAt, obtainedAt: now }
}

/** Retry-After in ms (delta-seconds or an HTTP date), undefined when absent or unreadable. */
export function retryAfterOf (value: string | null, now: number): number | undefined {
  if (value === null || value.trim() === '') return undefined
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return seconds >= 0 ? seconds * 1000 : undefined
  const date = Date.parse(value)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

async function bodyOf (response: Response): Promise<Record<string, unknown>> {
  try {
    // Object(): null becomes {}, a number or an array an object without Rotor's members.
    return Object(await response.json()) as Record<string, unknown>
  } catch {
    return {}
  }
}

export interface WireOptions {
  baseUrl: string
  routes: RouteFamily
  fetch: typeof fetch
  timeoutMs: number
  now: () => number
  /** The last DPoP nonce Rotor gave (DPOP_NONCES=true); kept for the next proof. */
  dpopNonce?: string | undefined
}

/** Signs a DPoP proof for a request (see dpop.ts); absent for a session without a key. */
export type Prover = (htm: string, htu: string, nonce?: string) => Promise<string>

function url (options: WireOptions, path: string): string {
  return `${options.baseUrl.replace(/\/+$/, '')}${path}`
}

async function post (options: WireOptions, path: string, body: unknown, extra: Record<string, string> = {}): Promise<Response> {
  return await options.fetch(url(options, path), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json', ...extra },
    body: JSON.stringify(body),
    // The refresh token travels in the body: no cookie is needed, none is sent.
    credentials: 'omit',
    cache: 'no-store',
    signal: AbortSignal.timeout(options.timeoutMs)
  })
}

/**
 * Presents the refresh token once. Never throws: no answer at all (offline, refused, timed out)
 * is a reason to try again, like Rotor's 503 and 429. Trying again with the same token is safe:
 * an answer that was lost is handed out again by Rotor (its grace window and confirmed
 * rotations), never taken for a reuse.
 */
export async function refresh (options: WireOptions, refreshToken: string, prover?: Prover): Promise<Outcome> {
  const simplejwt = options.routes === 'simplejwt'
  const path = PATHS[options.routes].refresh
  // The new token's life counts from before the request: Rotor issued it later than this, so the
  // client never counts it as living longer than it does (however long the answer took).
  const sentAt = options.now()
  let response: Response
  let body: Record<string, unknown>
  let code: string
  // A bound session asked for a nonce (use_dpop_nonce) is answered once more, with it.
  for (let attempt = 1; ; attempt++) {
    try {
      const proof = prover === undefined ? undefined : await prover('POST', url(options, path), options.dpopNonce)
      response = await post(options, path, simplejwt ? { refresh: refreshToken } : { refresh_token: refreshToken }, proof === undefined ? {} : { dpop: proof })
      body = await bodyOf(response)
    } catch {
      return { kind: 'retry', code: 'network_error' }
    }
    options.dpopNonce = response.headers.get('dpop-nonce') ?? options.dpopNonce
    code = typeof body['code'] === 'string' ? body['code'] : `http_${response.status}`
    if (code !== 'use_dpop_nonce' || attempt === 2) break
  }
  if (response.status === 200) {
    try {
      return { kind: 'rotated', pair: pairOf(body as TokenPairInput, sentAt) }
    } catch {
      // A 200 without a pair is not Rotor talking (a captive portal, a misrouted proxy).
      return { kind: 'retry', code: 'bad_response' }
    }
  }
  if (response.status === 401 && ENDING.has(code)) return { kind: 'ended', reason: code as SignOutReason }
  if (response.status === 429 || response.status >= 500) {
    const retryAfterMs = retryAfterOf(response.headers.get('retry-after'), options.now())
    return retryAfterMs === undefined ? { kind: 'retry', code } : { kind: 'retry', code, retryAfterMs }
  }
  // Anything else (a 404 for a wrong baseUrl or route family, a 401 without one of Rotor's
  // codes from something in between) says nothing about the session: no sign-out, no retry.
  return { kind: 'refused', status: response.status, code }
}

/** Revokes the refresh token (and with it the session). Answers whether Rotor confirmed it. */
export async function revoke (options: WireOptions, refreshToken: string): Promise<boolean> {
  try {
    const response = await post(options, PATHS[options.routes].revoke, options.routes === 'simplejwt' ? { refresh: refreshToken } : { token: refreshToken })
    await response.body?.cancel()
    // SimpleJWT's blacklist answers 401 for a token that is already dead: it is revoked all the same.
    return response.status === 200 || response.status === 401
  } catch {
    return false
  }
}
