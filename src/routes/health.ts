import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { HealthSchema } from '../../schemas/health.js'
import { StoreUnavailableError } from '../../plugins/errors.js'

const healthRoutes: FastifyPluginAsyncTypebox = async function healthRoutes (app) {
  app.get('/health/live', {
    config: { rateLimit: false },
    schema: { summary: 'The process runs', tags: ['health'], response: { 200: HealthSchema } }
  }, async () => ({ status: 'ok' }))

  app.get('/health/ready', {
    config: { rateLimit: false },
    schema: { summary: 'Ready for traffic: 503 while a store it needs does not answer', tags: ['health'], response: { 200: HealthSchema, 503: HealthSchema } }
  }, async (_request, reply) => {
    if (app.storeKind !== 'redis') return { status: 'ok', store: app.storeKind === 'memory' ? 'memory' : 'not needed' }
    try {
      await app.denylist.ping()
      return { status: 'ok', store: 'redis' }
    } catch (error) {
      /* c8 ignore next: ping only ever throws StoreUnavailableError */
      if (!(error instanceof StoreUnavailableError)) throw error
      return reply.code(503).header('retry-after', '2').send({ status: 'unavailable', store: 'redis' })
    }
  })
}

export default healthRoutes
