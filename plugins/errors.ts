// Every error Rotor answers or stops with, in one place: the contract's codes and their statuses,
// the classes thrown for them, the settings and startup errors that stop a start, SimpleJWT's field
// error, and the one handler that turns any of them into an answer and a log line.
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { scrubTokens } from './logging.js'
import { limitHeaders } from './budget.js'

/** Every error code of the contract, with its status. The codes are API: never rename one. */
export const ERROR_CODES = {
  invalid_request: 400,
  invalid_dpop_proof: 400,
  use_dpop_nonce: 400,
  invalid_client: 401,
  insufficient_scope: 403,
  token_invalid: 401,
  token_expired: 401,
  token_revoked: 401,
  token_reused: 401,
  not_found: 404,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  internal_error: 500,
  denylist_disabled: 501,
  denylist_unavailable: 503
} as const

export type ErrorCode = keyof typeof ERROR_CODES

/** Largest body accepted, per the contract. */
export const BODY_LIMIT = 16 * 1024

/** Seconds a client should wait after a 503 before trying again. */
export const STORE_RETRY_AFTER = 2

export class AppError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number
  readonly headers: Record<string, string>
  constructor (code: ErrorCode, message: string, headers: Record<string, string> = {}) {
    // Messages may repeat input (a URL, a property name): never a token, in the answer or the log.
    super(scrubTokens(message))
    this.name = 'AppError'
    this.code = code
    this.statusCode = ERROR_CODES[code]
    this.headers = headers
  }
}

/** Which token a refusal was about, for the log line (never the token itself). */
export interface TokenLogFields { sub?: string, sid?: string, jti?: string }

/** A token was refused: its code says why (invalid, expired, revoked, reused). */
export class TokenRejectedError extends AppError {
  readonly token: TokenLogFields
  constructor (code: 'token_invalid' | 'token_expired' | 'token_revoked' | 'token_reused', message: string, token: TokenLogFields = {}) {
    super(code, message)
    this.name = 'TokenRejectedError'
    this.token = token
  }
}

/** A rotated refresh token presented again: `enforced` says whether its session was revoked for it. */
export class TokenReusedError extends TokenRejectedError {
  readonly enforced: boolean
  constructor (token: TokenLogFields, enforced: boolean) {
    super('token_reused', 'this refresh token was already used; the session is revoked', token)
    this.name = 'TokenReusedError'
    this.enforced = enforced
  }
}

/** The store (Redis) could not be reached or did not answer in time. */
export class StoreUnavailableError extends AppError {
  /** What the Redis client said: logged, never sent to the client. */
  readonly reason: string
  constructor (reason: string) {
    super('denylist_unavailable', `the token store is unavailable; retry after ${STORE_RETRY_AFTER} seconds`, { 'retry-after': String(STORE_RETRY_AFTER) })
    this.name = 'StoreUnavailableError'
    this.reason = reason
  }
}

export interface ErrorBody {
  statusCode: number
  code: ErrorCode
  error: string
  message: string
}

export function errorBody (error: AppError): ErrorBody {
  // Every status in ERROR_CODES is a standard one, with a reason phrase.
  return { statusCode: error.statusCode, code: error.code, error: String(STATUS_CODES[error.statusCode]), message: error.message }
}

/** Fastify's own 4xx errors (body parsing, limits, validation) onto the contract's codes. */
const FASTIFY_CODES: Record<string, ErrorCode> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type'
}

/** Messages of our own where Fastify's would repeat the whole URL (up to the header limit). */
const FASTIFY_MESSAGES: Record<string, string> = {
  FST_ERR_BAD_URL: 'the URL is not valid (malformed percent-encoding)',
  FST_ERR_MAX_PARAM_LENGTH: 'a path parameter is longer than 1024 characters'
}

/** Turns anything thrown into an {@link AppError}; unknown errors become `internal_error`. */
export function toAppError (error: unknown): AppError {
  if (error instanceof AppError) return error
  // Object(): whatever was thrown (even undefined or a string) can be looked at the same way.
  const err = Object(error) as Partial<FastifyError>
  // Fastify's validation message names the part and the rule ("body/sub must NOT have fewer than 1 characters").
  if (err.validation !== undefined) return new AppError('invalid_request', String(err.message))
  const mapped = FASTIFY_CODES[String(err.code)]
  if (mapped !== undefined) return new AppError(mapped, String(err.message))
  const message = FASTIFY_MESSAGES[String(err.code)]
  if (message !== undefined) return new AppError('invalid_request', message)
  if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
    // Fastify's body parsers: invalid JSON, empty body, __proto__ poisoning. Their messages hold no body content.
    return new AppError('invalid_request', String(err.message))
  }
  return new AppError('internal_error', 'an unexpected error occurred')
}

