// Builds the plugin as one plain script for the stock CVAT UI (dist/), and with --tests the
// Node unit tests and the browser test page (build/). Prints the script's path last.
import { build } from 'esbuild';
import { readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const script = join(here, 'dist', 'cvat-segmentation-tracker.js');

await build({
    entryPoints: [join(here, 'src/ts/index.tsx')],
    outfile: script,
    bundle: true,
    format: 'iife',
    target: 'es2022',
    legalComments: 'none',
    logLevel: 'warning',
});

if (process.argv.includes('--tests')) {
    const tests = readdirSync(join(here, 'test')).filter((name) => name.endsWith('.test.ts'));
    await build({
        entryPoints: tests.map((name) => join(here, 'test', name)),
        outdir: join(here, 'build', 'test'),
        outExtension: { '.js': '.mjs' },
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        logLevel: 'warning',
    });
    await build({
        entryPoints: [join(here, 'test/browser/page.ts')],
        outfile: join(here, 'build', 'browser', 'page.js'),
        bundle: true,
        format: 'iife',
        target: 'es2022',
        logLevel: 'warning',
    });
}
console.log(resolve(script));
