import { createHash, createHmac } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import fp from 'fastify-plugin'
import { watchSettled } from './watch.js'
import { pino } from 'pino'
import { createVerifier, TokenError } from 'fast-jwt'
import type { Config } from './config.js'
import { TokenRejectedError } from './errors.js'
import { createJwsSigner } from './jws.js'
import { loadKeyMaterial, type KeyMaterial, type KeySet, type PublicJwk } from './key-material.js'

export type TokenType = 'access' | 'refresh'
export type Payload = Record<string, unknown>

/** The `typ` header of each token type (RFC 9068 for access tokens). */
export const TYP: Record<TokenType, string> = { access: 'at+jwt', refresh: 'rt+jwt' }

/** Longer tokens are refused before any parsing; issuance refuses claims that would exceed it. */
export const MAX_TOKEN_LENGTH = 8192
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

/** Verifier settings every key shares. */
interface VerifierSettings {
  issuer: string
  audience: string[]
  leeway: number
}

export interface KeyringOptions extends KeySet, VerifierSettings {
  /** Reads the keys again for {@link Keyring.reload} (JWT_KEYS_FILE); without it there is nothing to reload. */
  load?: () => KeySet
  /** Where a reload says what it did (kids only, never key material); silent by default. */
  log?: FastifyBaseLogger
}

/** What started a reload, for the log line. */
export type ReloadTrigger = 'signal' | 'file'

/** Everything built from one set of keys; swapped as a whole, so no request sees half of two sets. */
interface KeyringState {
  active: KeyMaterial
  keys: KeyMaterial[]
  jwks: { keys: PublicJwk[] }
  jwksEtag: string
  signAccess: (payload: Payload) => string
  signRefresh: (payload: Payload) => string
  verifiers: Map<string, VerifierEntry>
}

/** Verified access tokens remembered per key: about 6 MB at most. */
const ACCESS_VERIFICATION_CACHE = 10_000

const REQUIRED_CLAIMS = ['iss', 'sub', 'iat', 'exp', 'jti', 'sid', 'auth_time', 'token_type']

/** What every verifier of Rotor's tokens checks beyond the signature (fast-jwt's options). */
function commonChecks (settings: VerifierSettings): { allowedIss: string, allowedAud?: string[], clockTolerance: number, requiredClaims: string[] } {
  return {
    allowedIss: settings.issuer,
    ...(settings.audience.length > 0 ? { allowedAud: settings.audience } : {}),
    clockTolerance: settings.leeway * 1000,
    requiredClaims: REQUIRED_CLAIMS
  }
}

function buildState ({ active, keys }: KeySet, settings: VerifierSettings): KeyringState {
  const jwks = { keys: keys.flatMap((key) => key.publicJwk === null ? [] : [key.publicJwk]) }
  const common = commonChecks(settings)
  const verifiers = new Map<string, VerifierEntry>()
  for (const key of keys) {
    verifiers.set(key.kid, {
      type: 'access',
      key,
      // Backends introspect the same access token again and again: its verification is cached
      // (bounded, never past its exp; revocation is checked in the store every time regardless).
      verify: createVerifier({ ...common, key: key.verifyingKey, algorithms: [key.algorithm], checkTyp: TYP.access, cache: ACCESS_VERIFICATION_CACHE })
    })
    verifiers.set(key.refreshKid, {
      type: 'refresh',
      key,
      verify: createVerifier({ ...common, key: key.refreshKey, algorithms: ['HS256'], checkTyp: TYP.refresh })
    })
  }
  return {
    active,
    keys,
    jwks,
    // Instances sharing a keys file publish the same bytes, hence the same ETag behind a balancer.
    jwksEtag: `"${createHash('sha256').update(JSON.stringify(jwks)).digest('base64url')}"`,
    signAccess: createJwsSigner({ key: active.signingKey, algorithm: active.algorithm, kid: active.kid, typ: TYP.access }),
    signRefresh: createJwsSigner({ key: active.refreshKey, algorithm: 'HS256', kid: active.refreshKid, typ: TYP.refresh }),
    verifiers
  }
}

/**
 * Signs and verifies Rotor's tokens. Signers and verifiers are built once per key set; nothing in
 * a token's header chooses key material beyond looking its `kid` up among Rotor's own keys, and
 * each key verifies exactly one algorithm and one token type.
 *
 * The key set can be replaced while Rotor runs ({@link reload}): everything is built first and
 * swapped in one assignment, and a key set that fails to load leaves the current one in place.
 */
export class Keyring {
  private state: KeyringState
  private readonly settings: VerifierSettings
  private readonly load: (() => KeySet) | undefined
  private readonly log: FastifyBaseLogger

  constructor (options: KeyringOptions) {
    this.settings = { issuer: options.issuer, audience: options.audience, leeway: options.leeway }
    this.load = options.load
    this.log = options.log ?? pino({ level: 'silent' })
    this.state = buildState(options, this.settings)
  }

  /** The key that signs; it verifies too. */
  get active (): KeyMaterial { return this.state.active }
  /** Every key that verifies, the active one included. */
  get keys (): KeyMaterial[] { return this.state.keys }
  /** The public keys, as `/.well-known/jwks.json` serves them. */
  get jwks (): { keys: PublicJwk[] } { return this.state.jwks }
  /** A strong ETag of {@link jwks}: it changes exactly when the published keys do. */
  get jwksEtag (): string { return this.state.jwksEtag }

