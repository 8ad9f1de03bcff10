import {
  createHash, createPrivateKey, createPublicKey, generateKeyPairSync, hkdfSync, randomBytes, type KeyObject
} from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { Algorithm, Config } from './config.js'
import { ConfigError } from './errors.js'

export interface PublicJwk { kty: string, kid: string, alg: string, use: string, [member: string]: unknown }

/**
 * Seconds a verifier may cache the JWKS (`Cache-Control: max-age`). A key must be published at
 * least this long before it signs, or a verifier holding a cached JWKS refuses its tokens.
 */
export const JWKS_MAX_AGE = 300

/**
 * Members of a key in the private file that are Rotor's own (never published; the public JWK is
 * rebuilt from the key itself). Both hold an ISO 8601 time.
 * - `rotor_staged_since`: published and verifying, but not signing until `keys rotate --activate`.
 * - `rotor_retiring_since`: stopped signing then; `keys retire` waits until its tokens have expired.
 */
export const STAGED_SINCE = 'rotor_staged_since'
export const RETIRING_SINCE = 'rotor_retiring_since'

/** One key of the keyring: the access-token signing key and the refresh key derived from it. */
export interface KeyMaterial {
  kid: string
  algorithm: Algorithm
  /** PEM for asymmetric algorithms, raw bytes for HS256: what fast-jwt signs with. */
  signingKey: string | Buffer
  /** PEM public key, or the same bytes for HS256: what fast-jwt verifies with. */
  verifyingKey: string | Buffer
  /** Public JWK as published in the JWKS; null for HS256 (a secret is never published). */
  publicJwk: PublicJwk | null
  /** HS256 key for refresh tokens, known to Rotor alone; derived, so instances sharing keys agree. */
  refreshKey: Buffer
  /** The `kid` of refresh tokens: a digest of the refresh key, never in the JWKS. */
  refreshKid: string
  /** Secret for deriving successor token ids (see rotation). */
  idKey: Buffer
  /** Published and verifying, but signing only when JWT_ACTIVE_KID names it (`rotor_staged_since`). */
  isStaged: boolean
}

/** The keys a configuration verifies with, and the one it signs with. */
export interface KeySet { active: KeyMaterial, keys: KeyMaterial[] }

/** The JWK `kty` of each algorithm's keys. */
export const KTY: Record<Algorithm, string> = { EdDSA: 'OKP', ES256: 'EC', RS256: 'RSA', HS256: 'oct' }
const REFRESH_KEY_SALT = 'rotor refresh-token key v1'

function digest (...parts: Array<string | Buffer>): string {
  const hash = createHash('sha256')
  for (const part of parts) hash.update(part)
  return hash.digest('base64url')
}

function derive (secret: Buffer, info: string): Buffer {
  return Buffer.from(hkdfSync('sha256', secret, REFRESH_KEY_SALT, info, 32))
}

function fromSecret (kid: string, algorithm: Algorithm, secret: Buffer, privateKey: KeyObject | null): KeyMaterial {
  const refreshKey = derive(secret, `refresh:${kid}`)
  if (privateKey === null) {
    return {
      kid,
      algorithm,
      signingKey: secret,
      verifyingKey: secret,
      publicJwk: null,
      refreshKey,
      refreshKid: `rt-${digest('kid', refreshKey).slice(0, 22)}`,
      idKey: derive(secret, `ids:${kid}`),
      isStaged: false
    }
  }
  const publicKey = createPublicKey(privateKey)
  return {
    kid,
    algorithm,
    signingKey: privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
    verifyingKey: publicKey.export({ format: 'pem', type: 'spki' }).toString(),
    publicJwk: { ...publicKey.export({ format: 'jwk' }), kty: KTY[algorithm], kid, alg: algorithm, use: 'sig' },
    refreshKey,
    refreshKid: `rt-${digest('kid', refreshKey).slice(0, 22)}`,
    idKey: derive(secret, `ids:${kid}`),
    isStaged: false
  }
}

function fromPrivateKey (kid: string, algorithm: Algorithm, privateKey: KeyObject): KeyMaterial {
  // The private key's own bytes seed the refresh key: whoever holds the signing key holds it.
  return fromSecret(kid, algorithm, privateKey.export({ format: 'der', type: 'pkcs8' }), privateKey)
}

/** A new private key for an asymmetric algorithm: Ed25519, P-256, or RSA of 2048 bits. */
export function generatePrivateKey (algorithm: Exclude<Algorithm, 'HS256'>): KeyObject {
  const { privateKey } = algorithm === 'EdDSA'
    ? generateKeyPairSync('ed25519')
    : algorithm === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('rsa', { modulusLength: 2048 })
  return privateKey
}

/** An ephemeral key for a development start: it changes at every restart. */
export function generateKey (algorithm: Algorithm): KeyMaterial {
  if (algorithm === 'HS256') {
    const secret = randomBytes(32)
    return fromSecret(`dev-${digest('hs', secret).slice(0, 12)}`, algorithm, secret, null)
  }
  const privateKey = generatePrivateKey(algorithm)
  const kid = `dev-${digest(createPublicKey(privateKey).export({ format: 'der', type: 'spki' })).slice(0, 12)}`
  return fromPrivateKey(kid, algorithm, privateKey)
}

