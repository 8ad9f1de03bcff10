import { test } from 'tap'
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, statSync, symlinkSync, utimesSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT } from '../support/paths.js'

// Without tap's NODE_OPTIONS: its coverage would count the fixture's copy of the script as project code.
const PLAIN_ENV = { PATH: process.env['PATH'] ?? '' }

// `npm start` compiles only when a source is newer than the last build. Tried on a project of
// one file with the real script and the real tsc (a whole Rotor build would take ~10 s).
test('npm start compiles on the first start, not again on an unchanged tree, and again after an edit', async (t) => {
  const dir = t.testdir({
    src: { 'hello.ts': 'export const hello: string = \'hello\'\n' },
    'tsconfig.build.json': JSON.stringify({ compilerOptions: { outDir: 'dist', rootDir: '.', module: 'NodeNext', target: 'ES2023', skipLibCheck: true, types: [] }, include: ['src'] })
  })
  mkdirSync(join(dir, 'scripts'))
  copyFileSync(join(ROOT, 'scripts/build-if-stale.mjs'), join(dir, 'scripts/build-if-stale.mjs'))
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'))
  const start = (): { status: number | null, stderr: string } => {
    const run = spawnSync(process.execPath, [join(dir, 'scripts/build-if-stale.mjs')], { encoding: 'utf8', env: PLAIN_ENV })
    return { status: run.status, stderr: run.stderr }
  }
  const output = join(dir, 'dist/src/hello.js')

  t.match(start(), { status: 0, stderr: /compiling to dist\/ \(first start\)/ }, 'a fresh clone compiles')
  t.ok(existsSync(output))
  const builtAt = statSync(output).mtimeMs

  t.same(start(), { status: 0, stderr: '' }, 'an unchanged tree does not')
  t.equal(statSync(output).mtimeMs, builtAt, 'and leaves dist/ as it was')

  const later = new Date(Date.now() + 5000)
  utimesSync(join(dir, 'src/hello.ts'), later, later)
  t.match(start(), { status: 0, stderr: /sources changed since the last build/ }, 'an edited source compiles again')
  t.ok(statSync(output).mtimeMs > builtAt)
})

test('a source that does not compile fails the start with tsc\'s exit code, and is tried again next time', async (t) => {
  const dir = t.testdir({
    src: { 'broken.ts': 'export const n: number = \'not a number\'\n' },
    'tsconfig.build.json': JSON.stringify({ compilerOptions: { outDir: 'dist', rootDir: '.', module: 'NodeNext', target: 'ES2023', skipLibCheck: true, types: [], noEmitOnError: true }, include: ['src'] })
  })
  mkdirSync(join(dir, 'scripts'))
  copyFileSync(join(ROOT, 'scripts/build-if-stale.mjs'), join(dir, 'scripts/build-if-stale.mjs'))
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'))
  for (const attempt of ['first', 'second']) {
    const run = spawnSync(process.execPath, [join(dir, 'scripts/build-if-stale.mjs')], { encoding: 'utf8', env: PLAIN_ENV })
    t.equal(run.status, 1, `${attempt} attempt: tsc's exit code (errors, nothing emitted)`)
    t.match(run.stdout, /TS2322/, 'with tsc\'s message')
    t.notOk(existsSync(join(dir, 'dist/.built')), 'and no stamp, so the next start tries again')
  }
})
