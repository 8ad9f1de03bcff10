import fp from 'fastify-plugin'
import { Redis, Cluster, type RedisOptions } from 'ioredis'
import type { FastifyBaseLogger } from 'fastify'
import type { Config, RedisSetting } from '../src/config.js'

export type RedisClient = Redis | Cluster

/**
 * Fail fast: with no offline queue a command against a Redis that is down is refused at once,
 * and one that is sent but never answered is cut off by `commandTimeout`, so a request waits for
 * at most about a second before it gets its 503. Reconnection goes on forever in the background.
 */
const FAIL_FAST = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  commandTimeout: 1000,
  connectTimeout: 1000,
  autoResendUnfulfilledCommands: false,
  disconnectTimeout: 100,
  retryStrategy: (times: number) => Math.min(times * 50, 500),
  lazyConnect: true
} satisfies RedisOptions

/** Policies under which Redis may drop a key before its TTL: a dropped denylist key un-revokes a token. */
export function mayEvict (policy: string): boolean {
  return policy !== 'noeviction'
}

function createClient (setting: Exclude<RedisSetting, { kind: 'memory' }>): RedisClient {
  switch (setting.kind) {
    case 'single':
      return new Redis(setting.url, FAIL_FAST)
    case 'sentinel':
      return new Redis({ ...FAIL_FAST, sentinels: setting.sentinels, name: setting.name })
    case 'cluster':
      return new Cluster(setting.nodes, {
        enableOfflineQueue: false,
        lazyConnect: true,
        clusterRetryStrategy: (times: number) => Math.min(times * 50, 500),
        redisOptions: FAIL_FAST
      })
  }
}

/** Tracks whether Redis answers, and says so in the log once per change, not once per request. */
export class RedisHealth {
  reachable = false
  private reported: boolean | null = null
  private readonly log: FastifyBaseLogger
  constructor (log: FastifyBaseLogger) {
    this.log = log
  }

  up (): void {
    this.reachable = true
    if (this.reported !== true) this.log.info('store reachable: Redis is ready')
    this.reported = true
  }

  down (reason: string): void {
    this.reachable = false
    if (this.reported !== false) {
      this.log.error({ reason }, 'store unreachable: Redis does not answer; refresh, revoke and introspect answer 503 denylist_unavailable until it is back')
    }
    this.reported = false
  }
}

/** A reason not to start at all, as opposed to a Redis that is merely not there yet. */
export class StartupError extends Error {
  override name = 'StartupError'
}

async function checkEvictionPolicy (client: RedisClient, log: FastifyBaseLogger, isProduction: boolean): Promise<void> {
  let policy: string | undefined
  try {
    const reply = await client.config('GET', 'maxmemory-policy') as unknown as string[]
    policy = reply[1]
  } catch {
    log.warn('could not read Redis maxmemory-policy (CONFIG disabled?): make sure it is noeviction, or revoked tokens may come back to life when Redis is full')
    return
  }
  if (policy !== undefined && mayEvict(policy)) {
    log.error({ policy }, `Redis maxmemory-policy is ${policy}: Redis may evict denylist keys and silently un-revoke tokens; set maxmemory-policy noeviction`)
    if (isProduction) throw new StartupError(`refusing to start in production with Redis maxmemory-policy ${policy} (set noeviction)`)
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The Redis client, or null when Rotor runs with its in-process store. */
    redis: RedisClient | null
    redisHealth: RedisHealth | null
  }
}

export default fp(async function redisPlugin (app, opts: { config: Config }) {
  const { config } = opts
  if (config.redis.kind === 'memory') {
    app.decorate('redis', null)
    app.decorate('redisHealth', null)
    return
  }
  const client = createClient(config.redis)
  const health = new RedisHealth(app.log)
  client.on('ready', () => { health.up() })
  client.on('error', (error: Error) => { health.down(error.message) })
  client.on('close', () => { health.down('connection closed') })
  app.decorate<RedisClient | null>('redis', client)
  app.decorate<RedisHealth | null>('redisHealth', health)

  // A sidecar may start before its Redis: wait a moment, then go on not-ready and keep trying.
  try {
    await client.connect()
    await checkEvictionPolicy(client, app.log, config.isProduction)
  } catch (error) {
    if (error instanceof StartupError) {
      client.disconnect()
      throw error
    }
    health.down((error as Error).message)
  }

  app.addHook('onClose', async () => {
    client.disconnect()
  })
}, { name: 'redis', fastify: '5.x' })
