import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import type { FastifyRequest } from 'fastify'
import {
  AuthorizationServerMetadataSchema, OAuthIntrospectionSchema, OAuthTokenBodySchema, OAuthTokenParamsSchema, OAuthTokenResponseSchema, oauthErrorResponses
} from '../../schemas/oauth.js'
import { AppError, BODY_LIMIT, countedFirst, OAuthOnlyError, oauthErrorHandler, TokenRejectedError } from '../../plugins/errors.js'
import type { VerifiedToken } from '../../plugins/keyring.js'
import { contextOf } from '../context.js'
import { introspect, revoke, type Introspection } from '../revocation.js'
import { refreshFor } from './refreshing.js'
import { issuerUrl } from '../config.js'
import { DPOP_ALGORITHMS, DPOP_HEADER_DOC } from '../dpop.js'

/** RFC 8414 metadata: every URL built from the issuer, so it is right behind a proxy that serves Rotor under it. */
function authorizationServerMetadata (issuer: string): Static<typeof AuthorizationServerMetadataSchema> {
  const base = issuer.replace(/\/+$/, '')
  return {
    issuer,
    jwks_uri: `${base}/.well-known/jwks.json`,
    token_endpoint: `${base}/oauth2/token`,
    revocation_endpoint: `${base}/oauth2/revoke`,
    introspection_endpoint: `${base}/oauth2/introspect`,
    grant_types_supported: ['refresh_token'],
    // No authorization endpoint: the backends that call POST /v1/tokens authenticate users.
    response_types_supported: [],
    token_endpoint_auth_methods_supported: ['none', 'client_secret_basic'],
    revocation_endpoint_auth_methods_supported: ['none', 'client_secret_basic'],
    introspection_endpoint_auth_methods_supported: ['client_secret_basic'],
    // RFC 9449 §5.1: the proof algorithms the token endpoint takes.
    dpop_signing_alg_values_supported: [...DPOP_ALGORITHMS]
  }
}

/** RFC 7662 §2.2: the standard members, `token_type` as RFC 6749 names it, Rotor's claims beside. */
function introspectionResponse (result: Introspection): Static<typeof OAuthIntrospectionSchema> {
  if (!result.active) return { active: false }
  const { token_type: type, ...claims } = result
  return { ...claims, token_type: type === 'access' ? 'Bearer' : 'refresh_token' }
}

/**
 * `application/x-www-form-urlencoded`, the only body these routes take: every value a string, and
 * a parameter given twice a 400 (RFC 6749 §3.2). Built with Object.fromEntries, so a parameter
 * called `__proto__` is a plain property.
 */
function parseForm (_request: FastifyRequest, body: string, done: (error: Error | null, fields?: Record<string, string>) => void): void {
  const fields = new Map<string, string>()
  for (const [name, value] of new URLSearchParams(body)) {
    if (fields.has(name)) {
      done(new AppError('invalid_request', `the parameter ${name.slice(0, 64)} is given more than once`))
      return
    }
    fields.set(name, value)
  }
  done(null, Object.fromEntries(fields))
}

/** A client that authenticates (HTTP Basic or a bearer API key) must be one Rotor knows; a public client sends none. */
async function refuseUnknownClient (request: FastifyRequest): Promise<void> {
  if (request.headers.authorization !== undefined && request.client === null) {
    throw new AppError('invalid_client', 'the client credentials are not valid')
  }
}

/**
 * RFC 6749 §6: a client that authenticates refreshes only the tokens issued to it (a token that
 * does not verify is refused by the refresh itself, as for anyone).
 */
function requireIssuedTo (verified: VerifiedToken | TokenRejectedError, client: string): void {
  if (!(verified instanceof TokenRejectedError) && verified.payload['client_id'] !== client) {
    throw new TokenRejectedError('token_invalid', 'this refresh token was issued to another client')
  }
}

/**
 * The standard wire beside `/v1`, for clients teams already have (gateways' introspection
 * plugins, openid-client, authlib): RFC 6749 §6's refresh grant, RFC 7009 revocation, RFC 7662
 * introspection, with form bodies and RFC 6749's error shape; the same rotation, store and
 * rate limits underneath.
 */
