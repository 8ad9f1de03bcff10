// DPoP (RFC 9449) on the client: a P-256 key made with WebCrypto, its private half
// non-extractable (a script that reads the storage gets a handle it cannot export, and the refresh
// token alone is refused), its thumbprint for the login request, and one proof per refresh.

/** The subset of WebCrypto the client uses (so that it type-checks without the DOM lib). */
interface SubtleLike {
  generateKey: (algorithm: unknown, extractable: boolean, usages: string[]) => Promise<{ privateKey: unknown, publicKey: unknown }>
  exportKey: (format: 'jwk', key: unknown) => Promise<Record<string, unknown>>
  sign: (algorithm: unknown, key: unknown, data: Uint8Array) => Promise<ArrayBuffer>
  digest: (algorithm: string, data: Uint8Array) => Promise<ArrayBuffer>
}

interface CryptoLike { subtle: SubtleLike, getRandomValues: (array: Uint8Array) => Uint8Array }

/** A session's DPoP key as the storage keeps it: a CryptoKey survives IndexedDB's structured clone, still non-extractable. */
export interface DpopKey {
  /** The private CryptoKey (non-extractable). */
  privateKey: unknown
  /** The public key as a proof's header carries it: `kty`, `crv`, `x`, `y`. */
  jwk: { kty: string, crv: string, x: string, y: string }
  /** Its RFC 7638 SHA-256 thumbprint, base64url: what the login request sends as `dpop_jkt`. */
  jkt: string
}

function webCrypto (): CryptoLike {
  const crypto = (globalThis as unknown as { crypto?: CryptoLike }).crypto
  if (crypto?.subtle === undefined) throw new TypeError('dpop: this runtime has no WebCrypto (crypto.subtle): a secure context (https or localhost) is needed')
  return crypto
}

function base64url (bytes: Uint8Array): string {
  let binary = ''
  for (const byte of bytes) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

const encoder = new TextEncoder()

function encoded (value: unknown): string {
  return base64url(encoder.encode(JSON.stringify(value)))
}

/** Makes a new key: ES256 (P-256), the private half non-extractable. */
export async function createDpopKey (): Promise<DpopKey> {
  const { subtle } = webCrypto()
  const pair = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'])
  const exported = await subtle.exportKey('jwk', pair.publicKey)
  const jwk = { kty: String(exported['kty']), crv: String(exported['crv']), x: String(exported['x']), y: String(exported['y']) }
  // RFC 7638: the required members only, in lexicographic order, no whitespace.
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y })
  const jkt = base64url(new Uint8Array(await subtle.digest('SHA-256', encoder.encode(canonical))))
  return { privateKey: pair.privateKey, jwk, jkt }
}

/** A proof for one request (RFC 9449 §4.2): a fresh `jti`, `htm`, `htu`, `iat`, and the server's nonce when it gave one. */
export async function dpopProof (key: DpopKey, htm: string, htu: string, nonce?: string): Promise<string> {
  const crypto = webCrypto()
  const jti = base64url(crypto.getRandomValues(new Uint8Array(16)))
  const payload = { jti, htm, htu, iat: Math.floor(Date.now() / 1000), ...(nonce === undefined ? {} : { nonce }) }
  const input = `${encoded({ typ: 'dpop+jwt', alg: 'ES256', jwk: key.jwk })}.${encoded(payload)}`
  // WebCrypto's ECDSA signature is r ‖ s, which is what JWS's ES256 is.
  const signature = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, key.privateKey, encoder.encode(input))
  return `${input}.${base64url(new Uint8Array(signature))}`
}
