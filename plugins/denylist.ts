import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { Cluster, type Redis } from 'ioredis'
import type { Config } from '../src/config.js'
import { MemoryDenylist } from './denylist-memory.js'
import { RedisDenylist } from './denylist-redis.js'
import { SILENCE_CHECK_MS, type RedisClient, type RedisHealth } from './redis.js'
import { StoreMarker } from './store-marker.js'

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
  /**
   * When the store began (ms since the epoch): its data holds nothing older. 0 for the in-process
   * store (it lives and dies with the process); throws StoreUnavailableError while not known.
   */
  epoch: () => number
  /** Resolves when the store answers; throws StoreUnavailableError otherwise. */
  ping: () => Promise<void>
  close: () => void
}

declare module 'fastify' {
  interface FastifyInstance {
    denylist: Denylist
  }
}

/**
 * The Redis store, watching Rotor's marker (StoreMarker): read before the first request, at every
 * reconnection and every SILENCE_CHECK_MS, so a store that lost its data is found out.
 */
async function redisStore (app: FastifyInstance, client: RedisClient, health: RedisHealth, config: Config): Promise<Denylist> {
  const { redisKeyPrefix, redisWaitReplicas, redisWaitTimeoutMs, accessTokenTtl, refreshTokenTtl, leeway } = config
  // The marker lives as long as any token could: a store idle that long holds nothing to lose.
  const lifeMs = (Math.max(accessTokenTtl, refreshTokenTtl) + leeway) * 1000
  const marker = new StoreMarker(client, `${redisKeyPrefix}store:epoch`, lifeMs, app.log, health, () => { app.metrics.storeLosses.inc() })
  const store = new RedisDenylist(client, redisKeyPrefix, health, { replicas: redisWaitReplicas, timeoutMs: redisWaitTimeoutMs }, marker)
  const onReady = async (): Promise<void> => {
    marker.forget()
    await Promise.all([store.syncClock(), marker.check()]).catch(() => {})
  }
  client.on('ready', () => { onReady().catch(() => {}) })
  // A Cluster reconnects node by node: a primary that restarted (perhaps empty) is read again too,
  // while the other shards keep serving with the epoch known.
  if (client instanceof Cluster) client.on('+node', (node: Redis) => { node.on('ready', () => { marker.check().catch(() => {}) }) })
  client.on('close', () => { marker.forget() })
  // Connected already (the redis plugin waits for it): read the marker before serving.
  if (client.status === 'ready') await onReady()
  // A store flushed or replaced under an open connection is found out too.
  const watch = setInterval(() => { if (client.status === 'ready') marker.check().catch(() => {}) }, SILENCE_CHECK_MS)
  watch.unref()
  app.addHook('onClose', async () => { clearInterval(watch) })
  return store
}

export default fp(async function denylistPlugin (app, opts: { config: Config }) {
  // With the denylist off nothing is recorded or refused: no Redis store, and no marker in Redis
  // either (the contract: no record there but rate-limit counters).
  const { redis, redisHealth } = app
  const denylist = redis === null || redisHealth === null || !opts.config.denylistEnabled ? new MemoryDenylist() : await redisStore(app, redis, redisHealth, opts.config)
  if (app.redis === null && opts.config.denylistEnabled) {
    app.log.warn('no REDIS_URL: the denylist is in this process only; run one instance only, and revocations are lost on restart')
  }
  app.decorate('denylist', denylist)
  app.addHook('onClose', async () => { denylist.close() })
}, { name: 'denylist', dependencies: ['redis', 'metrics'], fastify: '5.x' })