  /**
   * Reads the keys again and swaps them in at once. Never throws: when the new keys cannot be
   * loaded (unreadable file, bad key, unknown JWT_ACTIVE_KID) the current keys stay and the
   * reason is logged at error level. Answers whether new keys were swapped in.
   *
   * @example
   * process.on('SIGHUP', () => app.keyring.reload('signal'))
   */
  reload (trigger: ReloadTrigger): boolean {
    if (this.load === undefined) {
      this.log.warn({ event: 'keys.reload', trigger }, 'keys not reloaded: there is no JWT_KEYS_FILE to read again')
      return false
    }
    let state: KeyringState
    try {
      state = buildState(this.load(), this.settings)
    } catch (error) {
      // A ConfigError names the file and the key at fault, never key material.
      this.log.error({ event: 'keys.reload', trigger, reason: (error as Error).message }, 'keys not reloaded: keeping the current keys')
      return false
    }
    this.state = state
    this.log.info({ event: 'keys.reload', trigger, active: state.active.kid, kids: state.keys.map((key) => key.kid) }, 'keys reloaded')
    return true
  }

  signAccess (payload: Payload): string {
    return this.state.signAccess(payload)
  }

  signRefresh (payload: Payload): string {
    return this.state.signRefresh(payload)
  }

  /**
   * Verifies a token of Rotor's and returns its claims; throws {@link TokenRejectedError}
   * (`token_invalid` or `token_expired`) for anything else.
   *
   * @example
   * const { type, payload } = keyring.verify(body.refresh_token, 'refresh')
   */
  verify (token: unknown, expected?: TokenType, now = Date.now(), header?: Payload | null): VerifiedToken {
    const result = this.check(token, expected, now, header)
    if (result instanceof TokenRejectedError) throw result
    return result
  }

  /** As {@link verify}, but answers the refusal instead of throwing it. */
  check (token: unknown, expected?: TokenType, now = Date.now(), parsedHeader?: Payload | null): VerifiedToken | TokenRejectedError {
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !COMPACT_JWS.test(token)) {
      return new TokenRejectedError('token_invalid', 'the token is not a compact JWS')
    }
    const header = parsedHeader === undefined ? tokenHeader(token) : parsedHeader
    const { verifiers } = this.state
    const entry = typeof header?.['kid'] === 'string' ? verifiers.get(header['kid']) : undefined
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
    return this.refusalOf(payload, entry.type, now) ?? { type: entry.type, payload, key: entry.key }
  }

  /**
   * What Rotor checks of a token's claims once its signature and registered claims verified
   * (check() does, and so do the session routes after @fastify/jwt): its type, the types of the
   * claims Rotor sets, an `iat` not in the future. Null when they hold.
   */
  refusalOf (payload: Payload, type: TokenType, now = Date.now()): TokenRejectedError | null {
    if (payload['token_type'] !== type) return new TokenRejectedError('token_invalid', 'wrong token_type claim')
    if (!hasSessionClaims(payload)) return new TokenRejectedError('token_invalid', 'a claim Rotor sets has the wrong type')
    if (payload['iat'] * 1000 > now + this.settings.leeway * 1000) return new TokenRejectedError('token_invalid', 'the token was issued in the future')
    return null
  }

  /**
   * The key an access token names by its `kid` (its verifying key and algorithm), or undefined when
   * it names none of Rotor's access-token keys: how a verifier other than check() (@fastify/jwt, on
   * the session routes) finds its key, through the same lookup.
   */
  accessKey (kid: unknown): KeyMaterial | undefined {
    const entry = typeof kid === 'string' ? this.state.verifiers.get(kid) : undefined
    return entry?.type === 'access' ? entry.key : undefined
  }

  /** fast-jwt's options for an access token of Rotor's, but the key and algorithm: issuer, audience, leeway, required claims, `typ`. */
  get accessChecks (): ReturnType<typeof commonChecks> & { checkTyp: string } {
    return { ...commonChecks(this.settings), checkTyp: TYP.access }
  }

  /** A token id derived from another one: same input and key, same id, on every instance. */
  deriveId (key: KeyMaterial, purpose: string, from: string): string {
    return createHmac('sha256', key.idKey).update(`${purpose}:${from}`).digest().subarray(0, 16).toString('base64url')
  }
}

/**
 * A token's JOSE header, read without verifying anything: null when it is not a JSON object (or
 * the token is longer than any Rotor accepts: nothing is decoded for it). Read once per request.
 */
export function tokenHeader (token: string): Payload | null {
  if (token.length > MAX_TOKEN_LENGTH) return null
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
  const keysFile = config.jwtKeysFile
  const keyring = new Keyring({
    ...loadKeyMaterial(config),
    issuer: config.jwtIssuer,
    audience: config.jwtAudience,
    leeway: config.leeway,
    log: app.log,
    ...(keysFile === null ? {} : { load: () => loadKeyMaterial(config) })
  })
  app.decorate('keyring', keyring)
  if (keysFile === null) {
    if (config.jwtSecret === null) {
      app.log.warn({ kid: keyring.active.kid, algorithm: config.jwtAlgorithm }, 'no JWT_KEYS_FILE or JWT_SECRET: signing with an ephemeral key generated at start; tokens will not survive a restart')
    }
    return
  }
  const stopWatching = watchSettled(keysFile, () => keyring.reload('file'))
  app.addHook('onClose', async () => { stopWatching() })
}, { name: 'keyring', fastify: '5.x' })
