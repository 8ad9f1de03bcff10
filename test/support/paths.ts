// Where the repository's files are, for tests that read them or run them, wherever a test sits.
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The repository's root folder (with a trailing slash). */
export const ROOT = fileURLToPath(new URL('../..', import.meta.url))

/** The service's entry point, for tests that start Rotor processes (with tap's TypeScript loader). */
export const SERVER = join(ROOT, 'src/server.ts')