/** Logs and counts an error answer: one line, at the level its kind deserves. */
export function recordError (appError: AppError, error: unknown, request: FastifyRequest): void {
  const { metrics } = request.server
  metrics.errors.inc({ code: appError.code })
  if (appError.code === 'internal_error') {
    request.log.error({ err: error }, 'unexpected error')
  } else if (appError instanceof StoreUnavailableError) {
    metrics.storeErrors.inc()
    request.log.warn({ code: appError.code, reason: appError.reason }, 'store unavailable: answered 503')
  } else if (appError instanceof TokenRejectedError) {
    metrics.refused.inc({ code: appError.code })
    if (appError instanceof TokenReusedError) {
      metrics.reuse.inc({ enforced: String(appError.enforced) })
      if (appError.enforced) metrics.sessionsRevoked.inc({ reason: 'reuse' })
    }
    request.log.info({ event: 'token.refused', code: appError.code, reason: appError.message, ...appError.token }, 'token refused')
  } else {
    request.log.info({ code: appError.code, reason: appError.message }, 'request refused')
  }
}

type ErrorAnswer = (error: unknown, request: FastifyRequest, reply: FastifyReply) => void

function withBudget (answer: ErrorAnswer, error: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const { budget } = request
  // Within the limit the answer carries the budget's headers, as the plugin's counting puts them on every answer.
  if (budget?.count != null) reply.headers(limitHeaders(budget.max, budget.count))
  answer(error, request, reply)
}

/**
 * An error handler that first counts a request whose rate-limit count was left to its rotation
 * (DeferredBudget), when the rotation did not happen: over the limit the answer is the 429,
 * whatever else went wrong, as when the plugin counted before the request was read. Not for a
 * 503: with Redis failing, the rate limit lets requests through. Every scope's error handler is
 * one of these (`app.setErrorHandler(countedFirst(…))`).
 */
export function countedFirst (answer: ErrorAnswer): (this: unknown, error: unknown, request: FastifyRequest, reply: FastifyReply) => void | Promise<void> {
  return function countingErrorHandler (error, request, reply) {
    const { budget } = request
    if (budget?.pending === true && !(error instanceof StoreUnavailableError)) {
      return budget.spend().then(() => { withBudget(answer, error, request, reply) }, (limited: unknown) => { withBudget(answer, limited, request, reply) })
    }
    withBudget(answer, error, request, reply)
  }
}

/** The one error handler: every answer that is not a success goes out through here (or a scope's own shape of it). */
export const errorHandler = countedFirst(function answer (error, request, reply) {
  const appError = toAppError(error)
  recordError(appError, error, request)
  reply.code(appError.statusCode).headers(appError.headers).send(errorBody(appError))
})

/**
 * RFC 6749 §5.2's error codes: the second error shape, chosen by the /oauth2 routes for their
 * whole scope (`app.setErrorHandler(countedFirst(oauthErrorHandler))`), never per call site.
 */
export type OAuthErrorCode = 'invalid_request' | 'invalid_client' | 'invalid_grant' | 'unsupported_grant_type' |
  'unsupported_token_type' | 'insufficient_scope' | 'temporarily_unavailable' | 'server_error' | 'invalid_dpop_proof' | 'use_dpop_nonce'

/** An error that only the OAuth wire has a word for; elsewhere (metrics, logs) it counts as `code`. */
export class OAuthOnlyError extends AppError {
  readonly oauthCode: OAuthErrorCode
  constructor (oauthCode: OAuthErrorCode, code: ErrorCode, message: string) {
    super(code, message)
    this.name = 'OAuthOnlyError'
    this.oauthCode = oauthCode
  }
}

