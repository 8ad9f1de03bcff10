import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { errorResponses, EmptySchema } from '../../schemas/errors.js'
import { SubjectParamsSchema } from '../../schemas/tokens.js'
import { revokeSubject } from '../revocation.js'

const subjectRoutes: FastifyPluginAsyncTypebox = async function subjectRoutes (app) {
  app.post('/v1/subjects/:sub/revoke', {
    onRequest: [app.identifyClient, app.backendRateLimit, app.requireClient],
    schema: {
      summary: 'Log a subject out everywhere: every session issued up to now stops refreshing',
      tags: ['subjects'],
      security: [{ apiKey: [] }],
      params: SubjectParamsSchema,
      body: Type.Union([EmptySchema, Type.Null(), Type.Undefined()], { description: 'no body, or {}' }),
      response: { 200: EmptySchema, ...errorResponses(400, 401, 413, 415, 429, 501, 503) }
    }
  }, async (request) => {
    await revokeSubject({ keyring: app.keyring, denylist: app.denylist, config: app.config, log: request.log }, request.params.sub)
    return {}
  })
}

export default subjectRoutes
