// DPoP (RFC 9449) at the refresh routes: a session bound to a key at issuance (`cnf.jkt`) is
// refreshed only with a proof signed by that key: the JWS, the public key it carries, its
// thumbprint (RFC 7638) and its claims are checked here with node:crypto. (jose's EmbeddedJWK does
// the JWS part too, but at 415 µs of CPU per proof against 67 µs: WebCrypto is asynchronous and
// re-imports the key every time; fast-jwt and @fastify/jwt verify no embedded keys.)
import { createHash, createPublicKey, verify, type KeyObject } from 'node:crypto'
import { AppError, TokenRejectedError } from '../plugins/errors.js'
import type { Keyring } from '../plugins/keyring.js'
import type { Config } from './config.js'

/**
 * The proof algorithms Rotor accepts: asymmetric only (RFC 9449 §4.2), those browsers' WebCrypto
 * and common libraries sign with; each with the one key type it takes, the JWK members of its
 * public key (RFC 7638's thumbprint members, in their order), and how node:crypto verifies it.
 */
const ALGORITHMS = {
  ES256: { kty: 'EC', crv: 'P-256', members: ['crv', 'kty', 'x', 'y'], digest: 'sha256', options: { dsaEncoding: 'ieee-p1363' } },
  EdDSA: { kty: 'OKP', crv: 'Ed25519', members: ['crv', 'kty', 'x'], digest: null, options: {} },
  RS256: { kty: 'RSA', crv: undefined, members: ['e', 'kty', 'n'], digest: 'sha256', options: {} }
} as const
export const DPOP_ALGORITHMS = Object.keys(ALGORITHMS)

/** JWK members only a private or symmetric key has: a proof's key must have none. */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

/** An RSA key shorter than this is refused (RFC 7518 §3.3: 2048 bits at least). */
const MIN_RSA_BITS = 2048

/** A map that keeps its `capacity` newest entries: past it, the oldest one leaves. */
export class BoundedMap<K, V> {
  private readonly entries = new Map<K, V>()
  readonly capacity: number
  constructor (capacity: number) {
    this.capacity = capacity
  }

  get size (): number {
    return this.entries.size
  }

  get (key: K): V | undefined {
    return this.entries.get(key)
  }

  set (key: K, value: V): void {
    this.entries.delete(key)
    this.entries.set(key, value)
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.capacity) break
      this.entries.delete(oldest)
    }
  }
}

/**
 * Public keys imported from proofs, by their thumbprint input: a client signs every refresh with
 * one key, and importing one costs more than verifying with it. Bounded: proofs with ever new keys
 * (each imported before its signature is checked) cannot grow it.
 */
const importedKeys = new BoundedMap<string, KeyObject>(10_000)

/** What the OpenAPI document says of the refresh routes' `DPoP` header (documentation only: a header schema would answer `invalid_request`). */
export const DPOP_HEADER_DOC = 'A session bound to a DPoP key (`dpop_jkt` at issuance) is refreshed only with one `DPoP` header: a proof of that key for this method and URL (RFC 9449). Without it: 401 token_invalid; a faulty or replayed proof: 400 invalid_dpop_proof; with DPOP_NONCES, 400 use_dpop_nonce and the nonce in `DPoP-Nonce`.'

/** A proof longer than this is refused before anything is decoded (an RS256 proof with a 4096-bit key is ~1,900 characters). */
export const MAX_PROOF_LENGTH = 4096

/** A proof's `jti` longer than this is refused (RFC 9449 asks for 96 bits of randomness; a UUID is 36 characters). */
const MAX_JTI_LENGTH = 256

/** A refresh request as DPoP sees it. */
export interface ProofRequest {
  /** The value of every `DPoP` header it carried (one is allowed). */
  proofs: string[]
  method: string
  /** The URL the client addressed: scheme, host and path (see {@link requestUrl}). */
  url: string
}

/** A proof that passed every check: its replay record, to be written with the rotation it allows. */
export interface AcceptedProof {
  /** A one-time id (`consumeOnce`'s): the proof's thumbprint and `jti`, hashed. */
  id: string
  /** How long the record must last: until the proof's `iat` is too old to be accepted again. */
  ttlMs: number
}

type ProofSettings = Pick<Config, 'dpopProofMaxAge' | 'dpopNonces' | 'leeway'>

function refused (message: string): AppError {
  return new AppError('invalid_dpop_proof', message)
}

/** Scheme, host (with a port other than the default) and path, as `URL` normalises them: what `htu` is compared on (RFC 9449 §4.3). */
function normalisedUrl (url: unknown): string | null {
  if (typeof url !== 'string' || !URL.canParse(url)) return null
  const parsed = new URL(url)
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') return null
  return `${parsed.protocol}//${parsed.host}${parsed.pathname}`
}

