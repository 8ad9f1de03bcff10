import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { Denylist } from '../plugins/store/index.js'
import type { Keyring } from '../plugins/keyring.js'
import type { Config } from './config.js'

/** What the domain functions work with: keys, the store, the settings and a logger. No HTTP. */
export interface TokenContext {
  keyring: Keyring
  denylist: Denylist
  config: Config
  log: FastifyBaseLogger
}

/** The context of one request: the app's keys, store and settings, the request's logger. */
export function contextOf (request: FastifyRequest): TokenContext {
  const { keyring, denylist, config } = request.server
  return { keyring, denylist, config, log: request.log }
}

/**
 * How long a session revocation must be kept (ms): until every token the session could have
 * issued up to now has expired, never longer than the session's absolute limit allows.
 */
export function sessionRevocationTtlMs (config: Config, authTime: number, nowMs: number): number {
  const lifetimeMs = (Math.max(config.accessTokenTtl, config.refreshTokenTtl) + config.leeway) * 1000
  if (config.sessionMaxTtl === null) return lifetimeMs
  const untilSessionEndMs = (authTime + config.sessionMaxTtl + config.leeway) * 1000 - nowMs
  return Math.max(1, Math.min(lifetimeMs, untilSessionEndMs))
}

/** How long a token stays acceptable (ms): until its `exp`, plus the leeway verification allows. */
export function remainingLifeMs (config: Config, exp: number, nowMs: number): number {
  return Math.max(1, (exp + config.leeway) * 1000 - nowMs)
}
