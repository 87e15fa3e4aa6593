// Drives a REAL CVAT web UI (2.73, with this plugin loaded: added to the stock page or built
// in) in headless Chromium through puppeteer-core, the way a user runs the tracker: log in,
// open a job on a frame, activate one object in the objects sidebar (or none: all objects),
// Ctrl+E, choose the tracker action in CVAT's action runner, set "Target frame" (and the
// polygon-to-track switch), Run, wait for the end, close the runner, save with Ctrl+S.
// It needs nothing from CVAT but its URL; it reads nothing back (check the job's annotations
// through CVAT's REST API afterwards). One JSON line on stdout says what happened.
//
//   cd ui-plugin && node test/real-cvat/drive-real-cvat.mjs --url http://localhost:8080 --user USER \
//     --password PASS --job 12 [--frame 0] [--object id:N|1|all] [--target 10] [--convert] \
//     [--keyframes on|off] [--action "Segment Anything 2.1 Tracker"] [--screenshots DIR] [--timeout 900]
//
//   --frame    the frame to open (the run starts there; default: the job's first)
//   --object   which object to run on: "id:N" (the object of server id N: the job opens on the
//              object's URL, as CVAT's "Copy object URL" gives it, so the sidebar lists it alone),
//              its position in the objects sidebar ("1" = first, sorted as the sidebar sorts),
//              or "all" (no object activated: every object on the frame, CVAT's filters applied)
//   --target   the action's "Target frame" (default: the action's own, the job's last frame)
//   --convert  turn "Convert polygon shapes to tracks" on
//   --keyframes  set "Use all keyframes of the object" on or off (default: the action's own)
//   --screenshots DIR   writes DIR/action-runner.png (the runner's dialog, parameters set) and
//              DIR/result.png (the target frame after the run and the save, its first object
//              activated)
// CHROMIUM=/path/to/chromium overrides /usr/bin/chromium. Exit status 0 when the run finished
// and the job was saved without an error notification, 1 otherwise.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import puppeteer from 'puppeteer-core';

const { values: options } = parseArgs({
    options: {
        url: { type: 'string' },
        user: { type: 'string' },
        password: { type: 'string' },
        job: { type: 'string' },
        frame: { type: 'string' },
        object: { type: 'string', default: '1' },
        target: { type: 'string' },
        convert: { type: 'boolean', default: false },
        keyframes: { type: 'string' },
        action: { type: 'string', default: 'Segment Anything 2.1 Tracker' },
        screenshots: { type: 'string' },
        timeout: { type: 'string', default: '900' },
    },
});
for (const required of ['url', 'user', 'password', 'job']) {
    if (!options[required]) {
        process.stderr.write(`--${required} is required (see the header of ${process.argv[1]})\n`);
        process.exit(2);
    }
}
if (options.keyframes !== undefined && !['on', 'off'].includes(options.keyframes)) {
    process.stderr.write('--keyframes takes on or off\n');
    process.exit(2);
}
const base = options.url.replace(/\/+$/, '');
const timeoutMs = Number(options.timeout) * 1000;
const report = {
    job: Number(options.job), object: options.object, action: options.action, actionsListed: [],
    parameters: {}, progress: [], notifications: [], console: [], httpErrors: [], timings: {},
};
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
const seconds = (start) => Math.round((Date.now() - start) / 100) / 10;

async function waitFor(page, predicate, what, ...args) {
    try {
        return await page.waitForFunction(predicate, { timeout: timeoutMs, polling: 200 }, ...args);
    } catch (error) {
        throw new Error(`timed out waiting for ${what}: ${error.message}`);
    }
}

/** Error notifications CVAT shows (antd), collected as they come. */
async function collectNotifications(page) {
    const texts = await page.$$eval('.ant-notification-notice', (notes) => notes.map((note) => ({
        error: note.querySelector('.ant-notification-notice-icon-error, .anticon-close-circle') !== null
            || note.className.includes('error'),
        text: note.innerText.replace(/\s+/g, ' ').trim(),
    })));
    for (const note of texts) {
        if (!report.notifications.some((seen) => seen.text === note.text)) {
            report.notifications.push(note);
        }
    }
}

async function logIn(page) {
    await page.goto(`${base}/auth/login`, { waitUntil: 'networkidle2' });
    await page.waitForSelector('#credential');
    await page.type('#credential', options.user);
    await page.type('#password', options.password);
    await Promise.all([
        waitFor(page, () => !window.location.pathname.startsWith('/auth/login'), 'the login'),
        page.click('.cvat-credentials-action-button'),
    ]);
}

