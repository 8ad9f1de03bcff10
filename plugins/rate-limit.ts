import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyRequest, onRequestHookHandler } from 'fastify'
import type { Config } from '../src/config.js'
import { AppError } from '../src/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** One budget per client IP, shared by refresh, revoke and the SimpleJWT routes. */
    publicRateLimit: onRequestHookHandler
    /** One budget per API key (per IP for requests with no valid key), shared by the backend routes. */
    backendRateLimit: onRequestHookHandler
  }
}

/**
 * Budgets live in Redis when there is one, so every instance behind a load balancer counts
 * against the same numbers. If Redis fails, requests are let through rather than refused: the
 * routes that need the store answer 503 on their own, and issuing must keep working.
 */
export default fp(async function rateLimitPlugin (app, opts: { config: Config }) {
  const { config } = opts
  await app.register(rateLimit, {
    global: false,
    max: config.rateLimitMax,
    timeWindow: config.rateLimitWindow * 1000,
    skipOnError: true,
    ...(app.redis === null ? {} : { redis: app.redis, nameSpace: `${config.redisKeyPrefix}rl:` }),
    errorResponseBuilder: (_request, context) =>
      new AppError('rate_limited', `rate limit exceeded, retry in ${context.after}`)
  })
  const allowed = new Set(config.rateLimitAllow)
  app.decorate('publicRateLimit', app.rateLimit({
    keyGenerator: (request: FastifyRequest) => `ip:${request.ip}`,
    allowList: (request: FastifyRequest) => allowed.has(request.ip)
  }))
  app.decorate('backendRateLimit', app.rateLimit({
    keyGenerator: (request: FastifyRequest) => request.client ?? `ip:${request.ip}`
  }))
}, { name: 'rate-limit', dependencies: ['redis', 'api-keys'], fastify: '5.x' })
