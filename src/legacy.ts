import { TokenRejectedError } from '../plugins/errors.js'
import type { LegacyRefreshToken } from '../plugins/legacy-tokens.js'
import { remainingLifeMs, type TokenContext } from './context.js'
import { clockUs, mintPair, newSession, randomId } from './minting.js'
import type { Refreshed } from './rotation.js'
import { entryOf, recordSession } from './sessions.js'

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
  const pair = mintPair(ctx.keyring, ctx.config, session, nowSec, ids, nowSec)
  const evicted = await recordSession(ctx, entryOf(ctx, session, nowSec), session.sub, nowMs)
  return { pair, session, previousJti: legacy.jti, refreshJti: ids.refresh, isRetry: false, evicted }
}