const oauthEndpoints: FastifyPluginAsyncTypebox = async function oauthEndpoints (app) {
  app.setErrorHandler(countedFirst(oauthErrorHandler))
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: BODY_LIMIT }, parseForm)
  const publicClient = { onRequest: [app.identifyClient], preParsing: [refuseUnknownClient] }

  app.post('/oauth2/token', {
    ...publicClient,
    // Its rate-limit count rides on the rotation (plugins/rate-limit.ts): one round trip to Redis.
    config: { countedByRotation: true },
    schema: {
      summary: 'RFC 6749 §6: the refresh grant; the same rotation as /v1/tokens/refresh',
      description: DPOP_HEADER_DOC,
      tags: ['oauth'],
      consumes: ['application/x-www-form-urlencoded'],
      body: OAuthTokenBodySchema,
      response: { 200: OAuthTokenResponseSchema, ...oauthErrorResponses(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    const { grant_type: grantType, refresh_token: presented } = request.body
    if (grantType !== 'refresh_token') throw new OAuthOnlyError('unsupported_grant_type', 'invalid_request', 'grant_type must be refresh_token')
    if (presented === undefined) throw new AppError('invalid_request', 'refresh_token is required')
    if (request.client !== null) requireIssuedTo(app.keyring.check(presented, 'refresh'), request.client.name)
    const { pair, session } = await refreshFor(request, reply, presented)
    reply.header('pragma', 'no-cache')
    // RFC 9449 §5: a pair bound to a DPoP key is of type DPoP on the OAuth wire.
    return session.jkt === undefined ? pair : { ...pair, token_type: 'DPoP' as const }
  })

  app.post('/oauth2/revoke', {
    ...publicClient,
    schema: {
      summary: 'RFC 7009: revoke a token (a refresh token ends its session); 200 for an unknown or invalid one too',
      tags: ['oauth'],
      consumes: ['application/x-www-form-urlencoded'],
      body: OAuthTokenParamsSchema,
      response: { 200: Type.Unsafe<undefined>({ description: 'revoked, or nothing to revoke: no body' }), ...oauthErrorResponses(400, 401, 413, 415, 429, 503) }
    }
  }, async (request, reply) => {
    // token_type_hint is only a hint (RFC 7009 §2.1): the token says what it is.
    if (await revoke(contextOf(request), request.body.token) === 'session') app.metrics.sessionsRevoked.inc({ reason: 'logout' })
    return reply.code(200).send(undefined)
  })

  app.post('/oauth2/introspect', {
    ...app.backendRoute('introspect'),
    schema: {
      summary: 'RFC 7662: introspect a token; the calling backend authenticates with HTTP Basic (key name:secret) or a bearer API key',
      tags: ['oauth'],
      security: [{ basic: [] }, { apiKey: [] }],
      consumes: ['application/x-www-form-urlencoded'],
      body: OAuthTokenParamsSchema,
      response: { 200: OAuthIntrospectionSchema, ...oauthErrorResponses(400, 401, 403, 413, 415, 429, 503) }
    }
  }, async (request) => introspectionResponse(await introspect(contextOf(request), request.body.token)))
}

const METADATA_PATH = '/.well-known/oauth-authorization-server'

const oauthRoutes: FastifyPluginAsyncTypebox = async function oauthRoutes (app) {
  const url = issuerUrl(app.config.jwtIssuer)
  const issuer = url === null ? null : app.config.jwtIssuer
  // RFC 8414 §3.1 puts the document of an issuer with a path (https://example.com/auth) at
  // /.well-known/oauth-authorization-server/auth, the path after the well-known part: served
  // too, for the proxy that routes it here. The plain path serves a proxy that strips /auth.
  // (A path the router would read as parameters, with `:` or `*`, is left to the plain path.)
  const issuerPath = url === null || !/^[\w.~/-]*$/.test(url.pathname) ? '' : url.pathname.replace(/\/+$/, '')
  for (const path of issuerPath === '' ? [METADATA_PATH] : [METADATA_PATH, `${METADATA_PATH}${issuerPath}`]) {
    app.get(path, {
      config: { rateLimit: false },
      schema: {
        summary: 'RFC 8414 metadata; 404 unless JWT_ISSUER is an http(s) URL',
        tags: ['oauth'],
        response: { 200: AuthorizationServerMetadataSchema }
      }
    }, async (_request, reply) => {
      if (issuer === null) throw new AppError('not_found', 'no OAuth metadata: JWT_ISSUER is not an http(s) URL')
      reply.header('cache-control', 'public, max-age=3600')
      return authorizationServerMetadata(issuer)
    })
  }
  await app.register(oauthEndpoints)
}

export default oauthRoutes
