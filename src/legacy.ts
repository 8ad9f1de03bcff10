import { createVerifier, TokenError } from 'fast-jwt'
import { TokenRejectedError } from './errors.js'
import { remainingLifeMs, type TokenContext } from './context.js'
import { clockUs, mintPair, newSession, randomId } from './tokens.js'
import { refresh, type Refreshed } from './rotation.js'

/** What Rotor reads of a refresh token minted by djangorestframework-simplejwt. */
export interface LegacyRefreshToken {
  sub: string
  jti: string
  exp: number
}

/**
 * Refresh tokens of the old Django service (SimpleJWT: HS256 under Django's signing key,
 * `token_type: refresh`, `user_id`, a header with no `kid`), accepted once each so that moving
 * to Rotor logs nobody out.
 */
export class LegacyTokens {
  private readonly verifier: (token: string) => Record<string, unknown>

  constructor (signingKey: string, leeway: number) {
    this.verifier = createVerifier({
      key: signingKey,
      algorithms: ['HS256'],
      clockTolerance: leeway * 1000,
      requiredClaims: ['token_type', 'exp', 'jti', 'user_id']
    })
  }

  /**
   * The legacy token's claims; null when the token is not one (Rotor's own tokens carry a `kid`,
   * SimpleJWT's never do); throws TokenRejectedError for a legacy token that does not verify.
   */
  read (token: unknown): LegacyRefreshToken | null {
    if (typeof token !== 'string' || hasKid(token)) return null
    let payload: Record<string, unknown>
    try {
      payload = this.verifier(token)
    } catch (error) {
      if ((error as TokenError).code === TokenError.codes.expired) throw new TokenRejectedError('token_expired', 'the token has expired')
      throw new TokenRejectedError('token_invalid', 'not a valid token')
    }
    const userId = payload['user_id']
    if (payload['token_type'] !== 'refresh' || (typeof userId !== 'string' && typeof userId !== 'number') || typeof payload['jti'] !== 'string') {
      throw new TokenRejectedError('token_invalid', 'not a SimpleJWT refresh token')
    }
    return { sub: String(userId), jti: payload['jti'], exp: payload['exp'] as number }
  }
}

function hasKid (token: string): boolean {
  try {
    const header: unknown = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString())
    return typeof header !== 'object' || header === null || 'kid' in header
  } catch {
    return true
  }
}

/**
 * Exchanges a legacy refresh token for a new Rotor session, once: its jti is recorded for as
 * long as it could live, atomically, so a second presentation is `token_revoked`. No grace window.
 */
export async function exchangeLegacy (ctx: TokenContext, legacy: LegacyRefreshToken, nowMs = Date.now()): Promise<Refreshed> {
  const token = { sub: legacy.sub, jti: legacy.jti }
  if (!ctx.config.denylistEnabled) throw new TokenRejectedError('token_invalid', 'legacy tokens are accepted only with DENYLIST_ENABLED=true', token)
  const first = await ctx.denylist.consumeOnce(legacy.sub, legacy.jti, remainingLifeMs(ctx.config, legacy.exp, nowMs))
  if (!first) throw new TokenRejectedError('token_revoked', 'this legacy token was already exchanged', token)
  const issuedUs = clockUs()
  const nowSec = Math.floor(issuedUs / 1_000_000)
  const session = newSession(legacy.sub, ctx.config.jwtAudience[0], {}, issuedUs)
  const ids = { access: randomId(), refresh: randomId() }
  ctx.log.info({ event: 'token.legacy_exchanged', sub: legacy.sub, sid: session.sid, jti: ids.refresh, previous_jti: legacy.jti }, 'a SimpleJWT refresh token was exchanged for a Rotor session')
  return { pair: mintPair(ctx.keyring, ctx.config, session, nowSec, ids, nowSec), session, previousJti: legacy.jti, refreshJti: ids.refresh, isRetry: false }
}

/** A refresh: of a legacy token when it is one (and legacy tokens are accepted), else of Rotor's own. */
export async function refreshOrExchange (ctx: TokenContext, legacy: LegacyTokens | null, presented: unknown, nowMs = Date.now()): Promise<Refreshed> {
  const old = legacy === null ? null : legacy.read(presented)
  return old === null ? refresh(ctx, presented, nowMs) : exchangeLegacy(ctx, old, nowMs)
}