/**
 * The URL a client addressed, as its proof's `htu` must name it: built from the issuer when
 * `JWT_ISSUER` is an http(s) URL (behind a proxy, Rotor's own view of the URL is not the
 * client's), else from the request (its `Host`, and the forwarded headers with TRUST_PROXY).
 */
export function requestUrl (issuer: URL | null, request: { protocol: string, host: string, url: string }): string {
  const path = request.url.replace(/\?.*$/s, '')
  const base = issuer === null ? `${request.protocol}://${request.host}` : issuer.href.replace(/\/+$/, '')
  return `${base}${path}`
}

/** The server nonce window a time falls in: nonces change every DPOP_PROOF_MAX_AGE, and the last two are accepted. */
function windowOf (settings: ProofSettings, nowMs: number): number {
  return Math.floor(nowMs / 1000 / settings.dpopProofMaxAge)
}

function nonceOf (keyring: Keyring, key: Keyring['active'], window: number): string {
  return `${window.toString(36)}.${keyring.deriveId(key, 'dpop-nonce', String(window))}`
}

/**
 * The current server nonce (DPOP_NONCES=true): stateless, derived from the signing key and the
 * time, so every instance gives and accepts the same ones.
 */
export function currentNonce (keyring: Keyring, settings: ProofSettings, nowMs: number): string {
  return nonceOf(keyring, keyring.active, windowOf(settings, nowMs))
}

function acceptsNonce (keyring: Keyring, settings: ProofSettings, nonce: unknown, nowMs: number): boolean {
  if (typeof nonce !== 'string') return false
  const window = windowOf(settings, nowMs)
  return keyring.keys.some((key) => nonce === nonceOf(keyring, key, window) || nonce === nonceOf(keyring, key, window - 1))
}

