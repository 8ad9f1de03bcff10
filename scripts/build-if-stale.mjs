// `npm start` runs this first: it compiles to dist/ only when a source is newer than the last
// build (or there is none yet), so an unchanged tree starts at once instead of after ~10 s of tsc.
// `--client` does the same for the client package (client/dist/), which `npm test` builds first
// (the tests import @rotor/client as users do, from its build). Plain JavaScript: it must run
// before anything is compiled.
import { spawnSync } from 'node:child_process'
import { readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const ROOT = new URL('..', import.meta.url).pathname
const TARGETS = {
  server: { out: 'dist', sources: ['src', 'plugins', 'schemas', 'scripts', 'bench'], configs: ['tsconfig.json', 'tsconfig.build.json', 'package-lock.json'], projects: ['tsconfig.build.json'] },
  // The client's JavaScript is compiled without comments (they were a third of its gzipped size);
  // its declarations keep them, for editors. Its folder starts empty: what is there is published.
  client: { out: 'client/dist', sources: ['client/src'], configs: ['client/tsconfig.json', 'client/tsconfig.types.json', 'client/package.json'], projects: ['client/tsconfig.json', 'client/tsconfig.types.json'], clean: true }
}
const target = TARGETS[process.argv.includes('--client') ? 'client' : 'server']
const STAMP = join(ROOT, target.out, '.built')

/** The newest modification time (ms) of the TypeScript files under `dir`, 0 if there are none. */
function newest (dir) {
  let latest = 0
  let entries
  try {
    entries = readdirSync(dir, { withFileTypes: true })
  } catch {
    return 0
  }
  for (const entry of entries) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) latest = Math.max(latest, newest(path))
    else if (entry.name.endsWith('.ts')) latest = Math.max(latest, statSync(path).mtimeMs)
  }
  return latest
}

function mtime (path) {
  try {
    return statSync(path).mtimeMs
  } catch {
    return null
  }
}

// `--always` (npm run build): compile whatever the stamp says.
const always = process.argv.includes('--always')
const builtAt = mtime(STAMP)
const changedAt = Math.max(...target.sources.map((dir) => newest(join(ROOT, dir))), ...target.configs.map((file) => mtime(join(ROOT, file)) ?? 0))
if (!always && builtAt !== null && builtAt >= changedAt) process.exit(0)

if (!always) process.stderr.write(builtAt === null ? `rotor: compiling to ${target.out}/ (first ${target === TARGETS.server ? 'start' : 'build'})\n` : `rotor: sources changed since the last build: compiling to ${target.out}/\n`)
// Stamped before compiling: a file saved while tsc runs is newer than the stamp and rebuilds next time.
const startedAt = new Date()
if (target.clean) rmSync(join(ROOT, target.out), { recursive: true, force: true })
for (const project of target.projects) {
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(ROOT, project)], { stdio: 'inherit' })
  if (tsc.status !== 0) process.exit(tsc.status ?? 1)
}
writeFileSync(STAMP, `${startedAt.toISOString()}\n`)
utimesSync(STAMP, startedAt, startedAt)
