/**
 * A backend that verifies Rotor's access tokens locally, with Rotor's JWKS and `jose`.
 *
 * Nothing here calls Rotor per request: the public keys are fetched once, cached, and fetched
 * again when a token names a `kid` the cache does not hold (a key Rotor has just started signing
 * with). The price of local verification: an access token stays valid here until it expires,
 * whatever was revoked in Rotor. Where that is not acceptable, call `POST /v1/tokens/introspect`
 * (with an API key) as well.
 *
 * What is checked, and why:
 * - the signature, with a key of Rotor's JWKS picked by `kid` (Rotor's refresh tokens have a
 *   `kid` that is never published, so they can never pass here);
 * - `alg` pinned to Rotor's `JWT_ALGORITHM`: the header does not choose the algorithm;
 * - `typ: at+jwt` (RFC 9068), `token_type: "access"`: an access token, nothing else;
 * - `iss` (Rotor's `JWT_ISSUER`), `aud` when this backend has a name in Rotor's `JWT_AUDIENCE`;
 * - `exp`, and `iat` not in the future, with `clockTolerance` (Rotor's `LEEWAY`).
 *
 * Run it (Node 22.18+ strips the types itself; on Node 20 use `npx tsx`):
 *   ROTOR_JWKS_URL=http://127.0.0.1:8080/.well-known/jwks.json node examples/verify-backend/server.ts
 *   curl -H "authorization: Bearer $ACCESS" http://127.0.0.1:8081/api/me
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'
import { createRemoteJWKSet, errors, jwtVerify, type JWTPayload, type JWTVerifyOptions } from 'jose'

/** Rotor's asymmetric algorithms (with HS256 nothing is published, so nothing can be verified here). */
export type RotorAlgorithm = 'EdDSA' | 'ES256' | 'RS256'

export interface VerifierOptions {
  /** Rotor's `JWT_ISSUER`. Default `rotor`. */
  issuer?: string
  /** This backend's name in Rotor's `JWT_AUDIENCE`; unset: `aud` is not checked (Rotor sets none either). */
  audience?: string | string[]
  /** Rotor's `JWT_ALGORITHM`; during an algorithm migration, both. Default `['EdDSA']`. */
  algorithms?: RotorAlgorithm[]
  /** Seconds of clock skew allowed on `exp` and `iat`: Rotor's `LEEWAY`. Default 0. */
  clockTolerance?: number
  /** How long a JWKS fetch may take before the request answers 503. Default 5000 ms. */
  timeoutMs?: number
  /** How long the JWKS is cached; Rotor serves it with `max-age=300`. Default 300000 ms. */
  cacheMaxAgeMs?: number
}

/** The claims of a Rotor access token; custom claims given at issuance come along. */
export interface AccessClaims extends JWTPayload {
  iss: string
  sub: string
  jti: string
  sid: string
  iat: number
  exp: number
  auth_time: number
  token_type: 'access'
}

/** The token is not a valid Rotor access token: answer 401 (the client must refresh or sign in). */
export class TokenRejected extends Error {
  override readonly name = 'TokenRejected'
}

/** The JWKS cannot be fetched: nobody can tell whether the token is good. Answer 503, not 401. */
export class VerifierUnavailable extends Error {
  override readonly name = 'VerifierUnavailable'
}

export type Verifier = (token: string) => Promise<AccessClaims>

/** jose's codes that say something about the token, as opposed to the JWKS being unreachable. */
const TOKEN_ERRORS = new Set([
  errors.JWTExpired.code,
  errors.JWTClaimValidationFailed.code,
  errors.JWTInvalid.code,
  errors.JWSInvalid.code,
  errors.JWSSignatureVerificationFailed.code,
  errors.JOSEAlgNotAllowed.code,
  errors.JOSENotSupported.code,
  errors.JWKSNoMatchingKey.code,
  errors.JWKSMultipleMatchingKeys.code
])

/**
 * A function that verifies a Rotor access token and resolves to its claims; it rejects with
 * {@link TokenRejected} (401) or {@link VerifierUnavailable} (503).
 *
 * @example
 * const verify = createVerifier('https://rotor.internal/.well-known/jwks.json', { algorithms: ['EdDSA'] })
 * const claims = await verify(token) // claims.sub, claims.role, ...
 */
