import { AppError, TokenRejectedError } from '../plugins/errors.js'
import { remainingLifeMs, sessionRevocationTtlMs, type TokenContext } from './context.js'
import { clockUs, sessionOf } from './minting.js'
import type { Payload } from '../plugins/keyring.js'

function requireDenylist (ctx: TokenContext): void {
  if (!ctx.config.denylistEnabled) throw new AppError('denylist_disabled', 'revocation needs DENYLIST_ENABLED=true')
}

/**
 * RFC 7009 revocation: a refresh token revokes its whole session, an access token itself.
 * A token that is already invalid is not an error (the caller wanted it dead; it is).
 */
export async function revoke (ctx: TokenContext, presented: unknown, nowMs = Date.now()): Promise<'session' | 'token' | 'nothing'> {
  requireDenylist(ctx)
  const verified = ctx.keyring.check(presented, undefined, nowMs)
  if (verified instanceof TokenRejectedError) {
    ctx.log.info({ event: 'token.revoke_ignored', reason: verified.message }, 'revocation of an invalid token: nothing to do')
    return 'nothing'
  }
  const session = sessionOf(verified.payload)
  const ref = { sub: session.sub, sid: session.sid, jti: verified.payload['jti'] as string, issuedUs: session.issuedUs }
  if (verified.type === 'refresh') {
    await ctx.denylist.revokeSession(ref, sessionRevocationTtlMs(ctx.config, session.authTime, nowMs))
  } else {
    await ctx.denylist.revokeToken(ref, remainingLifeMs(ctx.config, verified.payload['exp'] as number, nowMs))
  }
  ctx.log.info({ event: verified.type === 'refresh' ? 'session.revoked' : 'token.revoked', sub: ref.sub, sid: ref.sid, jti: ref.jti }, 'revoked')
  return verified.type === 'refresh' ? 'session' : 'token'
}

/**
 * "Log out everywhere": every session of `sub` issued before this call stops refreshing, and none
 * issued after it (ordered to the microsecond within an instance: see clockUs).
 */
export async function revokeSubject (ctx: TokenContext, sub: string, untilUs = clockUs()): Promise<void> {
  requireDenylist(ctx)
  const { accessTokenTtl, refreshTokenTtl, leeway } = ctx.config
  await ctx.denylist.revokeSubject(sub, untilUs, (Math.max(accessTokenTtl, refreshTokenTtl) + leeway) * 1000)
  ctx.log.info({ event: 'subject.revoked', sub }, 'every session of the subject revoked')
}

export type Introspection = ({ active: true } & Payload) | { active: false }

/** RFC 7662 for both token types: active only if it verifies and nothing in the store refuses it. */
export async function introspect (ctx: TokenContext, presented: unknown, nowMs = Date.now()): Promise<Introspection> {
  const verified = ctx.keyring.check(presented, undefined, nowMs)
  if (verified instanceof TokenRejectedError) return { active: false }
  const { payload } = verified
  if (ctx.config.denylistEnabled) {
    const session = sessionOf(payload)
    const state = await ctx.denylist.state({ sub: session.sub, sid: session.sid, jti: payload['jti'] as string, issuedUs: session.issuedUs })
    if (state !== 'active') return { active: false }
  }
  return { ...payload, active: true }
}
