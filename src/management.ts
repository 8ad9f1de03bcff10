import fp from 'fastify-plugin'
import Fastify, { LogController, type FastifyInstance } from 'fastify'
import errorsPlugin from '../plugins/errors.js'
import healthRoutes from './routes/health.js'
import metricsRoutes from './routes/metrics.js'
import type { RedisClient } from '../plugins/redis.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** The ops listener's app when MANAGEMENT_PORT is set, else null. */
    management: FastifyInstance | null
  }
}

/**
 * The ops listener (MANAGEMENT_PORT): /metrics and /health/* on a port of their own, so that a
 * NetworkPolicy or firewall can keep the scraper's and the kubelet's traffic apart from users'.
 * It answers from the main app's state (its settings, store and counters); it never listens on
 * its own: src/server.ts does. Probes and scrapes are not logged per request (every few seconds,
 * forever, they would drown the log); errors still are.
 */
export async function buildManagementApp (app: FastifyInstance): Promise<FastifyInstance> {
  const management = Fastify({
    loggerInstance: app.log.child({ listener: 'management' }),
    logController: new LogController({ disableRequestLogging: true }),
    connectionTimeout: 10_000,
    requestTimeout: 30_000,
    http: { connectionsCheckingInterval: 1000, requestTimeout: 30_000 }
  })
  // The main app's counters, under the plugin name the errors plugin depends on.
  await management.register(fp(async (ops) => { ops.decorate('metrics', app.metrics) }, { name: 'metrics' }))
  await management.register(errorsPlugin)
  management.decorate('config', app.config)
  management.decorate<RedisClient | null>('redis', app.redis)
  management.decorate('denylist', app.denylist)
  management.decorate('storeKind', app.storeKind)
  await management.register(healthRoutes)
  await management.register(metricsRoutes)
  return management
}
