import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig, type Config } from '../src/config.js'
import { Keyring } from '../plugins/keyring.js'
import { loadKeyMaterial } from '../plugins/key-material.js'
import { mintAccessToken, mintRefreshToken, newSession, randomId, type Session } from '../src/minting.js'
import type { PooledRequest } from './load.js'

/** How many distinct users the minted tokens belong to. */
export const SUBJECTS = 100_000

/**
 * How many sessions a run's refresh tokens take turns in by default (`--sessions`): each token is
 * still its own, never presented before, but its session was listed in Redis's session index by
 * its first refresh, as issuance lists it. So a refresh costs Redis what a user's does, not what
 * the first refresh of a session issued while Redis was down does (until 2026-12-04 every bench
 * refresh was that one: 35–40 µs of Redis against 19–25). 0: a new session per token.
 */
export const SESSIONS = 20_000
const CLAIMS = { role: 'editor' }

/** Process-wide, not the run context's: process.on('exit') removes it, synchronously (removeKeysFiles). */
let keysDir: string | null = null

/**
 * A JWKS with one Ed25519 private key, in a private temp directory: the server child and the bench
 * load the same key, so tokens the bench mints are tokens the server accepts. Removed on exit.
 */
export function writeEd25519KeysFile (): string {
  keysDir ??= mkdtempSync(join(tmpdir(), 'rotor-bench-'))
  const path = join(keysDir, 'keys.json')
  const { privateKey } = generateKeyPairSync('ed25519')
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-ed25519', alg: 'EdDSA' }
  writeFileSync(path, JSON.stringify({ keys: [jwk] }), { mode: 0o600 })
  return path
}

export function removeKeysFiles (): void {
  if (keysDir !== null) rmSync(keysDir, { recursive: true, force: true })
  keysDir = null
}

export function randomSecret (): string {
  return randomBytes(32).toString('base64url')
}

interface DpopKey { privateKey: KeyObject, jwk: Record<string, unknown>, jkt: string }

function encoded (value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url')
}

/** A P-256 key and its RFC 7638 thumbprint. */
function dpopKeyOf (): DpopKey {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const { crv, kty, x, y } = publicKey.export({ format: 'jwk' })
  const jkt = createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url')
  return { privateKey, jwk: { crv, kty, x, y }, jkt }
}

/**
 * Mints tokens with Rotor's own code (Keyring, mintRefreshToken, mintAccessToken) from the same
 * settings the server child gets: exactly what POST /v1/tokens would answer, without spending the
 * server's CPU on it. Every token is a new session of one of SUBJECTS users, with a fresh jti.
 */
export class Minter {
  readonly config: Config
  readonly keyring: Keyring
  private counter = 0
  /** The sessions refresh tokens take turns in (SESSIONS); empty: a new one per token. */
  private readonly sessions: Session[]
  private refreshes = 0

  constructor (env: Record<string, string>, sessions = SESSIONS) {
    this.sessions = new Array<Session>(sessions)
    this.config = loadConfig(env)
    this.keyring = new Keyring({
      ...loadKeyMaterial(this.config),
      issuer: this.config.jwtIssuer,
      audience: this.config.jwtAudience,
      leeway: this.config.leeway
    })
  }

  private session (nowSec: number, jkt?: string): ReturnType<typeof newSession> {
    const n = this.counter++
    return newSession(`user-${n % SUBJECTS}`, this.config.jwtAudience[0], { ...CLAIMS }, nowSec * 1_000_000, undefined, jkt)
  }

  /** A refresh token never minted before: of a session of the turn's (a bound one, `jkt`: of its own session). */
  refreshToken (jkt?: string): string {
    const nowSec = Math.floor(Date.now() / 1000)
    const session = jkt !== undefined || this.sessions.length === 0
      ? this.session(nowSec, jkt)
      : this.sessions[this.refreshes++ % this.sessions.length] ??= this.session(nowSec)
    return mintRefreshToken(this.keyring, this.config, session, nowSec, randomId()).token
  }

  /**
   * `count` refreshes of sessions bound to one ES256 key (as a browser's @rotor/client makes),
   * each with its own refresh token and its own DPoP proof for `url`, signed now: a proof lives
   * DPOP_PROOF_MAX_AGE, which the scenario sets past the run's length.
   */
  dpopRefreshRequests (count: number, url: string): PooledRequest[] {
    const key = this.dpopKey ??= dpopKeyOf()
    const header = encoded({ typ: 'dpop+jwt', alg: 'ES256', jwk: key.jwk })
    const iat = Math.floor(Date.now() / 1000)
    const requests = new Array<PooledRequest>(count)
    for (let i = 0; i < count; i++) {
      const input = `${header}.${encoded({ jti: randomId(), htm: 'POST', htu: url, iat })}`
      const proof = `${input}.${sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
      requests[i] = { body: `{"refresh_token":"${this.refreshToken(key.jkt)}"}`, headers: { dpop: proof } }
    }
    return requests
  }

  private dpopKey: DpopKey | undefined

  accessToken (): string {
    const nowSec = Math.floor(Date.now() / 1000)
    return mintAccessToken(this.keyring, this.config, this.session(nowSec), nowSec, randomId()).token
  }

  /** `count` request bodies for POST /v1/tokens/refresh, each with its own refresh token. */
  refreshBodies (count: number): string[] {
    const bodies = new Array<string>(count)
    for (let i = 0; i < count; i++) bodies[i] = `{"refresh_token":"${this.refreshToken()}"}`
    return bodies
  }

  /**
   * `count` refresh bodies for the naive reference with one key (`NAIVE_REFRESH_KEY=access`, the
   * scenario `naive-one-key`): Rotor's refresh claims, signed with the access-token key and algorithm.
   */
  oneKeyRefreshBodies (count: number): string[] {
    const bodies = new Array<string>(count)
    for (let i = 0; i < count; i++) {
      const claims = JSON.parse(Buffer.from(this.refreshToken().split('.')[1] as string, 'base64url').toString()) as Record<string, unknown>
      bodies[i] = `{"refresh_token":"${this.keyring.signAccess(claims)}"}`
    }
    return bodies
  }

  /** `count` request bodies for POST /v1/tokens/introspect, each with its own access token. */
  introspectBodies (count: number): string[] {
    const bodies = new Array<string>(count)
    for (let i = 0; i < count; i++) bodies[i] = `{"token":"${this.accessToken()}"}`
    return bodies
  }
}
