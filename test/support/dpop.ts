// DPoP keys and proofs (RFC 9449) as a client makes them, with jose: for the tests of bound
// sessions, including proofs that are wrong on purpose.
import { randomUUID } from 'node:crypto'
import { calculateJwkThumbprint, exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'

export interface DpopKey {
  alg: 'ES256' | 'EdDSA' | 'RS256'
  privateKey: CryptoKey
  /** The public key, as a proof's header carries it. */
  jwk: JWK
  /** Its RFC 7638 SHA-256 thumbprint: the `dpop_jkt` a backend binds a session to. */
  jkt: string
}

export async function dpopKey (alg: DpopKey['alg'] = 'ES256'): Promise<DpopKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  const jwk = await exportJWK(publicKey)
  return { alg, privateKey, jwk, jkt: await calculateJwkThumbprint(jwk, 'sha256') }
}

export interface ProofClaims {
  htu: string
  htm?: string
  iat?: number | undefined
  jti?: string
  nonce?: string
}

/** A proof for one request; `header` and `claims` override what a correct client sends. */
export async function proofFor (key: DpopKey, claims: ProofClaims, header: Record<string, unknown> = {}): Promise<string> {
  // JSON drops a claim set to undefined: that is how a test leaves one out.
  const payload = { htm: 'POST', iat: Math.floor(Date.now() / 1000), jti: randomUUID(), ...claims } as Record<string, unknown>
  return new SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, typ: 'dpop+jwt', jwk: key.jwk, ...header })
    .sign(key.privateKey)
}

function base64url (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** A proof with any header and payload and a signature of garbage (for alg none, HS256 and the like). */
export function forgedProof (header: Record<string, unknown>, payload: Record<string, unknown>, signature = ''): string {
  return `${base64url(header)}.${base64url(payload)}.${signature}`
}