/** Which RFC 6749 error a contract code is: a refused token is `invalid_grant`, a wait is `temporarily_unavailable`. */
const OAUTH_CODES: Record<ErrorCode, OAuthErrorCode> = {
  invalid_request: 'invalid_request',
  // RFC 9449 §5 and §8 name these two for the token endpoint.
  invalid_dpop_proof: 'invalid_dpop_proof',
  use_dpop_nonce: 'use_dpop_nonce',
  invalid_client: 'invalid_client',
  // RFC 6750 §3.1's word for it, as RFC 7662 §2.3 has protected resources use.
  insufficient_scope: 'insufficient_scope',
  token_invalid: 'invalid_grant',
  token_expired: 'invalid_grant',
  token_revoked: 'invalid_grant',
  token_reused: 'invalid_grant',
  not_found: 'invalid_request',
  payload_too_large: 'invalid_request',
  unsupported_media_type: 'invalid_request',
  // RFC 6749 has no word for "slow down" outside the device flow: the status and Retry-After say it.
  rate_limited: 'temporarily_unavailable',
  internal_error: 'server_error',
  denylist_disabled: 'unsupported_token_type',
  denylist_unavailable: 'temporarily_unavailable'
}

/** `{"error", "error_description"}`; the description as §5.2 allows it (printable ASCII, no `"` or `\`). */
function oauthErrorBody (error: AppError): { error: OAuthErrorCode, error_description: string } {
  const code = error instanceof OAuthOnlyError ? error.oauthCode : OAUTH_CODES[error.code]
  return { error: code, error_description: error.message.replaceAll('"', "'").replace(/[^\x20-\x21\x23-\x5b\x5d-\x7e]/g, '?') }
}

/**
 * The error handler of the /oauth2 routes: the same statuses, headers, log lines and counts as
 * the envelope's, in RFC 6749's shape. A token refused is `400 invalid_grant` (§5.2), not 401;
 * a client refused is `401 invalid_client` with a Basic challenge; RFC 7009 answers a revocation
 * Rotor cannot record with `400 unsupported_token_type`.
 */
export function oauthErrorHandler (this: unknown, error: unknown, request: FastifyRequest, reply: FastifyReply): void {
  const appError = toAppError(error)
  recordError(appError, error, request)
  const body = oauthErrorBody(appError)
  const status = body.error === 'invalid_grant' || body.error === 'unsupported_token_type' ? 400 : appError.statusCode
  reply.code(status).headers(appError.headers)
  if (body.error === 'invalid_client') reply.header('www-authenticate', 'Basic realm="rotor"')
  reply.send(body)
}

/** What a request that arrives while the server drains is told: try again (another instance will answer). */
export class DrainingError extends AppError {
  constructor () {
    super('denylist_unavailable', `Rotor is shutting down; retry after ${STORE_RETRY_AFTER} seconds`, { 'retry-after': String(STORE_RETRY_AFTER) })
    this.name = 'DrainingError'
  }
}

export function notFoundHandler (request: FastifyRequest, reply: FastifyReply): void {
  // The query string is left out: it is the caller's, and may hold anything.
  const error = new AppError('not_found', `no route ${request.method} ${request.url.replace(/\?.*$/s, '')}`)
  reply.code(error.statusCode).send(errorBody(error))
}

/** A bad setting: the message names every variable at fault and what it expects. */
export class ConfigError extends Error {
  readonly problems: string[]
  constructor (problems: string[]) {
    super(`invalid settings:\n${problems.map((p) => `  - ${p}`).join('\n')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

/** A reason not to start at all, as opposed to a Redis that is merely not there yet. */
export class StartupError extends Error {
  override name = 'StartupError'
}

/** A DRF field error: `400 {"<field>": ["<message>"]}`. */
export class FieldError extends Error {
  readonly field: string
  constructor (field: string, message: string) {
    super(message)
    this.field = field
  }
}

/**
 * The one error handler and the 404 handler, the draining answer, and JSON as the only body: Fastify's text/plain
 * parser would let a non-JSON body reach a route, so every other type is a 415.
 */
export default fp(async function errorsPlugin (app) {
  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler(notFoundHandler)
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('application/json', { parseAs: 'string', bodyLimit: BODY_LIMIT }, app.getDefaultJsonParser('error', 'error'))

  // From the start of a shutdown, requests that still arrive (on a kept-alive connection, or
  // pipelined) get the envelope's 503 with Retry-After rather than Fastify's bare one; those in
  // flight finish. A callback hook: it runs on every request.
  let draining = false
  app.addHook('preClose', (done) => {
    draining = true
    done()
  })
  app.addHook('onRequest', (_request, _reply, done) => {
    done(draining ? new DrainingError() : undefined)
  })
  // Every error answer is counted (recordError): the metrics must be there first.
}, { name: 'errors', dependencies: ['metrics'], fastify: '5.x' })
