import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { Type } from 'typebox'
import { ErrorSchema, errorResponses } from '../../schemas/errors.js'
import { SimpleErrorSchema, SimpleFieldErrorsSchema, SimplePairSchema, SimpleRefreshBodySchema, SimpleTokenBodySchema } from '../../schemas/simplejwt.js'
import { contextOf } from '../context.js'
import { AppError, countedFirst, errorHandler, FieldError, recordError, toAppError, TokenRejectedError } from '../../plugins/errors.js'
import { refreshFor } from './refreshing.js'
import { introspect, revoke } from '../revocation.js'
import { DPOP_HEADER_DOC } from '../dpop.js'

/** The field's string value, or a DRF-shaped 400 as djangorestframework-simplejwt would answer. */
function requiredString (body: Record<string, unknown>, field: string): string {
  const value = body[field]
  if (value === undefined || value === null) throw new FieldError(field, 'This field is required.')
  if (typeof value !== 'string') throw new FieldError(field, 'Not a valid string.')
  if (value.trim() === '') throw new FieldError(field, 'This field may not be blank.')
  return value
}

const DETAIL: Partial<Record<string, string>> = {
  token_revoked: 'Token is blacklisted',
  token_reused: 'Token is blacklisted'
}

/**
 * Errors as SimpleJWT shapes them: token refusals are `401 token_not_valid`, field errors are
 * DRF's. Everything else (413, 415, 429, 501, 503) keeps Rotor's envelope, whose status a
 * SimpleJWT front end reads the same way.
 */
function simpleJwtErrors (error: unknown, request: FastifyRequest, reply: FastifyReply): void {
  if (error instanceof FieldError) {
    reply.code(400).send({ [error.field]: [error.message] })
  } else if ((error as { validation?: unknown }).validation !== undefined) {
    reply.code(400).send({ non_field_errors: ['Invalid data. Expected a dictionary.'] })
  } else if (error instanceof TokenRejectedError) {
    recordError(error, error, request)
    reply.code(401).send({ detail: DETAIL[error.code] ?? 'Token is invalid or expired', code: 'token_not_valid' })
  } else if (toAppError(error).code === 'invalid_request') {
    // A body that is not JSON at all (DRF: "JSON parse error - ...").
    recordError(toAppError(error), error, request)
    reply.code(400).send({ detail: 'JSON parse error' })
  } else {
    errorHandler(error, request, reply)
  }
}

const schemaOf = (summary: string, body: typeof SimpleRefreshBodySchema | typeof SimpleTokenBodySchema, ok: typeof SimplePairSchema | typeof SimpleErrorSchema | Record<string, never>) => ({
  summary,
  tags: ['simplejwt'],
  body,
  // A 400 is DRF's field errors, or Rotor's envelope for what SimpleJWT has no word for (a DPoP proof's fault).
  response: { 200: ok, 400: Type.Union([ErrorSchema, SimpleFieldErrorsSchema]), 401: SimpleErrorSchema, ...errorResponses(413, 415, 429, 501, 503) }
})

/**
 * The routes of djangorestframework-simplejwt, over Rotor's own rotation, denylist and reuse
 * detection, so a front end written for SimpleJWT works unchanged (COMPAT_SIMPLEJWT=true).
 */
const simpleJwtRoutes: FastifyPluginAsyncTypebox = async function simpleJwtRoutes (app) {
  app.setErrorHandler(countedFirst(simpleJwtErrors))

  app.post('/api/auth/token/refresh/', {
    // Its rate-limit count rides on the rotation (plugins/rate-limit.ts): one round trip to Redis.
    config: { countedByRotation: true },
    schema: { ...schemaOf('SimpleJWT TokenRefreshView: {refresh} → {access, refresh}', SimpleRefreshBodySchema, SimplePairSchema), description: DPOP_HEADER_DOC }
  }, async (request, reply) => {
    const result = await refreshFor(request, reply, requiredString(request.body, 'refresh'))
    return { access: result.pair.access_token, refresh: result.pair.refresh_token }
  })

  app.post('/api/auth/token/verify/', {
    schema: schemaOf('SimpleJWT TokenVerifyView: {token} → {} when the token is valid and not revoked', SimpleTokenBodySchema, {})
  }, async (request) => {
    const result = await introspect(contextOf(request), requiredString(request.body, 'token'))
    if (!result.active) throw new TokenRejectedError('token_invalid', 'not an active token')
    return {}
  })

  app.post('/api/auth/token/blacklist/', {
    schema: schemaOf('SimpleJWT TokenBlacklistView: {refresh} → {}; the session ends', SimpleRefreshBodySchema, {})
  }, async (request) => {
    const token = requiredString(request.body, 'refresh')
    const ctx = contextOf(request)
    if (!app.config.denylistEnabled) throw new AppError('denylist_disabled', 'blacklisting needs DENYLIST_ENABLED=true')
    // SimpleJWT answers 401 for a token that is invalid here, unlike RFC 7009's revoke.
    const state = await introspect(ctx, token)
    if (!state.active) throw new TokenRejectedError('token_invalid', 'not an active token')
    if (state['token_type'] !== 'refresh') throw new TokenRejectedError('token_invalid', 'Token has wrong type')
    await revoke(ctx, token)
    app.metrics.sessionsRevoked.inc({ reason: 'logout' })
    return {}
  })
}

export default simpleJwtRoutes
