import fp from 'fastify-plugin'
import rateLimit, { normalizeIP, type FastifyRateLimitStore } from '@fastify/rate-limit'
import { Cluster } from 'ioredis'
import type { FastifyRequest, onRequestHookHandler, preParsingHookHandler } from 'fastify'
import type { Scope } from './config.js'
import { AppError } from './errors.js'
import { limitHeaders, type DeferredBudget } from './budget.js'
import type { BudgetCount } from './store/types.js'
import { groupBySlot, type RedisClient } from './redis.js'

/**
 * The budget a route's requests spend. `client-ip`, every route's unless it says otherwise: one
 * per client address. `api-key`, the backend routes': one per API key, and one per address for
 * requests that bring no valid key (counted apart, so bad keys never spend a browser's budget).
 */
export type Budget = 'client-ip' | 'api-key'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The budget this route's requests spend; `client-ip` when unset. `rateLimit: false` spends none. */
    budget?: Budget
    /**
     * The route's rotation counts its request (see DeferredBudget), when it can: Redis on one
     * server or behind sentinels (on a Cluster the budget's key lives elsewhere), the denylist and
     * rotation on.
     */
    countedByRotation?: true
  }
  interface FastifyInstance {
    /**
     * What a backend route spreads into its options, fresh for each route: the API-key budget,
     * who is calling (onRequest, before the limit), then 401 unless someone is and 403 unless
     * their key has `scope` (preParsing: after every onRequest hook, so a wrong key is counted
     * before it is refused; before the body is read).
     */
    backendRoute: (scope: Scope) => { config: { budget: 'api-key' }, onRequest: onRequestHookHandler[], preParsing: preParsingHookHandler[] }
  }
}

export interface RateLimitOptions {
  /** Requests per budget per window. */
  max: number
  windowSeconds: number
  /** Client addresses exempt from the per-address budget. */
  allow: string[]
  /** Where the counters live in Redis: `<keyPrefix>rl:<budget key>`. */
  keyPrefix: string
  /** Whether refreshes rotate through the denylist's script (DENYLIST_ENABLED, ROTATE_REFRESH_TOKENS): then they may count their request. */
  rotates: boolean
}

/**
 * Counts a budget's request and answers its count and the window's time left, as
 * @fastify/rate-limit's own script does (the window starts at the first count), for every key
 * given: KEYS, the budgets (one may come several times: it is counted as often); ARGV[1], the
 * window (ms). Answers count, time left, count, time left, … in the keys' order.
 */
const COUNT = `
local counted = {}
for i = 1, #KEYS do
  local current = redis.call('INCR', KEYS[i])
  local left = tonumber(ARGV[1])
  if current == 1 then redis.call('PEXPIRE', KEYS[i], left) else left = redis.call('PTTL', KEYS[i]) end
  counted[2 * i - 1] = current
  counted[2 * i] = left
end
return counted
`

type Counted = (error: Error | null, result?: { current: number, ttl: number }) => void
type Count = (keys: number, ...keysThenWindow: Array<string | number>) => Promise<number[]>

/**
 * @fastify/rate-limit's store, in Redis as its own is, but counting the requests of one turn of the
 * event loop in one command (on a Cluster, one per hash slot) when the turn's I/O is done: every
 * request is still counted in Redis, exactly, across instances. A command per request was a
 * tenth of a refresh's CPU. The window is the plugin's (no route has one of its own).
 */
class BatchedRedisStore implements FastifyRateLimitStore {
  private pending: Array<{ key: string, counted: Counted }> | null = null
  private readonly count: Count
  private readonly redis: RedisClient
  private readonly nameSpace: string
  private readonly windowMs: number

  constructor (redis: RedisClient, nameSpace: string, windowMs: number) {
    this.redis = redis
    this.nameSpace = nameSpace
    this.windowMs = windowMs
    redis.defineCommand('rotorCountRequests', { lua: COUNT })
    this.count = (redis as unknown as { rotorCountRequests: Count }).rotorCountRequests.bind(redis)
  }

  incr (key: string, counted: Counted): void {
    this.enqueue(`${this.nameSpace}${key}`, counted)
  }

  /** Counts one request against a budget's key (its whole Redis key), with the turn's others. */
  async countOne (key: string): Promise<BudgetCount> {
    return await new Promise((resolve, reject) => {
      this.enqueue(key, (error, result) => { if (error === null) resolve({ current: result!.current, ttlMs: result!.ttl }); else reject(error) })
    })
  }

  private enqueue (key: string, counted: Counted): void {
    if (this.pending === null) {
      const batch: Array<{ key: string, counted: Counted }> = []
      this.pending = batch
      setImmediate(() => {
        this.pending = null
        this.send(batch)
      })
    }
    this.pending.push({ key, counted })
  }

  /* c8 ignore next 3: for a route with a limit of its own, which Rotor has none of */
  child (): FastifyRateLimitStore {
    return this
  }