async function openJob(page) {
    const job = await page.evaluate(async (id) => {
        const response = await fetch(`/api/jobs/${id}`, { credentials: 'include' });
        return response.ok ? response.json() : { error: response.status };
    }, options.job);
    if (job.error) {
        throw new Error(`GET /api/jobs/${options.job} answered ${job.error}`);
    }
    const frame = options.frame ?? String(job.start_frame);
    report.taskId = job.task_id;
    report.frame = Number(frame);
    // An object's URL (frame, type, serverID) makes CVAT show that object only.
    const [, serverID] = /^id:(\d+)$/.exec(options.object) ?? [];
    const query = serverID ? `?frame=${frame}&type=shape&serverID=${serverID}` : `?frame=${frame}`;
    await page.goto(`${base}/tasks/${job.task_id}/jobs/${options.job}${query}`, { waitUntil: 'networkidle2' });
    await page.waitForSelector('.cvat-canvas-container');
    await waitFor(page, (f) => {
        const input = document.querySelector('.cvat-player-frame-selector input');
        return input && input.value === f && document.querySelector('.cvat-objects-sidebar-states-list');
    }, `frame ${frame} to open`, frame);
    await sleep(1000); // the canvas draws the frame's objects
}

/** Activates the chosen object (hovering its sidebar item, as a user would) or none. */
async function chooseObject(page) {
    const items = await page.$$('.cvat-objects-sidebar-states-list .cvat-objects-sidebar-state-item');
    report.objectsOnFrame = items.length;
    if (options.object === 'all') {
        await page.mouse.move(5, 5); // off the canvas and the list: nothing activated
        await page.keyboard.press('Escape');
        return;
    }
    const position = options.object.startsWith('id:') ? 1 : Number(options.object);
    if (!Number.isInteger(position) || position < 1 || position > items.length) {
        throw new Error(`--object ${options.object}: the frame lists ${items.length} objects`);
    }
    const item = items[position - 1];
    report.objectItem = await item.evaluate((element) => element.id);
    await item.hover();
    await waitFor(page, (id) => document.getElementById(id)?.classList
        .contains('cvat-objects-sidebar-state-active-item'), 'the object to be activated', report.objectItem);
}

async function setParameters(page) {
    const select = '.cvat-action-runner-content .cvat-action-runner-list .ant-select';
    await page.waitForSelector(select, { visible: true });
    // The runner lists the actions (and takes the activated object) once core.actions.list()
    // resolves: this plugin lists the functions first.
    await page.click(`${select} .ant-select-selector`);
    await page.waitForSelector('.ant-select-dropdown .ant-select-item-option', { visible: true });
    await sleep(500);
    report.actionsListed = await page.$$eval('.ant-select-dropdown .ant-select-item-option',
        (nodes) => nodes.map((node) => node.getAttribute('title') ?? node.innerText));
    const option = await page.$(`.ant-select-dropdown .ant-select-item-option[title="${options.action.replace(/"/g, '\\"')}"]`);
    if (!option) {
        throw new Error(`the action runner does not list "${options.action}" (it lists: ${report.actionsListed.join(', ')})`);
    }
    await option.click();
    await page.waitForSelector('.cvat-action-runner-action-parameter', { visible: true });
    const parameters = await page.$$('.cvat-action-runner-action-parameter');
    for (const parameter of parameters) {
        const name = await parameter.$eval('span', (node) => node.innerText.trim());
        const number = await parameter.$('.ant-input-number-input');
        const toggle = await parameter.$('.ant-switch');
        if (number && name === 'Target frame' && options.target !== undefined) {
            await number.click({ clickCount: 3 });
            await page.keyboard.press('Backspace');
            await number.type(options.target);
            await page.keyboard.press('Tab');
        }
        const wanted = /convert/i.test(name) ? options.convert
            : /keyframes/i.test(name) && options.keyframes !== undefined ? options.keyframes === 'on' : undefined;
        if (toggle && wanted !== undefined) {
            const checked = await toggle.evaluate((node) => node.getAttribute('aria-checked') === 'true');
            if (checked !== wanted) {
                await toggle.click();
            }
        }
        report.parameters[name] = number
            ? await number.evaluate((node) => node.value)
            : await toggle?.evaluate((node) => node.getAttribute('aria-checked'));
    }
}

/** Clicks Run and follows the progress until the run ends (the runner closes itself after a
 * run on one object; after a run on all objects its Run button stops loading). */
async function run(page) {
    const started = Date.now();
    await page.click('.cvat-action-runner-run-btn');
    let sawRunning = false;
    for (;;) {
        const state = await page.evaluate(() => {
            const modal = document.querySelector('.cvat-action-runner-content');
            const button = document.querySelector('.cvat-action-runner-run-btn');
            const message = document.querySelector('.cvat-action-runner-progress-message');
            const bar = document.querySelector('.cvat-action-runner-progress .ant-progress-text');
            return {
                open: modal !== null && modal.offsetParent !== null,
                running: button?.classList.contains('ant-btn-loading') ?? false,
                message: message?.innerText ?? null,
                percent: bar?.innerText ?? null,
            };
        });
        if (state.message && report.progress.at(-1)?.message !== state.message) {
            report.progress.push({ t: seconds(started), message: state.message, percent: state.percent });
        }
        sawRunning ||= state.running;
        await collectNotifications(page);
        if (!state.open || (sawRunning && !state.running)) {
            break;
        }
        if (Date.now() - started > timeoutMs) {
            throw new Error('the run did not end in time');
        }
        await sleep(200);
    }
    report.timings.runSeconds = seconds(started);
    if (await page.$('.cvat-action-runner-content .cvat-action-runner-cancel-btn')) {
        await page.click('.cvat-action-runner-content .cvat-action-runner-cancel-btn'); // "Close"
        await waitFor(page, () => !document.querySelector('.cvat-action-runner-content'), 'the runner to close');
    }
}

