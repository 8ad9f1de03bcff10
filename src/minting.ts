import { randomBytes } from 'node:crypto'
import type { Keyring, Payload } from '../plugins/keyring.js'
import type { Config } from './config.js'

/** Claims Rotor sets itself; a caller may not pass them in `claims`. */
export const RESERVED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'sid', 'auth_time', 'token_type', 'client_id', 'cnf'])

/** Custom claims may nest this deep, no deeper: enough for any real claim set, and bounded work. */
export const MAX_CLAIMS_DEPTH = 8

/** Whether a JSON value nests deeper than `limit` objects or arrays. */
export function nestsDeeperThan (value: unknown, limit: number): boolean {
  if (typeof value !== 'object' || value === null) return false
  if (limit === 0) return true
  return Object.values(value).some((child) => nestsDeeperThan(child, limit - 1))
}

/** A refresh-token family: what every token of one issuance carries through its rotations. */
export interface Session {
  sub: string
  sid: string
  /** Seconds. */
  authTime: number
  /** When the session was issued, in microseconds, ordered within an instance (see {@link clockUs}). */
  issuedUs: number
  aud: string | string[] | undefined
  /** The name of the API key that issued it (OAuth's client_id); undefined for sessions issued before Rotor 0.3. */
  clientId: string | undefined
  /** The thumbprint of the DPoP key the session is bound to (RFC 7638, SHA-256), carried as `cnf.jkt`; undefined: unbound. */
  jkt: string | undefined
  claims: Payload
}

export interface TokenPair {
  access_token: string
  refresh_token: string
  token_type: 'Bearer'
  expires_in: number
  refresh_expires_in: number
}

/** The settings minting needs (a slice of Config, so tests and the domain need no more). */
export type MintSettings = Pick<Config, 'jwtIssuer' | 'accessTokenTtl' | 'refreshTokenTtl' | 'sessionMaxTtl' | 'accessTokenProfile'>

/**
 * Random bytes are drawn from the CSPRNG 4 KiB at a time and handed out 16 at a time, never
 * twice: one call into OpenSSL per 256 ids instead of one per id (which was a tenth of an
 * issue's CPU on the profile). node:crypto's randomUUID keeps a pool the same way.
 */
const POOL_SIZE = 4096
let pool = Buffer.alloc(0)
let offset = POOL_SIZE

/** `count` (≤ 16) bytes of the pool: where they start in `pool`. */
function takeRandom (count: number): number {
  if (offset + count > POOL_SIZE) {
    pool = randomBytes(POOL_SIZE)
    offset = 0
  }
  offset += count
  return offset - count
}

/** 16 random bytes, base64url: a `jti` no one can guess. */
export function randomId (): string {
  const start = takeRandom(16)
  return pool.toString('base64url', start, start + 16)
}

let lastMs = 0
let withinMs = 0

/**
 * Now, in microseconds: the wall clock's milliseconds, and a count of the calls within that
 * millisecond (up to 999). "Log out everywhere" and then issuing a pair, one request after the
 * other, are ordered even within one millisecond; across instances, their clocks order them (to
 * the millisecond). It follows the wall clock even backwards, so `iat` is never ahead of it.
 */
export function clockUs (): number {
  const ms = Date.now()
  if (ms === lastMs) {
    withinMs = Math.min(withinMs + 1, 999)
  } else {
    lastMs = ms
    withinMs = 0
  }
  return ms * 1000 + withinMs
}

const SID_VERSION = 1
const SID_BYTES = 17

/**
 * A session id that carries its issuance time: a version byte, the time in microseconds (7 bytes),
 * 9 random bytes; 23 base64url characters. Sessions issued before Rotor 0.2 have 22 random ones.
 */
export function newSid (issuedUs: number): string {
  const bytes = Buffer.allocUnsafe(SID_BYTES)
  bytes[0] = SID_VERSION
  bytes.writeUIntBE(Math.floor(issuedUs / 2 ** 48), 1, 1)
  bytes.writeUIntBE(issuedUs % 2 ** 48, 2, 6)
  const start = takeRandom(SID_BYTES - 8)
  pool.copy(bytes, 8, start, start + SID_BYTES - 8)
  return bytes.toString('base64url')
}

/** When a session was issued (µs): from its sid, or the start of its `auth_time` second for an older sid. */
export function issuedUsOf (sid: string, authTime: number): number {
  if (sid.length === 23) {
    const bytes = Buffer.from(sid, 'base64url')
    if (bytes.length === SID_BYTES && bytes[0] === SID_VERSION) return bytes.readUIntBE(1, 1) * 2 ** 48 + bytes.readUIntBE(2, 6)
  }
  return authTime * 1_000_000
}

