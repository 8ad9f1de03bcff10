import { AppError, StoreUnavailableError, TokenRejectedError } from '../plugins/errors.js'
import type { Payload } from '../plugins/keyring.js'
import type { Evicted, SessionEntry } from '../plugins/store/index.js'
import type { TokenContext } from './context.js'
import { expiryOf, sessionOf, type Session } from './minting.js'

/** A session as the session routes answer it (times in seconds). */
export interface SessionView {
  sid: string
  created_at: number
  auth_time: number
  last_refreshed_at: number
  expires_at: number
  client_id: string | null
  device: string | null
}

/** The index entry of a session a pair was just minted for, at `nowSec`. */
export function entryOf (ctx: TokenContext, session: Session, nowSec: number, device: string | null = null): SessionEntry {
  return {
    sid: session.sid,
    createdUs: session.issuedUs,
    lastRefreshedAt: nowSec,
    expiresAt: expiryOf(ctx.config, session, nowSec, ctx.config.refreshTokenTtl),
    clientId: session.clientId ?? null,
    device
  }
}

export function viewOf (entry: SessionEntry): SessionView {
  const createdAt = Math.floor(entry.createdUs / 1_000_000)
  return {
    sid: entry.sid,
    created_at: createdAt,
    auth_time: createdAt,
    last_refreshed_at: entry.lastRefreshedAt,
    expires_at: entry.expiresAt,
    client_id: entry.clientId,
    device: entry.device
  }
}

/** Says, once per session ended, that the subject's cap (MAX_SESSIONS_PER_SUBJECT) made room. */
export function reportEvicted (ctx: TokenContext, sub: string, evicted: Evicted): void {
  for (const sid of evicted) {
    ctx.log.warn({ event: 'session.evicted', sub, sid, max: ctx.config.maxSessionsPerSubject },
      'a subject reached MAX_SESSIONS_PER_SUBJECT: its oldest session was revoked to make room')
  }
}

/**
 * Lists a session just minted (issued, exchanged, or refreshed without rotation) in its subject's
 * index. Issuing needs no store (the contract): the store gives up on this write within 250 ms
 * (the redis plugin's side connection), and then the pair is issued all the same and the session
 * listed at its first rotation (Redis's outage itself is logged once, by the redis plugin).
 *
 * @returns the sessions the cap ended to make room, or null when the store did not answer
 */
export async function recordSession (ctx: TokenContext, entry: SessionEntry, sub: string, nowMs: number): Promise<Evicted | null> {
  if (!ctx.config.denylistEnabled) return []
  let evicted: Evicted
  try {
    evicted = await ctx.denylist.recordSession(sub, entry, nowMs)
  } catch (error) {
    // The store throws nothing but StoreUnavailableError (see Denylist).
    ctx.log.debug({ event: 'session.unlisted', sub, sid: entry.sid, reason: (error as StoreUnavailableError).reason },
      'the session index did not answer: the session is issued, and listed from its first refresh')
    return null
  }
  reportEvicted(ctx, sub, evicted)
  return evicted
}

/** The session routes need the denylist: without it there is no record of sessions to list or end. */
export function requireSessionIndex (ctx: TokenContext): void {
  if (!ctx.config.denylistEnabled) throw new AppError('denylist_disabled', 'sessions are recorded only with DENYLIST_ENABLED=true')
}

/** The subject's live sessions, newest first; `current` marks one of them. */
export async function listSessions (ctx: TokenContext, sub: string, nowMs = Date.now()): Promise<SessionView[]> {
  requireSessionIndex(ctx)
  return (await ctx.denylist.listSessions(sub, nowMs)).map(viewOf)
}

/**
 * Ends sessions of `sub`, listed and live: one by its sid, or every one but `except`. Each is
 * revoked at once (its refresh tokens refuse, its access tokens introspect inactive).
 *
 * @returns the sids ended (empty: none was listed)
 */
export async function endSessions (ctx: TokenContext, sub: string, which: { sids: string[] } | { except: string }, nowMs = Date.now()): Promise<string[]> {
  requireSessionIndex(ctx)
  const ended = await ctx.denylist.endSessions(sub, which, nowMs)
  for (const sid of ended) ctx.log.info({ event: 'session.ended', sub, sid }, 'session ended')
  return ended
}

/**
 * The session of an access token @fastify/jwt verified, if neither the token nor its session (nor
 * its subject) is revoked: the end-user session routes act for this session's subject.
 *
 * @throws TokenRejectedError `token_revoked`
 * @throws StoreUnavailableError when the store cannot be reached
 */
export async function liveSessionOf (ctx: TokenContext, payload: Payload): Promise<Session> {
  const session = sessionOf(payload)
  const token = { sub: session.sub, sid: session.sid, jti: payload['jti'] as string }
  const state = await ctx.denylist.state({ ...token, issuedUs: session.issuedUs })
  if (state !== 'active') throw new TokenRejectedError('token_revoked', 'the access token or its session has been revoked', token)
  return session
}
