import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { JwksSchema } from '../../schemas/jwks.js'

const wellKnownRoutes: FastifyPluginAsyncTypebox = async function wellKnownRoutes (app) {
  app.get('/.well-known/jwks.json', {
    schema: {
      summary: 'Public keys that verify access tokens (never the refresh key; none for HS256)',
      tags: ['keys'],
      response: { 200: JwksSchema }
    }
  }, async (_request, reply) => {
    // Verifiers may cache for five minutes: a new key is published well before it signs (see README).
    void reply.header('cache-control', 'public, max-age=300')
    return app.keyring.jwks
  })
}

export default wellKnownRoutes
