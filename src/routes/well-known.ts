import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { JwksSchema } from '../../schemas/jwks.js'
import { JWKS_MAX_AGE } from '../../plugins/key-material.js'

/** RFC 9110 §13.1.2: `*`, or a list of entity tags compared weakly (a `W/` prefix is ignored). */
function matchesEtag (ifNoneMatch: string, etag: string): boolean {
  return ifNoneMatch.split(',').some((tag) => {
    const trimmed = tag.trim()
    return trimmed === '*' || trimmed.replace(/^W\//, '') === etag
  })
}

const wellKnownRoutes: FastifyPluginAsyncTypebox = async function wellKnownRoutes (app) {
  app.get('/.well-known/jwks.json', {
    // Verifiers fetch it on every unknown kid; a limit would turn a key rotation into 429s.
    config: { rateLimit: false },
    schema: {
      summary: 'Public keys that verify access tokens (never the refresh key; none for HS256)',
      tags: ['keys'],
      response: {
        200: JwksSchema,
        304: Type.Unsafe<undefined>({ description: 'Not Modified: the JWKS named by If-None-Match is still current' })
      }
    }
  }, async (request, reply) => {
    const { jwks, jwksEtag } = app.keyring
    // Verifiers cache for JWKS_MAX_AGE and then revalidate cheaply with the ETag; a key is
    // published at least that long before it signs (`keys rotate --stage`, see README).
    reply.header('cache-control', `public, max-age=${JWKS_MAX_AGE}`).header('etag', jwksEtag)
    const ifNoneMatch = request.headers['if-none-match']
    if (ifNoneMatch !== undefined && matchesEtag(ifNoneMatch, jwksEtag)) return reply.code(304).send()
    return jwks
  })
}

export default wellKnownRoutes
