import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { Cluster, type Redis } from 'ioredis'
import type { Config } from '../config.js'
import { SILENCE_CHECK_MS, type RedisClient, type RedisHealth } from '../redis.js'
import { StoreMarker } from './marker.js'
import { MemoryDenylist } from './memory.js'
import { RedisDenylist } from './redis.js'
import type { Denylist, SessionIndexSettings } from './types.js'

export type { Denylist, Evicted, RotateInput, RotateOutcome, SessionEntry, TokenRef, TokenState } from './types.js'

/**
 * Where the store is, decided once here and read everywhere else: `redis` (the denylist in
 * Redis), `memory` (no Redis at all: the denylist, if on, lives in this process), `off` (Redis
 * is there for the rate limit, the denylist is off).
 */
export type StoreKind = 'redis' | 'memory' | 'off'

declare module 'fastify' {
  interface FastifyInstance {
    denylist: Denylist
    storeKind: StoreKind
  }
}

/** What the session index needs of the settings. */
function indexSettings (config: Config): SessionIndexSettings {
  return {
    maxPerSubject: config.maxSessionsPerSubject,
    leewaySec: config.leeway,
    accessOverhangSec: Math.max(0, config.accessTokenTtl - config.refreshTokenTtl)
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
  // The redis plugin made the main client, so it has a side connection too.
  const side = await app.sideRedis!()
  const store = new RedisDenylist(client, redisKeyPrefix, health, { replicas: redisWaitReplicas, timeoutMs: redisWaitTimeoutMs }, marker, indexSettings(config), side)
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
  const withRedis = redis !== null && redisHealth !== null
  const kind: StoreKind = !withRedis ? 'memory' : opts.config.denylistEnabled ? 'redis' : 'off'
  const denylist = withRedis && kind === 'redis' ? await redisStore(app, redis, redisHealth, opts.config) : new MemoryDenylist(indexSettings(opts.config))
  app.decorate('storeKind', kind)
  if (kind === 'memory' && opts.config.denylistEnabled) {
    app.log.warn('no REDIS_URL: the denylist is in this process only; run one instance only, and revocations are lost on restart')
  }
  app.decorate('denylist', denylist)
  app.addHook('onClose', async () => { denylist.close() })
}, { name: 'denylist', dependencies: ['redis', 'metrics'], fastify: '5.x' })
