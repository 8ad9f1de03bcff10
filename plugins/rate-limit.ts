import fp from 'fastify-plugin'
import rateLimit, { normalizeIP } from '@fastify/rate-limit'
import type { FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Config } from './config.js'
import { AppError } from './errors.js'
import { createRedisClient, recycleWhenSilent } from './redis.js'

/**
 * The limiter's own Redis connection gives up sooner than the denylist's: while Redis hangs, a
 * request must not wait for the limiter first and the denylist second (two timeouts would blow
 * the 2-second promise of the contract). The limiter then lets the request through.
 */
const RATE_LIMIT_COMMAND_TIMEOUT_MS = 250

declare module 'fastify' {
  interface FastifyInstance {
    /** One budget per client IP, shared by refresh, revoke and the SimpleJWT routes. */
    publicRateLimit: onRequestHookHandler
    /** One budget per API key (per IP for requests with no valid key), shared by the backend routes. */
    backendRateLimit: onRequestHookHandler
    /** The onRequest hooks of every backend route, in order: who is calling, their budget, then 401 if no one. */
    backendGuards: onRequestHookHandler[]
  }
}

/**
 * Budgets live in Redis when there is one, so every instance behind a load balancer counts
 * against the same numbers. If Redis fails, requests are let through rather than refused: the
 * routes that need the store answer 503 on their own, and issuing must keep working.
 */
export default fp(async function rateLimitPlugin (app, opts: { config: Config }) {
  const { config } = opts
  const redis = config.redis.kind === 'memory' ? null : createRedisClient(config.redis, RATE_LIMIT_COMMAND_TIMEOUT_MS)
  if (redis !== null) {
    redis.on('error', () => {}) // the redis plugin's client already reports Redis's health
    // Not there yet (a sidecar starting first): the limiter lets requests through until it is.
    await Promise.race([redis.connect().catch(() => {}), new Promise((resolve) => setTimeout(resolve, 2000).unref())])
    const stopWatching = recycleWhenSilent(redis)
    app.addHook('onClose', async () => {
      stopWatching()
      redis.disconnect()
    })
  }
  await app.register(rateLimit, {
    global: false,
    max: config.rateLimitMax,
    timeWindow: config.rateLimitWindow * 1000,
    skipOnError: true,
    ...(redis === null ? {} : { redis, nameSpace: `${config.redisKeyPrefix}rl:` }),
    errorResponseBuilder: (_request, context) =>
      new AppError('rate_limited', `rate limit exceeded, retry in ${context.after}`)
  })
  // IPv4-mapped IPv6 addresses (::ffff:1.2.3.4, as Node reports clients when listening on ::)
  // count as the IPv4 address; other IPv6 clients are counted per /64, the block one host owns.
  const allowed = new Set(config.rateLimitAllow.map((address) => normalizeIP(address, 128)))
  app.decorate('publicRateLimit', app.rateLimit({
    keyGenerator: (request: FastifyRequest) => `ip:${normalizeIP(request.ip)}`,
    allowList: (request: FastifyRequest) => allowed.has(normalizeIP(request.ip, 128))
  }))
  // The library keeps every limiter made this way under one Redis namespace: the keys of the
  // two budgets must differ ("anon:" is not "ip:"), or bad API keys would spend a browser's budget.
  app.decorate('backendRateLimit', app.rateLimit({
    keyGenerator: (request: FastifyRequest) => request.client ?? `anon:${normalizeIP(request.ip)}`
  }))
  app.decorate('backendGuards', [app.identifyClient, app.backendRateLimit, app.requireClient])
}, { name: 'rate-limit', dependencies: ['api-keys'], fastify: '5.x' })
