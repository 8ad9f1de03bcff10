import { createHmac } from 'node:crypto'
import fp from 'fastify-plugin'
import { createSigner, createVerifier, TokenError } from 'fast-jwt'
import type { Config } from '../src/config.js'
import { TokenRejectedError } from '../src/errors.js'
import { loadKeyMaterial, type KeyMaterial, type PublicJwk } from './key-material.js'

export type TokenType = 'access' | 'refresh'
export type Payload = Record<string, unknown>

/** The `typ` header of each token type (RFC 9068 for access tokens). */
export const TYP: Record<TokenType, string> = { access: 'at+jwt', refresh: 'rt+jwt' }

/** Longer tokens are refused before any parsing: Rotor's own are far shorter. */
const MAX_TOKEN_LENGTH = 8192
const COMPACT_JWS = /^[\w-]+\.[\w-]+\.[\w-]+$/

export interface VerifiedToken {
  type: TokenType
  payload: Payload
  /** The key that verified the token (its refresh key derives successor ids). */
  key: KeyMaterial
}

interface VerifierEntry {
  type: TokenType
  key: KeyMaterial
  verify: (token: string) => Payload
}

export interface KeyringOptions {
  /** The key that signs; it verifies too. */
  active: KeyMaterial
  /** Every key that verifies, the active one included. */
  keys: KeyMaterial[]
  issuer: string
  audience: string[]
  leeway: number
}

const REQUIRED_CLAIMS = ['iss', 'sub', 'iat', 'exp', 'jti', 'sid', 'auth_time', 'token_type']

/**
 * Signs and verifies Rotor's tokens. Signers and verifiers are built once per key; nothing in a
 * token's header chooses key material beyond looking its `kid` up among Rotor's own keys, and each
 * key verifies exactly one algorithm and one token type.
 */
export class Keyring {
  readonly active: KeyMaterial
  readonly keys: KeyMaterial[]
  readonly jwks: { keys: PublicJwk[] }
  private readonly signAccessToken: (payload: Payload) => string
  private readonly signRefreshToken: (payload: Payload) => string
  private readonly verifiers = new Map<string, VerifierEntry>()
  private readonly leewayMs: number

  constructor (options: KeyringOptions) {
    const { active } = options
    this.active = active
    this.keys = options.keys
    this.leewayMs = options.leeway * 1000
    this.jwks = { keys: options.keys.flatMap((key) => key.publicJwk === null ? [] : [key.publicJwk]) }
    this.signAccessToken = createSigner({
      key: active.signingKey, algorithm: active.algorithm, kid: active.kid, header: { alg: active.algorithm, typ: TYP.access }
    })
    this.signRefreshToken = createSigner({
      key: active.refreshKey, algorithm: 'HS256', kid: active.refreshKid, header: { alg: 'HS256', typ: TYP.refresh }
    })
    const common = {
      allowedIss: options.issuer,
      ...(options.audience.length > 0 ? { allowedAud: options.audience } : {}),
      clockTolerance: this.leewayMs,
      requiredClaims: REQUIRED_CLAIMS
    }
    for (const key of options.keys) {
      this.verifiers.set(key.kid, {
        type: 'access',
        key,
        verify: createVerifier({ ...common, key: key.verifyingKey, algorithms: [key.algorithm], checkTyp: TYP.access })
      })
      this.verifiers.set(key.refreshKid, {
        type: 'refresh',
        key,
        verify: createVerifier({ ...common, key: key.refreshKey, algorithms: ['HS256'], checkTyp: TYP.refresh })
      })
    }
  }

  signAccess (payload: Payload): string {
    return this.signAccessToken(payload)
  }

  signRefresh (payload: Payload): string {
    return this.signRefreshToken(payload)
  }

