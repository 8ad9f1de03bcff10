import type { FastifyPluginAsync } from 'fastify'

/** GET /metrics: what `app.metrics` has counted, in Prometheus' text exposition format. */
const metricsRoutes: FastifyPluginAsync = async function metricsRoutes (app) {
  app.get('/metrics', {
    config: { rateLimit: false },
    schema: { summary: 'Prometheus metrics, text exposition format', tags: ['operations'] }
  }, async (_request, reply) => {
    reply.header('content-type', app.metrics.registry.contentType)
    return await app.metrics.collect()
  })
}

export default metricsRoutes
