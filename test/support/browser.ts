import { existsSync } from 'node:fs'
import { chromium, type Browser } from 'playwright-core'
import type { Test } from './tap.js'

/** Debian's Chromium: playwright-core drives it; Playwright cannot download browsers here. */
export const CHROMIUM = '/usr/bin/chromium'

/** Starts headless Chromium for a test, closed with it. */
export async function launchChromium (t: Test): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is not installed: the browser tests need Debian's Chromium ` +
      '(apt-get install -y chromium; .ci/run installs it). Playwright cannot download browsers here.')
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.teardown(async () => { await browser.close() })
  return browser
}
