import { test } from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { ROOT } from '../support/paths.js'
import { SETTING_NAMES } from '../../src/config.js'

const read = (path: string): string => readFileSync(join(ROOT, path), 'utf8')

test('every setting Rotor reads is in the README\'s settings table and in .env.example', async (t) => {
  const names = SETTING_NAMES
  t.ok(names.length >= 30, `found the settings in src/config.ts (${names.length})`)
  t.ok(names.includes('REDIS_WAIT_REPLICAS') && names.includes('MANAGEMENT_PORT'), 'including the newest')
  const readme = read('README.md')
  const table = readme.slice(readme.indexOf('## Settings'), readme.indexOf('## Routes'))
  const example = read('.env.example')
  for (const name of names) {
    t.ok(table.includes(`\`${name}\``), `README settings table names ${name}`)
    t.ok(example.includes(`${name}=`), `.env.example has ${name}`)
  }
})