async function save(page) {
    const started = Date.now();
    await sleep(500);
    await page.mouse.move(5, 5);
    await page.keyboard.down('Control');
    await page.keyboard.press('KeyS');
    await page.keyboard.up('Control');
    // The save button is disabled while saving; the annotations' PATCH requests end it (CVAT
    // keeps polling other endpoints, so the network never goes idle).
    await sleep(500);
    await waitFor(page, () => !document.querySelector('.cvat-annotation-header-save-button.cvat-annotation-disabled-header-button'),
        'the save to end');
    while (pendingSaves > 0) {
        await sleep(200);
    }
    report.timings.saveSeconds = seconds(started);
}

/** For the result screenshot: the target frame, its first object activated (drawn opaque). */
async function showResult(page) {
    const frame = options.target ?? String(report.frame);
    const input = await page.$('.cvat-player-frame-selector input');
    await input.click({ clickCount: 3 });
    await input.type(frame);
    await page.keyboard.press('Enter');
    await waitFor(page, (f) => document.querySelector('.cvat-player-frame-selector input')?.value === f,
        `frame ${frame}`, frame);
    await sleep(1500);
    const item = await page.$('.cvat-objects-sidebar-states-list .cvat-objects-sidebar-state-item');
    await item?.hover();
    await sleep(500);
}

const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,800'],
    defaultViewport: { width: 1280, height: 800 },
});
let status = 1;
let pendingSaves = 0;
try {
    const page = await browser.newPage();
    page.on('console', (message) => {
        const text = message.text();
        if (text.includes('segmentation tracker')
            || (['error', 'warn'].includes(message.type()) && !text.startsWith('The shortcut:'))) {
            report.console.push(`${message.type()}: ${text}`.slice(0, 300));
        }
    });
    page.on('pageerror', (error) => report.console.push(`pageerror: ${error.message}`.slice(0, 500)));
    page.on('response', (response) => {
        if (response.status() >= 400 && response.url().includes('/api/')) {
            report.httpErrors.push(`${response.request().method()} ${response.url().replace(base, '')} ${response.status()}`);
        }
    });
    const isSave = (request) => request.method() !== 'GET'
        && request.url().includes(`/api/jobs/${options.job}/annotations`);
    page.on('request', (request) => { pendingSaves += isSave(request) ? 1 : 0; });
    page.on('requestfailed', (request) => { pendingSaves -= isSave(request) ? 1 : 0; });
    page.on('requestfinished', (request) => {
        const path = request.url().replace(base, '');
        if (/\/api\/lambda\/functions\//.test(path)) {
            report.lambdaCalls = (report.lambdaCalls ?? 0) + 1;
        } else if (isSave(request)) {
            pendingSaves -= 1;
            report.saveRequests = [...(report.saveRequests ?? []), `${request.method()} ${path} ${request.response()?.status()}`];
        }
    });
    const began = Date.now();
    await logIn(page);
    await openJob(page);
    report.timings.openSeconds = seconds(began);
    await chooseObject(page);
    await page.keyboard.down('Control');
    await page.keyboard.press('KeyE');
    await page.keyboard.up('Control');
    await page.waitForSelector('.cvat-action-runner-content', { visible: true });
    await setParameters(page);
    report.runnerSays = await page.$eval('.cvat-action-runner-info', (node) => node.innerText.trim());
    if (options.object !== 'all' && !report.runnerSays.includes('current object')) {
        throw new Error(`the runner did not take the activated object: "${report.runnerSays}"`);
    }
    if (options.screenshots) {
        mkdirSync(options.screenshots, { recursive: true });
        await sleep(300);
        const modal = await page.$('.cvat-action-runner-content .ant-modal-content');
        await (modal ?? page).screenshot({ path: join(options.screenshots, 'action-runner.png') });
    }
    await run(page);
    await save(page);
    await collectNotifications(page);
    if (options.screenshots) {
        await showResult(page);
        await page.screenshot({ path: join(options.screenshots, 'result.png') });
    }
    report.timings.totalSeconds = seconds(began);
    status = report.notifications.some((note) => note.error) ? 1 : 0;
} catch (error) {
    report.failure = error instanceof Error ? error.message : String(error);
} finally {
    await browser.close();
}
report.ok = status === 0;
process.stdout.write(`${JSON.stringify(report)}\n`);
process.exit(status);
