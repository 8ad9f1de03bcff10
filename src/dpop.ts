// DPoP (RFC 9449) at the refresh routes: a session bound to a key at issuance (`cnf.jkt`) is
// refreshed only with a proof signed by that key. jose checks the JWS and the key it carries
// (fast-jwt has no embedded-key verification); the claims and the binding are checked here.
import { createHash } from 'node:crypto'
import { calculateJwkThumbprint, compactVerify, EmbeddedJWK, type JWK } from 'jose'
import { AppError, TokenRejectedError } from '../plugins/errors.js'
import type { Keyring } from '../plugins/keyring.js'
import type { Config } from './config.js'

/** The proof algorithms Rotor accepts: asymmetric only (RFC 9449 §4.2), those browsers' WebCrypto and common libraries sign with. */
export const DPOP_ALGORITHMS = ['ES256', 'EdDSA', 'RS256']

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

function payloadOf (bytes: Uint8Array): Record<string, unknown> {
  let payload: unknown
  try {
    payload = JSON.parse(new TextDecoder().decode(bytes))
  } catch {
    throw refused('the DPoP proof\'s payload is not JSON')
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) throw refused('the DPoP proof\'s payload is not a JSON object')
  return payload as Record<string, unknown>
}

/**
 * Checks the DPoP proof of a refresh of a session bound to `jkt`, per RFC 9449 §4.3: one header;
 * a JWS of type `dpop+jwt` signed with an accepted algorithm by the public key in its header;
 * `htm` and `htu` of this request; `iat` within DPOP_PROOF_MAX_AGE (LEEWAY beside); a `jti`; with
 * DPOP_NONCES, a current nonce; the key's thumbprint equal to the session's. Whether the proof
 * was seen before is the store's to say, atomically with the rotation (see AcceptedProof).
 *
 * @throws TokenRejectedError `token_invalid` when there is no proof at all (the token is not
 * usable alone); AppError `invalid_dpop_proof` for any fault of the proof, `use_dpop_nonce` (with
 * the header `DPoP-Nonce`) when a nonce is needed
 */
export async function checkProof (
  keyring: Keyring, settings: ProofSettings, request: ProofRequest, jkt: string, nowMs: number
): Promise<AcceptedProof> {
  if (request.proofs.length === 0) throw new TokenRejectedError('token_invalid', 'this session is bound to a DPoP key: its refresh needs a DPoP proof')
  if (request.proofs.length > 1) throw refused('send exactly one DPoP header')
  const proof = request.proofs[0] as string
  if (proof.length > MAX_PROOF_LENGTH) throw refused(`the DPoP proof is longer than ${MAX_PROOF_LENGTH} characters`)
  let verified: Awaited<ReturnType<typeof compactVerify>>
  try {
    verified = await compactVerify(proof, EmbeddedJWK, { algorithms: DPOP_ALGORITHMS })
  } catch (error) {
    // jose's codes say what failed (a bad signature, an alg not allowed, a private or missing jwk) and never echo the proof.
    throw refused(`the DPoP proof is not a JWS signed by the public key in its header with ${DPOP_ALGORITHMS.join(', ')} (${String((error as { code?: unknown }).code)})`)
  }
  const { protectedHeader } = verified
  if (typeof protectedHeader.typ !== 'string' || protectedHeader.typ.toLowerCase() !== 'dpop+jwt') throw refused('the DPoP proof\'s typ must be dpop+jwt')
  const claims = payloadOf(verified.payload)
  if (claims['htm'] !== request.method) throw refused(`the DPoP proof's htm must be ${request.method}`)
  if (normalisedUrl(claims['htu']) !== normalisedUrl(request.url)) throw refused(`the DPoP proof's htu must be ${request.url}`)
  const { iat, jti } = claims
  const nowSec = nowMs / 1000
  if (typeof iat !== 'number' || !Number.isFinite(iat)) throw refused('the DPoP proof needs a numeric iat')
  if (iat > nowSec + settings.leeway) throw refused('the DPoP proof\'s iat is in the future')
  if (iat < nowSec - settings.dpopProofMaxAge - settings.leeway) throw refused(`the DPoP proof is older than DPOP_PROOF_MAX_AGE (${settings.dpopProofMaxAge} s)`)
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI_LENGTH) throw refused(`the DPoP proof needs a jti of 1 to ${MAX_JTI_LENGTH} characters`)
  if (settings.dpopNonces && !acceptsNonce(keyring, settings, claims['nonce'], nowMs)) {
    throw new AppError('use_dpop_nonce', 'this DPoP proof needs the server nonce given in the DPoP-Nonce header', { 'dpop-nonce': currentNonce(keyring, settings, nowMs) })
  }
  if (await calculateJwkThumbprint(protectedHeader.jwk as JWK, 'sha256') !== jkt) throw refused('the DPoP proof is signed with another key than the one this session is bound to')
  return {
    id: `dpop.${createHash('sha256').update(`${jkt}:${jti}`).digest().subarray(0, 16).toString('base64url')}`,
    ttlMs: Math.max(1000, Math.ceil((iat + settings.dpopProofMaxAge + settings.leeway - nowSec) * 1000) + 1000)
  }
}
