import { createHmac, createPrivateKey, createSecretKey, sign, type KeyObject } from 'node:crypto'
import type { Algorithm } from './config.js'

/**
 * A compact-JWS signer for one key, built once: the protected header is encoded once, the key
 * parsed once, and each token costs a JSON.stringify, a base64url and one signature.
 *
 * Verification stays with fast-jwt (a library that has seen every attack on it); signing Rotor's
 * own claims is node:crypto and nothing more. fast-jwt's signer re-encodes the header and runs
 * two regular expressions over each token, about a tenth of a refresh on the profile.
 * The output is what fast-jwt produced: header members alg, typ, kid in that order.
 *
 * @param options.algorithm - `EdDSA`, `ES256`, `RS256` (a PEM private key) or `HS256` (a secret)
 * @param options.kid - the key's id, as the JWKS publishes it (refresh tokens: a kid never published)
 * @param options.typ - the `typ` header: `at+jwt` for access tokens (RFC 9068), `rt+jwt` for refresh tokens
 * @returns a function from claims to a compact JWS; it throws only on a key that does not fit the algorithm
 *
 * @example
 * const sign = createJwsSigner({ algorithm: 'EdDSA', key: privateKeyPem, kid: 'k1', typ: 'at+jwt' })
 * const token = sign({ iss: 'rotor', sub: 'alice', exp: Math.floor(Date.now() / 1000) + 900 })
 */
export function createJwsSigner (options: { algorithm: Algorithm, key: string | Buffer, kid: string, typ: string }): (payload: Record<string, unknown>) => string {
  const { algorithm, kid, typ } = options
  const prefix = `${Buffer.from(JSON.stringify({ alg: algorithm, typ, kid })).toString('base64url')}.`
  const encode = (payload: Record<string, unknown>): string => prefix + Buffer.from(JSON.stringify(payload)).toString('base64url')
  if (algorithm === 'HS256') {
    const secret: KeyObject = createSecretKey(Buffer.from(options.key))
    return (payload) => {
      const input = encode(payload)
      return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
    }
  }
  const key = createPrivateKey(options.key)
  // EdDSA hashes inside the algorithm; ECDSA's signature is r||s (JOSE), not DER.
  const digest = algorithm === 'EdDSA' ? null : 'sha256'
  const signing = algorithm === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' as const } : key
  return (payload) => {
    const input = encode(payload)
    return `${input}.${sign(digest, Buffer.from(input), signing).toString('base64url')}`
  }
}
