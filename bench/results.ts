import { mkdirSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** bench/results/ (git-ignored, created on first use): each run's JSON, and --profile's CPU profiles. */
export function resultsDir (): string {
  const dir = fileURLToPath(new URL('../../bench/results/', import.meta.url))
  mkdirSync(dir, { recursive: true })
  return dir
}

export function writeResults (startedAt: Date, data: unknown): string {
  const dir = resultsDir()
  const path = `${dir}${startedAt.toISOString().replace(/[:.]/g, '-')}.json`
  writeFileSync(path, `${JSON.stringify(data, null, 2)}\n`)
  return path
}
