import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { errorResponses, EmptySchema } from '../../schemas/errors.js'
import { SubjectParamsSchema } from '../../schemas/tokens.js'
import { contextOf } from '../context.js'
import { AppError } from '../../plugins/errors.js'
import { revokeSubject } from '../revocation.js'

/** A preValidation hook for a POST that takes no body: none (or a JSON null) is fine; a JSON body must be exactly {}. */
export async function requireEmptyBody (request: FastifyRequest): Promise<void> {
  if (request.body != null && JSON.stringify(request.body) !== '{}') throw new AppError('invalid_request', 'the body must be empty or {}')
}

const subjectRoutes: FastifyPluginAsyncTypebox = async function subjectRoutes (app) {
  app.post('/v1/subjects/:sub/revoke', {
    ...app.backendRoute('revoke'),
    schema: {
      summary: 'Log a subject out everywhere: every session issued up to now stops refreshing',
      tags: ['subjects'],
      security: [{ apiKey: [] }],
      params: SubjectParamsSchema,
      // No body schema: "none, or {}" is not one JSON Schema (a missing body is not a JSON value).
      response: { 200: EmptySchema, ...errorResponses(400, 401, 403, 413, 415, 429, 501, 503) }
    },
    preValidation: requireEmptyBody
  }, async (request) => {
    // No lone surrogate can reach here: a path is UTF-8, and one that does not decode is a 400 bad URL.
    await revokeSubject(contextOf(request), request.params.sub)
    app.metrics.subjectsRevoked.inc()
    return {}
  })
}

export default subjectRoutes
