import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses, EmptySchema } from '../../schemas/errors.js'
import { IntrospectionSchema, IssueBodySchema, RefreshBodySchema, TokenBodySchema, TokenPairSchema } from '../../schemas/tokens.js'
import { contextOf } from '../context.js'
import type { Config } from '../config.js'
import { AppError } from '../../plugins/errors.js'
import { countListing, refreshFor } from './refreshing.js'
import { entryOf, recordSession } from '../sessions.js'
import { DPOP_HEADER_DOC } from '../dpop.js'
import { introspect, revoke } from '../revocation.js'
import { MAX_TOKEN_LENGTH } from '../../plugins/keyring.js'
import { clockUs, MAX_CLAIMS_DEPTH, mintPair, nestsDeeperThan, newSession, randomId, RESERVED_CLAIMS } from '../minting.js'

/** The audience of a new session: the one asked for (if allowed), else the configured default. */
function audienceOf (config: Config, asked: string | string[] | undefined): string | string[] | undefined {
  if (asked === undefined) return config.jwtAudience[0]
  const wanted = Array.isArray(asked) ? asked : [asked]
  if (config.jwtAudience.length > 0) {
    const refused = wanted.find((aud) => !config.jwtAudience.includes(aud))
    if (refused !== undefined) throw new AppError('invalid_request', `aud "${refused}" is not in JWT_AUDIENCE`)
  }
  return asked
}

const tokenRoutes: FastifyPluginAsyncTypebox = async function tokenRoutes (app) {
  app.post('/v1/tokens', {
    ...app.backendRoute('issue'),
    schema: {
      summary: 'Issue a pair for a subject the calling backend has authenticated',
      tags: ['tokens'],
      security: [{ apiKey: [] }],
      body: IssueBodySchema,
      response: { 200: TokenPairSchema, ...errorResponses(400, 401, 403, 413, 415, 429) }
    }
  }, async (request) => {
    const { sub, claims = {}, aud, device, dpop_jkt: jkt } = request.body
    // A lone surrogate: text JSON can carry but UTF-8 (so Redis, and most backends) cannot.
    if (!sub.isWellFormed()) throw new AppError('invalid_request', 'sub must be well-formed Unicode (it has a lone surrogate)')
    const reserved = Object.keys(claims).find((name) => RESERVED_CLAIMS.has(name))
    if (reserved !== undefined) throw new AppError('invalid_request', `claims may not set the reserved claim "${reserved}"`)
    if (nestsDeeperThan(claims, MAX_CLAIMS_DEPTH)) throw new AppError('invalid_request', `claims may nest at most ${MAX_CLAIMS_DEPTH} levels deep`)
    const issuedUs = clockUs()
    const nowSec = Math.floor(issuedUs / 1_000_000)
    // backendRoute() let no request without a client through.
    const session = newSession(sub, audienceOf(app.config, aud), claims, issuedUs, request.client!.name, jkt)
    const ids = { access: randomId(), refresh: randomId() }
    const pair = mintPair(app.keyring, app.config, session, nowSec, ids, nowSec)
    // Every rotation mints tokens of the same length (same claims, same-width numbers): what
    // passes here is accepted back by every route, and what does not would be refused there.
    const longest = Math.max(pair.access_token.length, pair.refresh_token.length)
    if (longest > MAX_TOKEN_LENGTH) {
      throw new AppError('invalid_request', `claims make a token of ${longest} characters; Rotor accepts tokens of at most ${MAX_TOKEN_LENGTH}: send fewer or shorter claims`)
    }
    const ctx = contextOf(request)
    countListing(app.metrics, await recordSession(ctx, entryOf(ctx, session, nowSec, device ?? null), sub, Math.floor(issuedUs / 1000)))
    app.metrics.issued.inc()
    request.log.info({ event: 'token.issued', sub, sid: session.sid, jti: ids.refresh }, 'pair issued')
    return pair
  })

  app.post('/v1/tokens/refresh', {
    // Its rate-limit count rides on the rotation (plugins/rate-limit.ts): one round trip to Redis.
    config: { countedByRotation: true },
    schema: {
      summary: 'Rotate a pair: a new access token and a new refresh token for the same session',
      description: DPOP_HEADER_DOC,
      tags: ['tokens'],
      body: RefreshBodySchema,
      response: { 200: TokenPairSchema, ...errorResponses(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    return (await refreshFor(request, reply, request.body.refresh_token)).pair
  })

  app.post('/v1/tokens/revoke', {
    schema: {
      summary: 'Revoke a token (RFC 7009): a refresh token ends its whole session',
      tags: ['tokens'],
      body: TokenBodySchema,
      response: { 200: EmptySchema, ...errorResponses(400, 413, 415, 429, 501, 503) }
    }
  }, async (request) => {
    if (await revoke(contextOf(request), request.body.token) === 'session') app.metrics.sessionsRevoked.inc({ reason: 'logout' })
    return {}
  })

  app.post('/v1/tokens/introspect', {
    ...app.backendRoute('introspect'),
    schema: {
      summary: 'Introspect a token (RFC 7662): active, with its claims, or inactive',
      tags: ['tokens'],
      security: [{ apiKey: [] }],
      body: TokenBodySchema,
      response: { 200: IntrospectionSchema, ...errorResponses(400, 401, 403, 413, 415, 429, 503) }
    }
  }, async (request) => introspect(contextOf(request), request.body.token))
}

export default tokenRoutes