  private send (batch: Array<{ key: string, counted: Counted }>): void {
    for (const group of groupBySlot(batch, (entry) => entry.key, this.redis instanceof Cluster)) {
      this.count(group.length, ...group.map((entry) => entry.key), this.windowMs).then((answers) => {
        group.forEach((entry, i) => { entry.counted(null, { current: answers[2 * i]!, ttl: answers[2 * i + 1]! }) })
      }, (error: Error) => {
        for (const entry of group) entry.counted(error)
      })
    }
  }
}

/** A constructor @fastify/rate-limit can call that answers the one store given. */
function storeOf (store: FastifyRateLimitStore): new () => FastifyRateLimitStore {
  return function Store () { return store } as unknown as new () => FastifyRateLimitStore
}

/** The Redis key of a request's budget, under `<prefix>rl:`: `ip:<address>`, `key:<API key's name>` or `anon:<address>`. */
function budgetKey (request: FastifyRequest): string {
  // IPv4-mapped IPv6 addresses (::ffff:1.2.3.4, as Node reports clients when listening on ::)
  // count as the IPv4 address; other IPv6 clients are counted per /64, the block one host owns.
  if (request.routeOptions.config.budget !== 'api-key') return `ip:${normalizeIP(request.ip)}`
  return request.client === null ? `anon:${normalizeIP(request.ip)}` : `key:${request.client.name}`
}

function exceededMessage (ttlMs: number): string {
  return `rate limit exceeded, retry in ${Math.ceil(ttlMs / 1000)} s`
}

/**
 * A request's budget left to its rotation to count (DeferredBudget): Redis's one round trip for
 * both, where a refresh took two in a row (the count, then the rotation; the server idled between).
 */
class RotationBudget implements DeferredBudget {
  pending = true
  count: BudgetCount | null = null
  readonly key: string
  readonly max: number
  readonly windowMs: number
  private readonly store: BatchedRedisStore

  constructor (store: BatchedRedisStore, key: string, max: number, windowMs: number) {
    this.store = store
    this.key = key
    this.max = max
    this.windowMs = windowMs
  }

  counted (count: BudgetCount): void {
    this.pending = false
    this.count = count
  }

  exceeded (): AppError {
    return new AppError('rate_limited', exceededMessage(this.count!.ttlMs), limitHeaders(this.max, this.count!))
  }

  async spend (): Promise<void> {
    this.pending = false
    let count: BudgetCount
    try {
      count = await this.store.countOne(this.key)
    } catch {
      return // Redis failing: let through, as the plugin's own counting does (skipOnError).
    }
    this.counted(count)
    if (count.current > this.max) throw this.exceeded()
  }
}

/**
 * Every route is limited unless it opts out (`config: { rateLimit: false }`: health, JWKS,
 * metrics), so a route added tomorrow cannot be left open by forgetting. Routes registered before
 * this plugin (the docs, the CORS preflight route) are not; preflights are answered by the CORS
 * hook before any route's hook runs anyway.
 *
 * Budgets live in Redis when there is one, so every instance behind a load balancer counts
 * against the same numbers. If Redis fails, requests are let through rather than refused: the
 * routes that need the store answer 503 on their own, and issuing must keep working. The counters
 * go over the redis plugin's side connection, which gives up sooner than the denylist's (250 ms):
 * while Redis hangs, a request must not wait for the limiter and then the denylist for a whole
 * timeout each (that would blow the 2-second promise of the contract).
 */
export default fp(async function rateLimitPlugin (app, opts: RateLimitOptions) {
  const redis = app.sideRedis === null ? null : await app.sideRedis()
  const allowed = new Set(opts.allow.map((address) => normalizeIP(address, 128)))
  const windowMs = opts.windowSeconds * 1000
  const nameSpace = `${opts.keyPrefix}rl:`
  const store = redis === null ? null : new BatchedRedisStore(redis, nameSpace, windowMs)
  // The rotation's script counts on the denylist's connection: one Redis server, or a primary behind sentinels.
  const folded = opts.rotates && store !== null && !(redis instanceof Cluster) ? store : null
  app.decorateRequest('budget', null)
  await app.register(rateLimit, {
    global: true,
    max: opts.max,
    timeWindow: windowMs,
    skipOnError: true,
    // The plugin constructs its store itself (`new store(options)`): this one, over the side connection.
    ...(store === null ? {} : { store: storeOf(store) }),
    keyGenerator: budgetKey,
    allowList: (request: FastifyRequest, key: string) => {
      if (key.startsWith('ip:') && allowed.has(normalizeIP(request.ip, 128))) return true
      if (folded === null || request.routeOptions.config.countedByRotation !== true) return false
      request.budget = new RotationBudget(folded, `${nameSpace}${key}`, opts.max, windowMs)
      return true
    },
    // The plugin puts the headers on the answer itself.
    errorResponseBuilder: (_request, context) => new AppError('rate_limited', exceededMessage(context.ttl))
  })
  app.decorate('backendRoute', (scope: Scope) => ({
    config: { budget: 'api-key' as const },
    onRequest: [app.identifyClient],
    preParsing: [app.requireClient, app.requireScope(scope)]
  }))
}, { name: 'rate-limit', dependencies: ['api-keys', 'redis'], fastify: '5.x' })