export function newSession (sub: string, aud: string | string[] | undefined, claims: Payload, issuedUs: number, clientId?: string, jkt?: string): Session {
  return { sub, sid: newSid(issuedUs), authTime: Math.floor(issuedUs / 1_000_000), issuedUs, aud, clientId, jkt, claims }
}

/** The session a verified token belongs to: its reserved claims read back, the rest is custom. */
export function sessionOf (payload: Payload): Session {
  const claims: Payload = {}
  for (const name in payload) {
    if (!RESERVED_CLAIMS.has(name)) claims[name] = payload[name]
  }
  const sid = payload['sid'] as string
  const authTime = payload['auth_time'] as number
  const cnf = payload['cnf'] as { jkt?: unknown } | undefined
  return {
    sub: payload['sub'] as string,
    sid,
    authTime,
    issuedUs: issuedUsOf(sid, authTime),
    aud: payload['aud'] as string | string[] | undefined,
    clientId: payload['client_id'] as string | undefined,
    jkt: typeof cnf?.jkt === 'string' ? cnf.jkt : undefined,
    claims
  }
}

/** When a token issued at `iat` must expire: its TTL, but never past the session's absolute limit. */
export function expiryOf (settings: MintSettings, session: Session, iat: number, ttl: number): number {
  const exp = iat + ttl
  return settings.sessionMaxTtl === null ? exp : Math.min(exp, session.authTime + settings.sessionMaxTtl)
}

/**
 * The claims of one token. The issuing key's name (`client_id`) is always in the refresh token,
 * which only Rotor reads; in the access token only with ACCESS_TOKEN_PROFILE=rfc9068.
 */
function payloadOf (settings: MintSettings, session: Session, type: 'access' | 'refresh', iat: number, exp: number, jti: string): Payload {
  // Assignments, not spreads: spreading after the first member went through V8's slow generic
  // copy, a tenth of a refresh's CPU. The members' order is the token's (the custom claims first).
  // No claim is named __proto__: the JSON parser refuses it at issuance (Fastify's proto-poisoning guard).
  const payload: Payload = {}
  const { claims } = session
  for (const name in claims) payload[name] = claims[name]
  payload['iss'] = settings.jwtIssuer
  payload['sub'] = session.sub
  if (session.aud !== undefined) payload['aud'] = session.aud
  payload['iat'] = iat
  payload['exp'] = exp
  payload['jti'] = jti
  payload['sid'] = session.sid
  payload['auth_time'] = session.authTime
  payload['token_type'] = type
  if (session.clientId !== undefined && (type === 'refresh' || settings.accessTokenProfile === 'rfc9068')) payload['client_id'] = session.clientId
  if (session.jkt !== undefined) payload['cnf'] = { jkt: session.jkt }
  return payload
}

export function mintAccessToken (keyring: Keyring, settings: MintSettings, session: Session, iat: number, jti: string): { token: string, exp: number } {
  const exp = expiryOf(settings, session, iat, settings.accessTokenTtl)
  return { token: keyring.signAccess(payloadOf(settings, session, 'access', iat, exp, jti)), exp }
}

export function mintRefreshToken (keyring: Keyring, settings: MintSettings, session: Session, iat: number, jti: string): { token: string, exp: number } {
  const exp = expiryOf(settings, session, iat, settings.refreshTokenTtl)
  return { token: keyring.signRefresh(payloadOf(settings, session, 'refresh', iat, exp, jti)), exp }
}

/**
 * Mints a pair issued at `iat` (seconds) with the given ids. The same inputs give the same
 * claims, which is what lets a refresh retried within the grace window answer the same pair.
 */
export function mintPair (
  keyring: Keyring, settings: MintSettings, session: Session, iat: number, ids: { access: string, refresh: string }, nowSec: number
): TokenPair {
  const access = mintAccessToken(keyring, settings, session, iat, ids.access)
  const refresh = mintRefreshToken(keyring, settings, session, iat, ids.refresh)
  return pairResponse(access, refresh, nowSec)
}

export function pairResponse (access: { token: string, exp: number }, refresh: { token: string, exp: number }, nowSec: number): TokenPair {
  return {
    access_token: access.token,
    refresh_token: refresh.token,
    token_type: 'Bearer',
    expires_in: Math.max(0, access.exp - nowSec),
    refresh_expires_in: Math.max(0, refresh.exp - nowSec)
  }
}
