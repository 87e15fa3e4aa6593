// Drives the test page in headless Chromium (the system's, through puppeteer-core): opens the
// URL, waits until the plugin registered, then answers one JSON line per line read from stdin,
// `{"method": name, "args": [...]}` -> `{"result": ...}` or `{"error": ...}`, calling
// `window.test[name](...args)` in the page. `{"method": "console"}` gives the page's console.
//
//   node test/browser/drive.mjs http://127.0.0.1:PORT/   (CHROMIUM=/path/to/chromium)
import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';

const [url] = process.argv.slice(2);
const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const console = [];
try {
    const page = await browser.newPage();
    page.on('console', (message) => console.push(`${message.type()}: ${message.text()}`));
    page.on('pageerror', (error) => console.push(`pageerror: ${error.message}`));
    page.setDefaultTimeout(0);
    await page.goto(url);
    await page.waitForFunction(() => window.test !== undefined);
    const registered = await page.evaluate(() => window.test.ready);
    process.stdout.write(`${JSON.stringify({ result: registered })}\n`);
    for await (const line of createInterface({ input: process.stdin })) {
        const { method, args = [] } = JSON.parse(line);
        let reply;
        if (method === 'console') {
            reply = { result: console };
        } else {
            try {
                reply = { result: await page.evaluate((m, a) => window.test[m](...a), method, args) };
            } catch (error) {
                reply = { error: String(error) };
            }
        }
        process.stdout.write(`${JSON.stringify(reply ?? { result: null })}\n`);
    }
} finally {
    await browser.close();
}