/** A base64url JWS segment as a JSON object; `what` names it in the refusal. */
function jsonOf (segment: string, what: string): Record<string, unknown> {
  let value: unknown
  try {
    value = JSON.parse(Buffer.from(segment, 'base64url').toString())
  } catch {
    throw refused(`the DPoP proof's ${what} is not JSON`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw refused(`the DPoP proof's ${what} is not a JSON object`)
  return value as Record<string, unknown>
}

/** The public key a proof's header carries, for its algorithm, and its RFC 7638 thumbprint. */
function keyOf (header: Record<string, unknown>): { key: KeyObject, jkt: string, algorithm: typeof ALGORITHMS[keyof typeof ALGORITHMS] } {
  const alg = header['alg']
  const algorithm = typeof alg === 'string' && Object.hasOwn(ALGORITHMS, alg) ? ALGORITHMS[alg as keyof typeof ALGORITHMS] : undefined
  if (algorithm === undefined) throw refused(`the DPoP proof's alg must be one of ${DPOP_ALGORITHMS.join(', ')}`)
  const jwk = header['jwk']
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw refused('the DPoP proof needs its public key as a JWK in its header')
  const fields = jwk as Record<string, unknown>
  if (PRIVATE_MEMBERS.some((member) => member in fields)) throw refused('the DPoP proof\'s jwk must be a public key: it has private or symmetric members')
  if (fields['kty'] !== algorithm.kty || (algorithm.crv !== undefined && fields['crv'] !== algorithm.crv)) {
    throw refused(`the DPoP proof's jwk is not the ${String(alg)} key type (${algorithm.kty}${algorithm.crv === undefined ? '' : ` ${algorithm.crv}`})`)
  }
  const publicJwk: Record<string, string> = {}
  for (const member of algorithm.members) {
    const value = fields[member]
    if (typeof value !== 'string' || value === '') throw refused(`the DPoP proof's jwk lacks its ${member}`)
    publicJwk[member] = value
  }
  // RFC 7638: the required members in lexicographic order (as `members` lists them), no whitespace.
  const canonical = JSON.stringify(publicJwk)
  let key = importedKeys.get(canonical)
  if (key === undefined) {
    try {
      key = createPublicKey({ key: publicJwk, format: 'jwk' })
    } catch {
      throw refused('the DPoP proof\'s jwk is not a valid public key')
    }
    // A JWK's n has no leading zero octets (RFC 7518 §6.3.1.1): its length is the modulus's.
    if (algorithm.kty === 'RSA' && Buffer.from(String(publicJwk['n']), 'base64url').length * 8 < MIN_RSA_BITS) throw refused(`the DPoP proof's RSA key is shorter than ${MIN_RSA_BITS} bits`)
    importedKeys.set(canonical, key)
  }
  return { key, jkt: createHash('sha256').update(canonical).digest('base64url'), algorithm }
}

/**
 * Checks the DPoP proof of a refresh of a session bound to `jkt`, per RFC 9449 §4.3: one header;
 * a JWS of type `dpop+jwt` signed with an accepted algorithm by the public key in its header;
 * `htm` and `htu` of this request; `iat` within DPOP_PROOF_MAX_AGE of now, either way (LEEWAY beside); a `jti`; with
 * DPOP_NONCES, a current nonce; the key's thumbprint equal to the session's. Whether the proof
 * was seen before is the store's to say, atomically with the rotation (see AcceptedProof).
 *
 * @throws TokenRejectedError `token_invalid` when there is no proof at all (the token is not
 * usable alone); AppError `invalid_dpop_proof` for any fault of the proof, `use_dpop_nonce` (with
 * the header `DPoP-Nonce`) when a nonce is needed
 */
export function checkProof (
  keyring: Keyring, settings: ProofSettings, request: ProofRequest, jkt: string, nowMs: number
): AcceptedProof {
  if (request.proofs.length === 0) throw new TokenRejectedError('token_invalid', 'this session is bound to a DPoP key: its refresh needs a DPoP proof')
  if (request.proofs.length > 1) throw refused('send exactly one DPoP header')
  const proof = request.proofs[0] as string
  if (proof.length > MAX_PROOF_LENGTH) throw refused(`the DPoP proof is longer than ${MAX_PROOF_LENGTH} characters`)
  const segments = proof.split('.')
  if (segments.length !== 3 || segments.some((segment) => !/^[A-Za-z0-9_-]*$/.test(segment))) throw refused('the DPoP proof is not a compact JWS')
  const [encodedHeader, encodedPayload, signature] = segments as [string, string, string]
  const header = jsonOf(encodedHeader, 'header')
  if (typeof header['typ'] !== 'string' || header['typ'].toLowerCase() !== 'dpop+jwt') throw refused('the DPoP proof\'s typ must be dpop+jwt')
  // RFC 7515 §4.1.11: an extension Rotor does not know (b64=false among them) must not be ignored.
  if ('crit' in header) throw refused('the DPoP proof names critical header extensions Rotor does not support')
  const { key, jkt: thumbprint, algorithm } = keyOf(header)
  const signed = Buffer.from(`${encodedHeader}.${encodedPayload}`)
  // A signature of any length or content is false here, never an exception (with the key type matching the algorithm).
  if (!verify(algorithm.digest, signed, { key, ...algorithm.options }, Buffer.from(signature, 'base64url'))) throw refused('the DPoP proof\'s signature does not verify with the key in its header')
  const claims = jsonOf(encodedPayload, 'payload')
  if (claims['htm'] !== request.method) throw refused(`the DPoP proof's htm must be ${request.method}`)
  // Both must be URLs: a Host header no URL parser takes must not match an htu that is none either.
  const htu = normalisedUrl(claims['htu'])
  if (htu === null || htu !== normalisedUrl(request.url)) throw refused(`the DPoP proof's htu must be ${request.url}`)
  const { iat, jti } = claims
  const nowSec = nowMs / 1000
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw refused('the DPoP proof needs a numeric iat')
  // As far ahead as back: browsers' clocks are often off by seconds, and a proof signed "in the
  // future" is still used once (its record lives until its iat is too old).
  const window = settings.dpopProofMaxAge + settings.leeway
  if (iat > nowSec + window) throw refused(`the DPoP proof's iat is more than DPOP_PROOF_MAX_AGE (${settings.dpopProofMaxAge} s) ahead of Rotor's clock`)
  if (iat < nowSec - window) throw refused(`the DPoP proof is older than DPOP_PROOF_MAX_AGE (${settings.dpopProofMaxAge} s)`)
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI_LENGTH) throw refused(`the DPoP proof needs a jti of 1 to ${MAX_JTI_LENGTH} characters`)
  if (settings.dpopNonces && !acceptsNonce(keyring, settings, claims['nonce'], nowMs)) {
    throw new AppError('use_dpop_nonce', 'this DPoP proof needs the server nonce given in the DPoP-Nonce header', { 'dpop-nonce': currentNonce(keyring, settings, nowMs) })
  }
  if (thumbprint !== jkt) throw refused('the DPoP proof is signed with another key than the one this session is bound to')
  return {
    id: `dpop.${createHash('sha256').update(`${jkt}:${jti}`).digest().subarray(0, 16).toString('base64url')}`,
    ttlMs: Math.max(1000, Math.ceil((iat + settings.dpopProofMaxAge + settings.leeway - nowSec) * 1000) + 1000)
  }
}