  /**
   * Verifies a token of Rotor's and returns its claims; throws {@link TokenRejectedError}
   * (`token_invalid` or `token_expired`) for anything else.
   *
   * @example
   * const { type, payload } = keyring.verify(body.refresh_token, 'refresh')
   */
  verify (token: unknown, expected?: TokenType, now = Date.now()): VerifiedToken {
    const result = this.check(token, expected, now)
    if (result instanceof TokenRejectedError) throw result
    return result
  }

  /** As {@link verify}, but answers the refusal instead of throwing it. */
  check (token: unknown, expected?: TokenType, now = Date.now()): VerifiedToken | TokenRejectedError {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) {
      return new TokenRejectedError('token_invalid', 'the token is not a compact JWS')
    }
    const header = parseHeader(token)
    const entry = typeof header?.['kid'] === 'string' ? this.verifiers.get(header['kid']) : undefined
    if (entry === undefined) return new TokenRejectedError('token_invalid', 'the token names no key of this service')
    if (expected !== undefined && entry.type !== expected) {
      return new TokenRejectedError('token_invalid', `expected a ${expected} token, got a ${entry.type} token`)
    }
    let payload: Payload
    try {
      payload = entry.verify(token)
    } catch (error) {
      // fast-jwt throws only TokenError; its code says why.
      const { code } = error as TokenError
      if (code === TokenError.codes.expired) return new TokenRejectedError('token_expired', 'the token has expired')
      return new TokenRejectedError('token_invalid', REFUSALS[code] ?? 'malformed token')
    }
    if (payload['token_type'] !== entry.type) return new TokenRejectedError('token_invalid', 'wrong token_type claim')
    if (!hasSessionClaims(payload)) return new TokenRejectedError('token_invalid', 'a claim Rotor sets has the wrong type')
    if (payload['iat'] * 1000 > now + this.leewayMs) return new TokenRejectedError('token_invalid', 'the token was issued in the future')
    return { type: entry.type, payload, key: entry.key }
  }

  /** A token id derived from another one: same input and key, same id, on every instance. */
  deriveId (key: KeyMaterial, purpose: string, from: string): string {
    return createHmac('sha256', key.idKey).update(`${purpose}:${from}`).digest().subarray(0, 16).toString('base64url')
  }
}

function parseHeader (token: string): Payload | null {
  try {
    const header: unknown = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString())
    return typeof header === 'object' && header !== null ? header as Payload : null
  } catch {
    return null
  }
}

function hasSessionClaims (payload: Payload): payload is Payload & { iat: number, exp: number, auth_time: number } {
  return typeof payload['sub'] === 'string' && typeof payload['sid'] === 'string' && typeof payload['jti'] === 'string' &&
    typeof payload['iat'] === 'number' && typeof payload['exp'] === 'number' && typeof payload['auth_time'] === 'number'
}

/** Why fast-jwt refused a token, in words a client may read (no token content). */
const REFUSALS: Record<string, string> = {
  [TokenError.codes.invalidSignature]: 'bad signature',
  [TokenError.codes.inactive]: 'the token is not valid yet',
  [TokenError.codes.invalidClaimValue]: 'wrong issuer or audience',
  [TokenError.codes.missingRequiredClaim]: 'the token lacks a required claim',
  [TokenError.codes.invalidAlgorithm]: 'algorithm not allowed',
  [TokenError.codes.invalidCritHeader]: 'unsupported critical header'
}

declare module 'fastify' {
  interface FastifyInstance {
    keyring: Keyring
  }
}

export default fp(async function keyringPlugin (app, opts: { config: Config }) {
  const { config } = opts
  app.decorate('keyring', new Keyring({
    ...loadKeyMaterial(config),
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    leeway: config.leeway
  }))
  if (config.jwtKeysFile === null && config.jwtSecret === null) {
    app.log.warn({ kid: app.keyring.active.kid, algorithm: config.jwtAlgorithm }, 'no JWT_KEYS_FILE or JWT_SECRET: signing with an ephemeral key generated at start; tokens will not survive a restart')
  }
}, { name: 'keyring', fastify: '5.x' })
