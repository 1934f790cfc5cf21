// Drives Debian's chromium headless for tests/tests/ui.rs, with playwright-core (no browser of
// its own: `executablePath`). Commands arrive as JSON lines on stdin; each gets one JSON line on
// stdout: {ok, value?, error?, elapsed_ms, page_errors}. `page_errors` lists uncaught exceptions
// of the page so far (the test asserts there are none).
//
//   {"cmd": "open", "url": URL, "width"?: W, "height"?: H}
//   {"cmd": "wait", "js": EXPR, "timeout_ms": N}   until EXPR (evaluated in the page) is truthy
//   {"cmd": "eval", "js": EXPR}                    EXPR's value (JSON)
//   {"cmd": "screenshot", "path": P}               the full page as PNG
//   {"cmd": "quit"}
//
// Environment: CHROMIUM (default /usr/bin/chromium).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const profile = mkdtempSync(join(tmpdir(), 'enforcer-ui-chromium-'));
const pageErrors = [];
let context = null;
let page = null;

function reply(obj) {
  process.stdout.write(`${JSON.stringify({ page_errors: pageErrors, ...obj })}\n`);
}

async function launch(width, height) {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width, height },
    // The page's Content-Security-Policy forbids eval; the test's `wait`/`eval` need it.
    bypassCSP: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(String(e && e.stack ? e.stack : e)));
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') process.stderr.write(`browser console ${m.type()}: ${m.text()}\n`);
  });
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'open':
      if (!context) await launch(msg.width || 1400, msg.height || 1000);
      // Generous: chromium's first start on a loaded 2-core CI machine took over 15 s once.
      await page.goto(msg.url, { waitUntil: 'load', timeout: 60000 });
      return null;
    case 'wait': {
      const h = await page.waitForFunction(msg.js, null, { timeout: msg.timeout_ms || 10000, polling: 50 });
      return h.jsonValue();
    }
    case 'eval':
      return page.evaluate(msg.js);
    case 'screenshot':
      await page.screenshot({ path: msg.path, fullPage: true });
      return msg.path;
    default:
      throw new Error(`unknown command ${msg.cmd}`);
  }
}

async function close() {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  const msg = JSON.parse(line);
  if (msg.cmd === 'quit') break;
  const t0 = Date.now();
  try {
    const value = await handle(msg);
    reply({ ok: true, value, elapsed_ms: Date.now() - t0 });
  } catch (e) {
    let dom = null;
    try {
      dom = page ? await page.evaluate('document.body ? document.body.innerText.slice(0, 4000) : null') : null;
    } catch (_) {
      dom = null;
    }
    reply({ ok: false, error: String(e && e.message ? e.message : e), elapsed_ms: Date.now() - t0, dom });
  }
}
await close();
reply({ ok: true, value: 'bye' });