export function createVerifier (jwksUrl: string | URL, options: VerifierOptions = {}): Verifier {
  const jwks = createRemoteJWKSet(new URL(jwksUrl), {
    timeoutDuration: options.timeoutMs ?? 5000,
    cacheMaxAge: options.cacheMaxAgeMs ?? 300_000
  })
  const tolerance = options.clockTolerance ?? 0
  const verifyOptions: JWTVerifyOptions = {
    issuer: options.issuer ?? 'rotor',
    algorithms: options.algorithms ?? ['EdDSA'],
    typ: 'at+jwt',
    clockTolerance: tolerance,
    requiredClaims: ['sub', 'jti', 'sid', 'iat', 'exp', 'token_type'],
    ...(options.audience === undefined ? {} : { audience: options.audience })
  }

  return async function verify (token: string): Promise<AccessClaims> {
    let payload: JWTPayload
    try {
      ({ payload } = await jwtVerify(token, jwks, verifyOptions))
    } catch (error) {
      const code = (error as { code?: unknown }).code
      if (typeof code === 'string' && TOKEN_ERRORS.has(code)) throw new TokenRejected((error as Error).message)
      // A timeout, a refused connection, a JWKS that is not JSON: not the token's fault.
      throw new VerifierUnavailable(`cannot fetch Rotor's JWKS: ${(error as Error).message}`, { cause: error })
    }
    if (payload['token_type'] !== 'access') throw new TokenRejected('not an access token')
    if (typeof payload.sub !== 'string' || payload.sub === '') throw new TokenRejected('no subject')
    // jose checks iat only with maxTokenAge; Rotor never issues a token dated in the future.
    if (typeof payload.iat !== 'number' || payload.iat > Date.now() / 1000 + tolerance) throw new TokenRejected('"iat" is in the future')
    return payload as AccessClaims
  }
}

/** The token of `Authorization: Bearer <token>`, or null. */
export function bearerToken (request: IncomingMessage): string | null {
  const match = /^Bearer +([A-Za-z0-9_.~+/-]+=*) *$/i.exec(request.headers.authorization ?? '')
  return match?.[1] ?? null
}

function send (response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  response.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers })
  response.end(JSON.stringify(body))
}

/** Answers a request; `GET /api/me` is the one protected route. */
export async function handle (verify: Verifier, request: IncomingMessage, response: ServerResponse): Promise<void> {
  if (request.method !== 'GET' || request.url?.split('?')[0] !== '/api/me') {
    send(response, 404, { error: 'not_found' })
    return
  }
  const token = bearerToken(request)
  if (token === null) {
    // RFC 6750 §3.1: no credentials, no error code.
    send(response, 401, { error: 'unauthorized', error_description: 'a Bearer access token is required' }, { 'www-authenticate': 'Bearer realm="api"' })
    return
  }
  try {
    const claims = await verify(token)
    send(response, 200, { sub: claims.sub, claims })
  } catch (error) {
    if (error instanceof TokenRejected) {
      send(response, 401, { error: 'invalid_token', error_description: error.message }, { 'www-authenticate': 'Bearer realm="api", error="invalid_token"' })
    } else {
      // Never a 401 for an outage: a front end would sign its user out.
      send(response, 503, { error: 'temporarily_unavailable', error_description: 'cannot verify tokens right now' }, { 'retry-after': '2' })
    }
  }
}

export interface StartOptions {
  verify: Verifier
  /** Default 0: a free port. */
  port?: number
  /** Default 127.0.0.1 (an IPv4 address or a name: `url` does not bracket IPv6). */
  host?: string
}

export interface RunningServer {
  url: string
  server: Server
  close: () => Promise<void>
}

/** Starts the backend; resolves once it listens. */
export async function startServer (options: StartOptions): Promise<RunningServer> {
  const host = options.host ?? '127.0.0.1'
  const server = createServer((request, response) => {
    // handle() catches what verify() throws; this is only a last resort against a crash.
    /* c8 ignore next */
    handle(options.verify, request, response).catch(() => send(response, 500, { error: 'server_error' }))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, host, () => resolve())
  })
  const { port } = server.address() as AddressInfo
  const close = promisify(server.close.bind(server))
  return {
    url: `http://${host}:${port}`,
    server,
    close: async () => {
      const closed = close()
      server.closeAllConnections()
      await closed
    }
  }
}

// Run as a program: settings from the environment. (test/interop/verifier-example.test.ts runs it so.)
/* c8 ignore start: the defaults below are for a person at a shell */
const isMain = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href
if (isMain) {
  const env = process.env
  const verify = createVerifier(env['ROTOR_JWKS_URL'] ?? 'http://127.0.0.1:8080/.well-known/jwks.json', {
    issuer: env['ROTOR_ISSUER'] ?? 'rotor',
    algorithms: (env['ROTOR_ALGORITHMS'] ?? 'EdDSA').split(',') as RotorAlgorithm[],
    clockTolerance: Number(env['ROTOR_LEEWAY'] ?? 0),
    ...(env['ROTOR_AUDIENCE'] === undefined ? {} : { audience: env['ROTOR_AUDIENCE'] })
  })
  const running = await startServer({ verify, port: Number(env['PORT'] ?? 8081), host: env['HOST'] ?? '127.0.0.1' })
  console.log(`verify-backend listening on ${running.url} (GET /api/me)`)
  const stop = (): void => { void running.close().then(() => process.exit(0)) }
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
}
/* c8 ignore stop */
