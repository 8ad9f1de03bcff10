import fp from 'fastify-plugin'
import type { Config } from '../src/config.js'
import { MemoryDenylist } from './denylist-memory.js'
import { RedisDenylist } from './denylist-redis.js'

/** What the store knows of one token: enough to find every record that could refuse it. */
export interface TokenRef {
  sub: string
  sid: string
  jti: string
  /** The session's issuance time (µs), compared with a subject-wide revocation. */
  issuedUs: number
}

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
}

export type RotateOutcome =
  | { status: 'rotated' | 'grace', rotatedAtMs: number }
  | { status: 'reused' | 'revoked' }

export type TokenState = 'active' | 'revoked' | 'rotated'

/**
 * The denylist. Every method either does all it says or throws StoreUnavailableError; every key
 * it writes has a TTL. `rotate` is one atomic step: check the session, check and record the jti,
 * decide reuse.
 */
export interface Denylist {
  rotate: (input: RotateInput) => Promise<RotateOutcome>
  state: (ref: TokenRef) => Promise<TokenState>
  revokeToken: (ref: TokenRef, ttlMs: number) => Promise<void>
  revokeSession: (ref: TokenRef, ttlMs: number) => Promise<void>
  /** Every session of `sub` issued at or before `untilUs` is revoked (the mark only moves forward). */
  revokeSubject: (sub: string, untilUs: number, ttlMs: number) => Promise<void>
  /** Records a one-time token's id; false when it was recorded already (atomic, like SET NX). */
  consumeOnce: (sub: string, id: string, ttlMs: number) => Promise<boolean>
  /** Resolves when the store answers; throws StoreUnavailableError otherwise. */
  ping: () => Promise<void>
  close: () => void
}

declare module 'fastify' {
  interface FastifyInstance {
    denylist: Denylist
  }
}

export default fp(async function denylistPlugin (app, opts: { config: Config }) {
  let denylist: Denylist
  if (app.redis === null) {
    denylist = new MemoryDenylist()
  } else {
    const { redisKeyPrefix, redisWaitReplicas, redisWaitTimeoutMs } = opts.config
    const redisDenylist = new RedisDenylist(app.redis, redisKeyPrefix, app.redisHealth, { replicas: redisWaitReplicas, timeoutMs: redisWaitTimeoutMs })
    const sync = (): void => { redisDenylist.syncClock().catch(() => {}) }
    app.redis.on('ready', sync)
    if (app.redis.status === 'ready') sync()
    denylist = redisDenylist
  }
  if (app.redis === null && opts.config.denylistEnabled) {
    app.log.warn('no REDIS_URL: the denylist is in this process only; run one instance only, and revocations are lost on restart')
  }
  app.decorate('denylist', denylist)
  app.addHook('onClose', async () => { denylist.close() })
}, { name: 'denylist', dependencies: ['redis'], fastify: '5.x' })
