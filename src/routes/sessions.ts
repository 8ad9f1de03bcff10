import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyRequest } from 'fastify'
import { errorResponses, EmptySchema } from '../../schemas/errors.js'
import { MySessionListSchema, SessionListSchema, SessionParamsSchema, SubjectSessionParamsSchema } from '../../schemas/sessions.js'
import { SubjectParamsSchema } from '../../schemas/tokens.js'
import { AppError } from '../../plugins/errors.js'
import userTokensPlugin from '../../plugins/user-tokens.js'
import { contextOf } from '../context.js'
import type { Session } from '../minting.js'
import { endSessions, listSessions, liveSessionOf, requireSessionIndex } from '../sessions.js'
import { requireEmptyBody } from './subjects.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** On the end-user session routes: the session of the access token that asked. */
    session: Session | null
  }
}

/**
 * "Your devices": a subject's sessions, listed and ended one by one. Backends ask with an API key
 * of the `sessions` scope and name the subject; end users ask with their own access token and act
 * on their own subject. Both need the denylist (501 without it): it is where sessions are recorded.
 */
const sessionRoutes: FastifyPluginAsyncTypebox = async function sessionRoutes (app) {
  const notFound = (): AppError => new AppError('not_found', 'no such session: unknown, ended or expired')

  app.get('/v1/subjects/:sub/sessions', {
    ...app.backendRoute('sessions'),
    schema: {
      summary: 'List a subject\'s live sessions, newest first',
      tags: ['sessions'],
      security: [{ apiKey: [] }],
      params: SubjectParamsSchema,
      response: { 200: SessionListSchema, ...errorResponses(400, 401, 403, 429, 501, 503) }
    }
  }, async (request) => ({ sessions: await listSessions(contextOf(request), request.params.sub) }))

  app.delete('/v1/subjects/:sub/sessions/:sid', {
    ...app.backendRoute('sessions'),
    schema: {
      summary: 'End one session of a subject: its refresh tokens stop at once, its access tokens introspect inactive',
      tags: ['sessions'],
      security: [{ apiKey: [] }],
      params: SubjectSessionParamsSchema,
      response: { 200: EmptySchema, ...errorResponses(400, 401, 403, 404, 429, 501, 503) }
    }
  }, async (request) => {
    const { sub, sid } = request.params
    if ((await endSessions(contextOf(request), sub, { sids: [sid] })).length === 0) throw notFound()
    app.metrics.sessionsRevoked.inc({ reason: 'ended' })
    return {}
  })

  // The end user's own: authenticated by their access token (the user-tokens plugin, in this scope only).
  await app.register(userTokensPlugin)
  app.decorateRequest('session', null)
  const asUser = {
    preParsing: async (request: FastifyRequest) => {
      const ctx = contextOf(request)
      requireSessionIndex(ctx)
      await app.authenticateUser(request)
      request.session = await liveSessionOf(ctx, request.user)
    }
  }

  app.get('/v1/sessions', {
    ...asUser,
    schema: {
      summary: 'List my live sessions, newest first; `current` marks the one asking',
      tags: ['sessions'],
      security: [{ accessToken: [] }],
      response: { 200: MySessionListSchema, ...errorResponses(401, 429, 501, 503) }
    }
  }, async (request) => {
    const current = request.session!
    const sessions = await listSessions(contextOf(request), current.sub)
    return { sessions: sessions.map((session) => ({ ...session, current: session.sid === current.sid })) }
  })

  app.delete('/v1/sessions/:sid', {
    ...asUser,
    schema: {
      summary: 'End one of my sessions (another device, or this one)',
      tags: ['sessions'],
      security: [{ accessToken: [] }],
      params: SessionParamsSchema,
      response: { 200: EmptySchema, ...errorResponses(400, 401, 404, 429, 501, 503) }
    }
  }, async (request) => {
    // Only the asker's subject is searched: someone else's sid is as unknown as a made-up one.
    if ((await endSessions(contextOf(request), request.session!.sub, { sids: [request.params.sid] })).length === 0) throw notFound()
    app.metrics.sessionsRevoked.inc({ reason: 'ended' })
    return {}
  })

  app.post('/v1/sessions/revoke-others', {
    ...asUser,
    schema: {
      summary: 'Log out my other devices: every session of mine but the one asking ends',
      tags: ['sessions'],
      security: [{ accessToken: [] }],
      response: { 200: EmptySchema, ...errorResponses(400, 401, 413, 415, 429, 501, 503) }
    },
    preValidation: requireEmptyBody
  }, async (request) => {
    const { sub, sid } = request.session!
    const ended = await endSessions(contextOf(request), sub, { except: sid })
    if (ended.length > 0) app.metrics.sessionsRevoked.inc({ reason: 'ended' }, ended.length)
    return {}
  })
}

export default sessionRoutes