/** The HS256 secret of `JWT_SECRET`, named by a digest so the secret itself never shows. */
export function secretKey (secret: string): KeyMaterial {
  const bytes = Buffer.from(secret)
  return fromSecret(`hs-${digest('kid', bytes).slice(0, 12)}`, 'HS256', bytes, null)
}

function importJwk (jwk: unknown, algorithm: Algorithm, index: number): KeyMaterial {
  const where = `JWT_KEYS_FILE: key #${index + 1}`
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) throw new ConfigError([`${where}: expected a JWK object`])
  return importJwkObject(jwk as Record<string, unknown>, algorithm, where)
}

function importJwkObject (jwk: Record<string, unknown>, algorithm: Algorithm, where: string): KeyMaterial {
  return { ...importKey(jwk, algorithm, where), isStaged: jwk[STAGED_SINCE] !== undefined }
}

function importKey (jwk: Record<string, unknown>, algorithm: Algorithm, where: string): KeyMaterial {
  const kid = jwk['kid']
  if (typeof kid !== 'string' || !/^[\w.-]{1,64}$/.test(kid)) {
    throw new ConfigError([`${where}: needs a "kid" of 1 to 64 letters, digits, '.', '_' or '-'`])
  }
  if (jwk['alg'] !== undefined && jwk['alg'] !== algorithm) {
    throw new ConfigError([`${where} (${kid}): alg ${String(jwk['alg'])} but JWT_ALGORITHM is ${algorithm}`])
  }
  if (jwk['kty'] !== KTY[algorithm]) {
    throw new ConfigError([`${where} (${kid}): kty must be ${KTY[algorithm]} for ${algorithm}`])
  }
  if (algorithm === 'HS256') {
    const secret = typeof jwk['k'] === 'string' ? Buffer.from(jwk['k'], 'base64url') : Buffer.alloc(0)
    if (secret.length < 32) throw new ConfigError([`${where} (${kid}): an oct key needs "k" of at least 32 bytes`])
    return fromSecret(kid, algorithm, secret, null)
  }
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey({ key: jwk as import('node:crypto').JsonWebKey, format: 'jwk' })
  } catch {
    throw new ConfigError([`${where} (${kid}): not a valid private JWK`])
  }
  // Node describes every asymmetric key it imports.
  const details = privateKey.asymmetricKeyDetails as { namedCurve?: string, modulusLength?: number }
  const fits = algorithm === 'EdDSA'
    ? privateKey.asymmetricKeyType === 'ed25519'
    : algorithm === 'ES256'
      ? details.namedCurve === 'prime256v1'
      : privateKey.asymmetricKeyType === 'rsa' && Number(details.modulusLength) >= 2048
  if (!fits) throw new ConfigError([`${where} (${kid}): not an ${algorithm} key (Ed25519, P-256 or RSA of 2048 bits or more)`])
  return fromPrivateKey(kid, algorithm, privateKey)
}

/** Reads a JWKS of private keys. Every problem names JWT_KEYS_FILE and the key at fault. */
export function readKeysFile (path: string, algorithm: Algorithm): KeyMaterial[] {
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'))
  } catch (error) {
    throw new ConfigError([`JWT_KEYS_FILE=${path}: cannot read a JSON file (${String((error as NodeJS.ErrnoException).code ?? (error as Error).name)})`])
  }
  return parseKeysFile(parsed, path, algorithm)
}

/** Checks a parsed JWKS of private keys as {@link readKeysFile} does (`keys` checks a file before writing it). */
export function parseKeysFile (parsed: unknown, path: string, algorithm: Algorithm): KeyMaterial[] {
  const keys = (parsed as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys) || keys.length === 0) {
    throw new ConfigError([`JWT_KEYS_FILE=${path}: expected a JWKS, {"keys": [...]}, with at least one private key`])
  }
  const material = keys.map((jwk: unknown, index) => importJwk(jwk, algorithm, index))
  const kids = new Set(material.map((key) => key.kid))
  if (kids.size !== material.length) throw new ConfigError([`JWT_KEYS_FILE=${path}: two keys share a kid`])
  if (material.every((key) => key.isStaged)) {
    throw new ConfigError([`JWT_KEYS_FILE=${path}: every key is staged (${STAGED_SINCE}): none may sign`])
  }
  return material
}

/**
 * The keys this configuration verifies with, and the one it signs with: JWT_ACTIVE_KID, or else
 * the first key of the file that is not staged. Called again on every reload.
 */
export function loadKeyMaterial (config: Config): KeySet {
  const keys = config.jwtKeysFile !== null
    ? readKeysFile(config.jwtKeysFile, config.jwtAlgorithm)
    : [config.jwtSecret !== null ? secretKey(config.jwtSecret) : generateKey(config.jwtAlgorithm)]
  // readKeysFile guarantees a key that is not staged.
  const active = config.jwtActiveKid === null ? keys.find((key) => !key.isStaged) : keys.find((key) => key.kid === config.jwtActiveKid)
  if (active === undefined) throw new ConfigError([`JWT_ACTIVE_KID=${String(config.jwtActiveKid)}: no key with that kid in JWT_KEYS_FILE`])
  return { active, keys }
}
