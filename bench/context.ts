import { randomBytes } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { Redis } from 'ioredis'
import type { Options } from './options.js'
import { randomSecret } from './tokens.js'

/**
 * What one bench run shares between its parts: created once by main and handed to every
 * scenario, the soak and the replication runs, so no module keeps a run's state of its own.
 */
export class RunContext {
  readonly options: Options
  /**
   * Every key of this run lives under it, each scenario under its own `<prefix><n>:`. Short
   * (13 bytes with the scenario's part, against 6 for Rotor's default `rotor:`) so that the bytes per
   * denylist record stay close to a real deployment's.
   */
  readonly prefix = `rb${randomBytes(4).toString('hex')}:`
  /** Scenarios started so far: the `<n>` of the last one's prefix. */
  scenarioCount = 0
  readonly apiKey = `bench-${randomBytes(18).toString('base64url')}`
  readonly hs256Secret = randomSecret()
  /** The Ed25519 key the EdDSA servers and the Minter share, written when the first one needs it. */
  keysFile: string | null = null
  readonly failures: string[] = []
  /** Not failures, but reasons to distrust a number (another workload on the machine). */
  readonly warnings: string[] = []
  /** The bench's connection to the shared Redis: null when the run needs none, and once cleanup has taken it. */
  redis: Redis | null = null

  constructor (options: Options) {
    this.options = options
  }

  fail (message: string): void {
    this.failures.push(message)
    process.stderr.write(`bench: FAILURE: ${message}\n`)
  }

  say (message: string): void {
    process.stdout.write(`${message}\n`)
  }
}

/** bench/results/ (git-ignored, created on first use): each run's JSON, and --profile's CPU profiles. */
export function resultsDir (): string {
  const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url))
  mkdirSync(dir, { recursive: true })
  return dir
}
